"""int8 weights: exact against transformers' generate() on the same quantized model, in the
batches the engine tests use; batch-invariant by construction; clear errors for bad modes."""
import copy
import random

import pytest
import torch
from torch import nn

from llmos.drivers.quant import Int8Group, QuantizeError, quantize_model
from llmos.kernel import InvalidArgument, ROOT, SpawnSpec, StopRules

from tiny import tiny_model


def prompts(n, seed=0, lo=1, hi=40):
    rng = random.Random(seed)
    return [[rng.randrange(3, 380) for _ in range(rng.randrange(lo, hi))] for _ in range(n)]


def spawn_all(k, batch, n):
    return [k.spawn(ROOT, SpawnSpec("tiny", tokens=t, stop=StopRules(max_tokens=n, ignore_eos=True))) for t in batch]


@pytest.mark.parametrize("quantize", ["int8", "int4"])
@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_quantized_batches_with_chunked_prefill_forks_and_prefix_hits(make_kernel, family, quantize):
    """Exact against generate() on the same quantized weights (int4: drivers/int4.py)."""
    k, ref = make_kernel(family, page_size=4, budget=16, quantize=quantize)
    system = list(range(100, 124))
    batch = [system + t for t in prompts(4, seed=7, lo=1, hi=10)] + prompts(3, seed=8)
    procs = spawn_all(k, batch, 10)
    for _ in range(4):
        k.step()
    forks = [(k.fork(ROOT, p.pid, max_tokens=6), list(p.tokens)) for p in procs[:2] if not p.state.done]
    k.run_until_idle()
    for t, p in zip(batch, procs):
        assert p.out_tokens == ref.greedy(t, 10), f"pid {p.pid} ({len(t)} prompt tokens)"
    for c, toks in forks:
        assert c.out_tokens == ref.greedy(toks, 6)
    assert sum(p.usage.cached_tokens for p in procs) > 0


@pytest.mark.parametrize("quantize,mode", [("int8", "swap"), ("int8", "recompute"), ("int4", "recompute")])
def test_quantized_preemption_is_exact(make_kernel, quantize, mode):
    k, ref = make_kernel(pages=12, page_size=4, swap=64, preempt=mode, quantize=quantize)
    batch = prompts(5, seed=3, lo=8, hi=20)
    procs = spawn_all(k, batch, 14)
    k.run_until_idle()
    assert sum(p.usage.preemptions for p in procs) > 0
    for t, p in zip(batch, procs):
        assert p.out_tokens == ref.greedy(t, 14)


def test_a_row_never_depends_on_its_batch():
    torch.manual_seed(0)
    lin = nn.Linear(64, 96)
    group = Int8Group([lin], act_max=torch.rand(64) * 4)
    x = torch.randn(16, 64) * torch.logspace(-2, 2, 16)[:, None]  # rows of very different scale
    together = group.output(x)
    for i in range(16):
        assert torch.equal(group.output(x[i:i + 1].clone()), together[i:i + 1])
    assert (together - lin(x)).abs().max() < 0.05 * lin(x).abs().max()


def test_prepacked_weights_give_the_same_bits():
    """The CPU driver's oneDNN path (unsigned activations, packed weights) equals _int_mm."""
    torch.manual_seed(0)
    lins = [nn.Linear(64, 96), nn.Linear(64, 32, bias=False)]
    group = Int8Group(lins, act_max=torch.rand(64) * 4)
    x = torch.randn(1, 21, 64) * 3
    with torch.inference_mode():
        plain = group.compute(x)
        group.prepack()
        assert group.packed is not None and group.weight_t is None
        assert torch.equal(group.compute(x), plain)
        assert torch.equal(group.compute(x[:, :1]), plain[:, :1])


