"""Structured pruning (drivers/prune.py): exact shapes, the right channels removed and wired,
activation-aware importance, save/load, int8 on top, serving GQA models, refusals."""
import copy

import pytest
import torch
from torch import nn

from llmos.drivers.prune import MAX_FRACTION, PruneError, prune_loaded, prune_model
from llmos.drivers.quant import quantize_model

from tiny import tiny_model

CALIB = [(i * 37) % 370 + 3 for i in range(240)]
PROBE = torch.tensor([[(i * 11) % 370 + 5 for i in range(40)]])
HEAD_DIM = 16  # tiny models: hidden 64 over 4 heads


def logits(model, ids=PROBE):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def kept_rows(old: torch.Tensor, new: torch.Tensor, width: int = 1) -> list[int]:
    """Which blocks of `width` rows of `old` the rows of `new` are, found by equality alone."""
    blocks = old.view(-1, width, old.shape[1])
    out = []
    for b in new.view(-1, width, new.shape[1]):
        hits = [i for i, o in enumerate(blocks) if torch.equal(o, b)]
        assert len(hits) == 1, "a pruned row is not a row of the original"
        out.append(hits[0])
    return out


def zeroed_reference(orig: nn.Module, pruned: nn.Module) -> torch.Tensor:
    """The original model's logits with the activations of every removed MLP channel and every
    removed head (the inputs of down_proj and o_proj) set to zero."""
    ref = copy.deepcopy(orig)
    hooks = []
    for lo, lp in zip(ref.model.layers, pruned.model.layers):
        mlp = kept_rows(lo.mlp.gate_proj.weight, lp.mlp.gate_proj.weight)
        heads = kept_rows(lo.self_attn.q_proj.weight, lp.self_attn.q_proj.weight, HEAD_DIM)
        for mod, keep in ((lo.mlp.down_proj, mlp), (lo.self_attn.o_proj,
                                                     [h * HEAD_DIM + j for h in heads for j in range(HEAD_DIM)])):
            mask = torch.zeros(mod.in_features)
            mask[keep] = 1.0
            hooks.append(mod.register_forward_pre_hook(lambda m, args, mask=mask: (args[0] * mask,)))
    try:
        return logits(ref)
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("family,heads,unit,want", [
    ("llama", 0.0, "auto", (4, 2)),
    ("llama", 0.5, "group", (2, 1)),    # one KV group of two with its two query heads
    ("qwen2", 0.5, "head", (2, 2)),     # one query head inside each group
    ("mistral", 0.25, "auto", (2, 2)),  # 1 head asked of 4: a group (2) ties with a head per group (2)
])
def test_shapes_shrink_exactly_and_logits_equal_the_zeroed_original(family, heads, unit, want):
    model = tiny_model(family)
    orig = copy.deepcopy(model)
    r = prune_model(model, 0.25, CALIB, heads=heads, head_unit=unit)
    nheads, nkv = want
    cfg = model.config
    assert (cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (96, nheads, nkv)
    assert (r.intermediate_after, r.heads_after, r.kv_heads_after) == (96, nheads, nkv)
    for layer in model.model.layers:
        mlp, a = layer.mlp, layer.self_attn
        assert all(type(m) is nn.Linear for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj, a.q_proj, a.o_proj))
        assert mlp.gate_proj.weight.shape == mlp.up_proj.weight.shape == (96, 64)
        assert mlp.down_proj.weight.shape == (64, 96)
        assert a.q_proj.weight.shape == (nheads * HEAD_DIM, 64) and a.o_proj.weight.shape == (64, nheads * HEAD_DIM)
        assert a.k_proj.weight.shape == a.v_proj.weight.shape == (nkv * HEAD_DIM, 64)
        assert a.num_key_value_groups == nheads // nkv
        if family == "qwen2":  # q/k/v biases follow their rows
            assert a.q_proj.bias.shape == (nheads * HEAD_DIM,) and a.k_proj.bias.shape == (nkv * HEAD_DIM,)
    assert r.params_after == sum(p.numel() for p in model.parameters()) < r.params_before
    torch.testing.assert_close(logits(model), zeroed_reference(orig, model), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits(model), logits(orig), atol=1e-3)  # something really was removed


def test_importance_is_activation_aware():
    """Channel 7 (larger down_proj weights) stays; channel 5, with even larger weights but no
    activation (its up_proj row is zero), goes: weight magnitude alone would keep it. The same
    for a head whose o_proj columns are scaled up."""
    model = tiny_model("llama")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight[:, 7] *= 20
            layer.mlp.down_proj.weight[:, 5] *= 1000
            layer.mlp.up_proj.weight[5] = 0
            layer.self_attn.o_proj.weight[:, 3 * HEAD_DIM:4 * HEAD_DIM] *= 50
    orig = copy.deepcopy(model)
    prune_model(model, MAX_FRACTION, CALIB, heads=0.5, head_unit="head")
    assert model.config.intermediate_size == 13
    for lo, lp in zip(orig.model.layers, model.model.layers):
        kept = kept_rows(lo.mlp.gate_proj.weight, lp.mlp.gate_proj.weight)
        assert 7 in kept and 5 not in kept, kept
        assert 3 in kept_rows(lo.self_attn.q_proj.weight, lp.self_attn.q_proj.weight, HEAD_DIM)


