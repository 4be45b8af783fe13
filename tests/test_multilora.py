"""Multi-LoRA serving: processes on different adapters of one base model share its batches and
KV pool, and each still produces exactly what transformers gives on its merged model."""
import copy
import json

import pytest
import torch

from conftest import Reference
from llmos.kernel import Kernel, KernelConfig, ROOT, SpawnSpec, StopRules
from llmos.kernel.workloads import train
from llmos.kernel.errors import FailedPrecondition, InvalidArgument
from llmos.kernel.memory import MemoryManager
from llmos.kernel.models import ModelStore

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base, seed, rank=4, targets=TARGETS):
    """A peft LoRA model over a copy of `base` with random A and B (B is zero at peft's init)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                            target_modules=targets))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.2)
    return model


def store_adapter(store, peft_model, name, base, base_source=""):
    """Save a peft model as LoRA model `name` in the store; returns the merged model."""
    staged = store.staging(name)
    peft_model.save_pretrained(str(staged))
    store.save_adapter(staged, name, {"base": base, "base_source": base_source})
    return copy.deepcopy(peft_model).merge_and_unload().eval()


@pytest.fixture
def served(make_kernel, tmp_path):
    """A kernel serving the tiny base and two LoRA models over it, with their references."""
    k, ref = make_kernel(pages=96, page_size=4, budget=24)
    k.store = ModelStore(tmp_path / "store")
    base = copy.deepcopy(ref.model)
    refs = {"tiny": ref}
    for i, name in enumerate(["tiny+a", "tiny+b"]):
        refs[name] = Reference(store_adapter(k.store, make_adapter(base, seed=10 + i), name, "tiny"))
        k.load_model(ROOT, name)
    return k, refs


def spawn(k, model, tokens, n=10):
    return k.spawn(ROOT, SpawnSpec(model, tokens=tokens, stop=StopRules(max_tokens=n, ignore_eos=True)))


def record_steps(k):
    """Wrap the driver's step: each call's model and the adapters of its slices."""
    calls = []
    real = k.driver.step

    def step(name, batch):
        calls.append((name, {s.adapter for s in batch.seqs}))
        return real(name, batch)
    k.driver.step = step
    return calls


def test_adapters_and_base_in_one_batch_match_their_merged_models(served):
    k, refs = served
    info = k.model("tiny+a").info
    assert info.base == "tiny" and info.lora_rank == 4 and k.model("tiny+a").memory is k.model("tiny").memory
    calls = record_steps(k)
    prompts = {"tiny": [[5, 6, 7], list(range(40, 70))], "tiny+a": [list(range(10, 31)), [9] * 5],
               "tiny+b": [[100, 101], list(range(200, 237))]}
    procs = [(m, t, spawn(k, m, t, 12)) for m, ts in prompts.items() for t in ts]
    k.step()
    k.step()
    forks = []
    for m, _, p in procs[2:4]:  # an adapter process and the child that keeps its adapter
        forks.append((m, list(p.tokens), k.fork(ROOT, p.pid, max_tokens=8)))
    k.run_until_idle()
    for m, t, p in procs:
        assert p.out_tokens == refs[m].greedy(t, 12), f"{m}: pid {p.pid} ({len(t)} prompt tokens)"
    for m, t, c in forks:
        assert c.model == m and c.out_tokens == refs[m].greedy(t, 8)
    for m, t, p in procs:  # the adapters really change what the model says
        assert m == "tiny" or p.out_tokens != refs["tiny"].greedy(t, 12)
    # One forward pass per kernel step, on the base model, carrying all three.
    assert {name for name, _ in calls} == {"tiny"} and len(calls) == k.steps
    assert any(adapters == {"", "tiny+a", "tiny+b"} for _, adapters in calls)


def test_scores_under_an_adapter_match_its_merged_model(served):
    from llmos.drivers.score import window_nll

    k, refs = served
    ids = list(range(20, 60))
    for name in ("tiny", "tiny+a"):
        want, n = window_nll(refs[name].model, torch.device("cpu"), ids)
        got, m = k.driver.score(name, ids)
        assert m == n and got == pytest.approx(want, rel=1e-4)


def test_the_prefix_cache_never_shares_pages_across_adapters(served):
    k, refs = served
    system = list(range(100, 132))
    first = spawn(k, "tiny", system + [7], 4)
    k.run_until_idle()
    a1 = spawn(k, "tiny+a", system + [8], 6)
    k.run_until_idle()
    a2, b = spawn(k, "tiny+a", system + [9], 6), spawn(k, "tiny+b", system + [9], 6)
    k.run_until_idle()
    assert first.usage.cached_tokens == 0 and a1.usage.cached_tokens == 0 and b.usage.cached_tokens == 0
    assert a2.usage.cached_tokens == 32  # the same adapter does share its own pages
    for p in (a1, a2, b):
        assert p.out_tokens == refs[p.model].greedy(p.tokens[:33], 6)
    # A reload of the same name may carry other weights: its pages start afresh.
    k.unload_model(ROOT, "tiny+a")
    k.load_model(ROOT, "tiny+a")
    a3 = spawn(k, "tiny+a", system + [9], 6)
    k.run_until_idle()
    assert a3.usage.cached_tokens == 0 and a3.out_tokens == a2.out_tokens


def test_salted_prefixes_are_namespaces_of_one_pool():
    mm = MemoryManager(32, page_size=4, salt=7)
    prompt = list(range(20))
    mm.match_prefix(1, prompt, salt=5)
    assert mm.allocate(1, 0, 20)
    mm.publish(1, prompt, 20)
    assert mm.match_prefix(2, prompt) == 0             # the pool's own namespace: the base
    assert mm.match_prefix(3, prompt, salt=6) == 0     # another adapter
    assert mm.match_prefix(4, prompt, salt=5) == 16    # the same one
    mm.fork(1, 5)  # a fork goes on in its parent's namespace
    longer = prompt + [1] * 4
    assert mm.allocate(5, 20, 24)
    mm.publish(5, longer, 24)
    assert mm.match_prefix(6, longer + [0], salt=5) == 24 and mm.match_prefix(7, longer + [0]) == 0


def test_unloading_and_refusals(served):
    k, _ = served
    with pytest.raises(FailedPrecondition, match="base of loaded LoRA model\\(s\\) tiny\\+a, tiny\\+b"):
        k.unload_model(ROOT, "tiny")
    p = spawn(k, "tiny+b", [5, 6, 7], 20)
    k.step()
    with pytest.raises(FailedPrecondition, match="in use by 1 live"):
        k.unload_model(ROOT, "tiny+b")
    with pytest.raises(InvalidArgument, match="cannot be quantized"):
        k.load_model(ROOT, "tiny+b", name="other", quantize="int8")
    with pytest.raises(InvalidArgument, match="is a LoRA model; train a new adapter on its base"):
        train.start(k, ROOT, "tiny+a", train.TrainSpec("x.jsonl"))
    k.signal(ROOT, p.pid, "KILL")
    k.unload_model(ROOT, "tiny+a")
    k.unload_model(ROOT, "tiny+b")
    assert k.driver.runners["tiny"].lora.adapters == {} and not k.driver.runners["tiny"].lora._hooked
    k.unload_model(ROOT, "tiny")
    assert sorted(k.store.list()) == ["tiny+a", "tiny+b"]


def test_a_stored_adapter_loads_its_base_after_a_restart(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from llmos.drivers.cpu import CPUDriver

    store = ModelStore(tmp_path / "store")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    merged = store_adapter(store, make_adapter(base, seed=3, targets=["q_proj", "v_proj"]), "tiny-llama+x",
                           "tiny-llama", str(tiny_model_dir))
    k = Kernel(CPUDriver(), KernelConfig(page_size=4, kv_pages=64), store)
    store_adapter(store, make_adapter(base, seed=4), "orphan", "nowhere")
    with pytest.raises(FailedPrecondition, match="not loaded; load it first"):
        k.load_model(ROOT, "orphan")
    m = k.load_model(ROOT, "tiny-llama+x")  # the base comes from the source the adapter recorded
    assert m.base == "tiny-llama" and "tiny-llama" in k.models and m.info.lora_rank == 4
    prompt = list(range(30, 45))
    p = spawn(k, "tiny-llama+x", prompt, 10)
    q = spawn(k, "tiny-llama", prompt, 10)
    k.run_until_idle()
    assert p.out_tokens == Reference(merged).greedy(prompt, 10)
    assert q.out_tokens == Reference(base).greedy(prompt, 10) != p.out_tokens


def test_a_finished_fine_tune_is_served_as_a_lora_model_and_survives_a_restart(make_kernel, tmp_path, tokenizer):
    from peft import PeftModel

    from llmos.drivers.cpu import CPUDriver
    from tiny import tiny_model

    k, ref = make_kernel(pages=128)
    k.store = ModelStore(tmp_path / "store")
    data = tmp_path / "mydata.jsonl"
    data.write_text(json.dumps({"text": "The quick brown fox jumps over the lazy dog. " * 4}))
    t = train.start(k, ROOT, "tiny", train.TrainSpec(data.name, steps=4, lr=2e-2, rank=4, batch=1, checkpoint_every=0),
                    data.read_bytes())
    k.run_until_idle()
    assert "registered model tiny+mydata (version " in t.reason and t.reason.endswith("; loaded"), t.stdout
    m = k.model("tiny+mydata")
    assert m.base == "tiny" and m.memory is k.model("tiny").memory
    v = k.store.lookup("tiny+mydata")
    folder = k.store.plan(v).adapter  # an in-process base: the version holds only the adapter
    assert set(v.files) == {f.name for f in folder.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert not (folder / "config.json").exists() and "tiny+mydata" in k.store.list() and v.made_from == "tiny"
    merged = PeftModel.from_pretrained(copy.deepcopy(ref.model), str(folder)).merge_and_unload().eval()
    prompt = list(range(50, 70))
    p = spawn(k, "tiny+mydata", prompt, 10)
    k.run_until_idle()
    assert p.out_tokens == Reference(merged).greedy(prompt, 10) != ref.greedy(prompt, 10)
    # A restart: a fresh kernel on the same store, the base served again, the adapter loaded by name.
    k2 = Kernel(CPUDriver(), KernelConfig(page_size=4, kv_pages=64), ModelStore(tmp_path / "store"))
    k2.adopt_model("tiny", tiny_model("llama"), tokenizer)
    assert k2.load_model(ROOT, "tiny+mydata").base == "tiny"
    q = spawn(k2, "tiny+mydata", prompt, 10)
    k2.run_until_idle()
    assert q.out_tokens == p.out_tokens