def test_fused_projections_equal_separate_ones(monkeypatch):
    from llmos.drivers import fuse

    model = tiny_model("qwen2")  # q/k/v carry biases
    fused, apart = copy.deepcopy(model), copy.deepcopy(model)
    ids = list(range(3, 60))
    report = quantize_model(fused, "int8")  # no smoothing: that is shared across a fused group
    monkeypatch.setattr(fuse, "FUSE", ())  # every projection its own GEMM
    alone = quantize_model(apart, "int8")
    assert report.groups < alone.groups == report.layers == alone.layers
    with torch.no_grad():
        assert torch.equal(fused(torch.tensor([ids])).logits, apart(torch.tensor([ids])).logits)


def test_unknown_modes_and_unquantizable_models_are_refused(tmp_path, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=384, n_embd=32, n_layer=1, n_head=2, n_positions=64))
    with pytest.raises(QuantizeError, match="GPT2LMHeadModel cannot be quantized to int8: it uses Conv1D layers"):
        quantize_model(gpt2, "int8")
    with pytest.raises(QuantizeError, match="unknown quantization mode 'int3'; supported: none, int8"):
        quantize_model(tiny_model(), "int3")


def test_a_failed_quantization_leaves_the_model_serving(tmp_path, tokenizer, tiny_model_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    from llmos.drivers.cpu import CPUDriver
    from llmos.kernel import Kernel, KernelConfig
    from llmos.kernel.models import ModelStore

    gpt2_dir = tmp_path / "tiny-gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=384, n_embd=32, n_layer=1, n_head=2, n_positions=64)).save_pretrained(gpt2_dir)
    tokenizer.save_pretrained(gpt2_dir)
    k = Kernel(CPUDriver(), KernelConfig(kv_pages=64), ModelStore(tmp_path / "store"))
    k.load_model(ROOT, str(gpt2_dir))
    with pytest.raises(InvalidArgument, match="unknown quantization mode 'fp4'"):
        k.load_model(ROOT, str(tiny_model_dir), quantize="fp4")
    with pytest.raises(InvalidArgument, match="cannot load .*tiny-gpt2.*Conv1D"):
        k.load_model(ROOT, str(gpt2_dir), quantize="int8")
    assert sorted(k.models) == ["tiny-gpt2"]
    p = k.spawn(ROOT, SpawnSpec("tiny-gpt2", tokens=[5, 6, 7], stop=StopRules(max_tokens=4, ignore_eos=True)))
    k.run_until_idle()
    assert len(p.out_tokens) == 4
    m = k.load_model(ROOT, str(tiny_model_dir), quantize="int8")  # a quantized copy beside nothing else
    assert m.name == "tiny-llama:int8" and m.info.quantize == "int8" and m.info.ppl_ratio > 0


def test_int8_through_the_daemon_and_the_shell(llmosd, tiny_model_dir):
    """load --quantize, the registry entry with its mode and size, spawn on it, unload."""
    import json
    import subprocess
    import sys

    def shell(*args):
        return subprocess.run([sys.executable, "-m", "llmos.shell.cli", *args], env=llmosd.env,
                              capture_output=True, text=True, timeout=120)

    r = shell("load", str(tiny_model_dir), "--quantize", "int8")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("loaded tiny-llama:int8") and "of int8 weights" in r.stdout and "perplexity" in r.stdout
    models = {m["name"]: m for m in json.loads(shell("models", "--json").stdout)["loaded"]}
    q, full = models["tiny-llama:int8"], models["tiny-llama"]
    assert q["quantize"] == "int8" and int(q["weight_bytes"]) < int(full["weight_bytes"]) / 2
    with llmosd.client() as c:
        pid = c.spawn("tiny-llama", tokens=[5, 6, 7, 8], quantize="int8", max_tokens=6, ignore_eos=True)
        res = c.wait(pid)
        assert res.proc.model == "tiny-llama:int8" and res.proc.usage.generated_tokens == 6
    bad = shell("load", str(tiny_model_dir), "--quantize", "int3")
    assert bad.returncode != 0 and "unknown quantization mode 'int3'; supported: none, int8, int4" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert shell("unload", "tiny-llama:int8").returncode == 0