@pytest.mark.parametrize("family,unit,kv", [("llama", "head", 2), ("qwen2", "group", 1), ("mistral", "group", 1)])
def test_save_and_load_round_trip(family, unit, kv, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(family)
    prune_model(model, 0.5, CALIB, heads=0.5, head_unit=unit)
    model.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert back.config.intermediate_size == 64 and back.config.num_attention_heads == 2
    assert back.config.num_key_value_heads == kv
    assert torch.equal(logits(back), logits(model))


def test_int8_on_top_of_a_pruned_model():
    """Every layer of a pruned model quantizes, and int8 moves its logits no more than it moves
    the unpruned model's (relative error, about 4% on these random models)."""
    from llmos.drivers.fuse import FusedLinear

    errors = {}
    for fraction in (0.0, 0.5):
        model = tiny_model("llama")
        prune_model(model, fraction, CALIB, heads=fraction)
        fp32 = logits(model)
        report = quantize_model(model, "int8", calibration=CALIB)
        assert report.bytes_after < report.bytes_before / 2
        assert not any(type(m) is nn.Linear for m in model.modules())
        assert sum(isinstance(m, FusedLinear) for m in model.modules()) == 2 * 7 + 1
        errors[fraction] = float((logits(model) - fp32).norm() / fp32.norm())
    assert 0 < errors[0.5] < 1.5 * errors[0.0] and errors[0.5] < 0.08, errors


@pytest.mark.parametrize("family,unit,kv,quantize", [("qwen2", "group", 1, None), ("mistral", "head", 2, None),
                                                     ("llama", "group", 1, "int8")])
def test_a_pruned_model_serves_exactly(family, unit, kv, quantize, tokenizer):
    """Served by the kernel (paged KV sized from the new head counts, the lean forward), a
    pruned model's greedy tokens are transformers' generate() on the same pruned model."""
    from conftest import Reference
    from llmos.drivers.cpu import CPUDriver
    from llmos.kernel import ROOT, Kernel, KernelConfig, SchedConfig, SpawnSpec, StopRules

    model = tiny_model(family)
    prune_model(model, 0.25, CALIB, heads=0.5, head_unit=unit)
    if quantize:
        quantize_model(model, quantize, calibration=CALIB)
    ref = Reference(model)
    k = Kernel(CPUDriver(), KernelConfig(page_size=4, kv_pages=64, sched=SchedConfig(token_budget=16)))
    m = k.adopt_model("tiny", model, tokenizer)
    assert m.info.kv_heads == kv
    prompts = [[5, 6, 7, 8, 9], list(range(20, 45)), [100, 3, 250]]
    procs = [k.spawn(ROOT, SpawnSpec("tiny", tokens=t, stop=StopRules(max_tokens=12, ignore_eos=True)))
             for t in prompts]
    k.run_until_idle()
    for t, p in zip(prompts, procs):
        assert p.out_tokens == ref.greedy(t, 12)


def test_heads_auto_picks_the_count_nearest_the_fraction():
    model = tiny_model("llama", hidden_size=96, num_attention_heads=6, num_key_value_heads=2)
    r = prune_model(model, 0.0, CALIB, heads=1 / 3)  # 2 of 6: one inside each group beats a group of 3
    assert (r.head_unit, r.heads_after, r.kv_heads_after) == ("head", 4, 2)
    model = tiny_model("llama", hidden_size=96, num_attention_heads=6, num_key_value_heads=2)
    r = prune_model(model, 0.0, CALIB, heads=0.5)   # 3 of 6: a whole group
    assert (r.head_unit, r.heads_after, r.kv_heads_after) == ("group", 3, 1)


def test_prune_loaded_measures_perplexity(tokenizer):
    model = tiny_model("llama")
    r, ratio = prune_loaded(model, tokenizer, 0.0)
    assert ratio == 1.0 and r.intermediate_after == 128
    r, ratio = prune_loaded(model, tokenizer, 0.5)
    assert r.intermediate_after == 64 and ratio != 1.0 and r.calibration_tokens > 50


@pytest.mark.parametrize("fraction,heads", [(-0.1, 0.0), (0.95, 0.0), (1.0, 0.0), (0.2, 0.91), (0.2, -1.0)])
def test_fractions_out_of_range_are_refused(fraction, heads):
    model = tiny_model("llama")
    with pytest.raises(PruneError, match=r"must be in \[0, 0\.9\], got"):
        prune_model(model, fraction, CALIB, heads=heads)
    assert model.config.intermediate_size == 128


def test_unsupported_models_are_refused_by_name():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=384, n_embd=32, n_layer=1, n_head=2, n_positions=64))
    with pytest.raises(ValueError, match="cannot prune a gpt2 model: pruning supports the llama, qwen2, mistral"):
        prune_model(gpt2, 0.25, CALIB)
    q = tiny_model("llama")
    quantize_model(q, "int8")
    with pytest.raises(PruneError, match="layer 0 has FusedLinear gate_proj.*prune before quantizing"):
        prune_model(q, 0.25, CALIB)
    with pytest.raises(PruneError, match="needs calibration text"):
        prune_model(tiny_model("llama"), 0.25, [])
    with pytest.raises(PruneError, match="unknown head unit 'kv'"):
        prune_model(tiny_model("llama"), 0.25, CALIB, heads=0.5, head_unit="kv")


def test_load_prune_through_the_daemon_and_the_shell(llmosd, tiny_model_dir, tokenizer, tmp_path):
    """`llmos load --prune`: the registry shows the smaller model, its greedy tokens are
    transformers' generate() on the same pruned weights, int8 goes on top, and bad fractions
    and architectures come back as INVALID_ARGUMENT naming the limit."""
    import json
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    from conftest import Reference
    from llmos.syscalls.sdk import SyscallError

    def shell(*args):
        return subprocess.run([sys.executable, "-m", "llmos.shell.cli", *args], env=llmosd.env,
                              capture_output=True, text=True, timeout=120)

    r = shell("load", str(tiny_model_dir), "--prune", "0.25", "--prune-heads", "0.5")
    assert r.returncode == 0, r.stderr
    name = "tiny-llama-pruned0.25-heads0.5"
    assert r.stdout.startswith(f"loaded {name}") and "pruned 0.25, heads 0.5: perplexity" in r.stdout, r.stdout
    models = {m["name"]: m for m in json.loads(shell("models", "--json").stdout)["loaded"]}
    pruned, full = models[name], models["tiny-llama"]
    assert pruned["pruned"] == 0.25 and pruned["pruned_heads"] == 0.5 and pruned["prune_ppl_ratio"] > 0
    assert "pruned 0.25, heads 0.5" in shell("models").stdout
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prune_loaded(model, tokenizer, 0.25, 0.5)  # what the load does, in-process
    assert int(pruned["num_parameters"]) == sum(p.numel() for p in model.parameters()) < int(full["num_parameters"])
    assert int(pruned["weight_bytes"]) < int(full["weight_bytes"])
    ref = Reference(model)
    with llmosd.client() as c:
        for prompt in ([5, 6, 7, 8, 9], list(range(20, 45))):
            pid = c.spawn(name, tokens=prompt, max_tokens=10, ignore_eos=True, logprobs=True)
            assert [lp.token for lp in c.wait(pid, reap=True).logprobs] == ref.greedy(prompt, 10)
        q = c.load(str(tiny_model_dir), quantize="int8", prune=0.25)
        assert (q.name, q.quantize, q.pruned) == ("tiny-llama-pruned0.25:int8", "int8", 0.25)
        assert q.ppl_ratio > 0 and q.num_parameters < int(full["num_parameters"])
        pid = c.spawn("tiny-llama-pruned0.25", tokens=[5, 6, 7], quantize="int8", max_tokens=4, ignore_eos=True)
        assert c.wait(pid, reap=True).proc.usage.generated_tokens == 4
        for kw, msg in [({"prune": 0.95}, "prune (the fraction of MLP channels to remove) must be in [0, 0.9], got 0.95"),
                        ({"prune_heads": -0.1}, "prune_heads (the fraction of attention heads to remove) must be in "
                         "[0, 0.9], got -0.1"),
                        ({"prune": float("nan")}, "must be in [0, 0.9], got nan")]:
            with pytest.raises(SyscallError) as e:
                c.load(str(tiny_model_dir), **kw)
            assert e.value.code == "invalid_argument" and msg in e.value.message, e.value.message
        gpt2 = tmp_path / "tiny-gpt2"
        GPT2LMHeadModel(GPT2Config(vocab_size=384, n_embd=32, n_layer=1, n_head=2, n_positions=64)).save_pretrained(gpt2)
        tokenizer.save_pretrained(gpt2)
        with pytest.raises(SyscallError) as e:
            c.load(str(gpt2), prune=0.25)
        assert e.value.code == "invalid_argument" and "cannot prune a gpt2 model: pruning supports the llama" \
            in e.value.message, e.value.message
        assert "tiny-gpt2-pruned0.25" not in {m.name for m in c.models().loaded}
        for n in (name, "tiny-llama-pruned0.25:int8"):
            c.unload(n)
    bad = shell("load", str(tiny_model_dir), "--prune", "1")
    assert bad.returncode != 0 and "must be in [0, 0.9], got 1" in bad.stderr and "Traceback" not in bad.stderr
