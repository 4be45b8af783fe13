"""The fused CPU ops (drivers/ext.py, built by `make setup`) give exactly the bits of the torch
ops they replace, and the int8 path serves the same logits with them as without."""
import shutil

import pytest
import torch

from llmos.drivers import ext, quant


def reference(x, smooth):
    rows, sx = quant._quantize_rows(x, smooth)
    return torch.div(rows, sx).round_().add_(quant._SHIFT).to(torch.uint8), sx


@pytest.fixture(scope="module")
def fused():
    if not ext.available():
        if shutil.which("g++") is None and shutil.which("c++") is None:
            pytest.skip("no C++ compiler here: the fused ops cannot be built (the torch path serves)")
        pytest.fail(f"the fused ops are not built: run `python -m llmos.drivers.ext` (make setup does) -> {ext.library()}")
    return torch.ops.llmos.quantize_rows_u8


@pytest.mark.parametrize("rows,width", [(1, 576), (5, 576), (16, 1536), (33, 7)])
@pytest.mark.parametrize("smoothed", [False, True])
def test_quantize_rows_is_bit_identical_to_the_torch_ops(fused, rows, width, smoothed):
    gen = torch.Generator().manual_seed(rows * width)
    x = torch.randn(rows, width, generator=gen) * torch.logspace(-6, 4, rows)[:, None]
    x[0, : min(3, width)] = torch.tensor([0.5, -0.5, 2.5])[: min(3, width)] * x[0].abs().max() / 127 * 2  # ties
    if rows > 2:
        x[1] = 0.0  # an all-zero row: the scale is eps / 127
    smooth = torch.rand(width, generator=gen) + 0.25 if smoothed else None
    want_q, want_s = reference(x, smooth)
    got_q, got_s = fused(x, smooth, quant._EPS_F, quant._QMAX_F)
    assert got_q.dtype == torch.uint8 and torch.equal(got_q, want_q)
    assert torch.equal(got_s, want_s)


def test_bad_arguments_are_refused_not_read_out_of_bounds(fused):
    with pytest.raises(RuntimeError, match="contiguous float32"):
        fused(torch.zeros(2, 4, dtype=torch.float64), None, 1e-12, 127.0)
    with pytest.raises(RuntimeError, match="row width"):
        fused(torch.zeros(2, 4), torch.ones(3), 1e-12, 127.0)


def test_an_int8_model_gives_the_same_logits_with_and_without_them(fused, monkeypatch):
    from tiny import tiny_model
    model = tiny_model("llama")
    quant.quantize_model(model, "int8", calibration=list(range(3, 200)))
    groups = {m.group for m in model.modules() if isinstance(m, quant.FusedLinear)}
    for g in groups:
        g.prepack()
    assert groups and all(g.packed is not None for g in groups)  # the path that calls the fused op
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        with_ops = model(ids).logits
        monkeypatch.setattr(ext, "available", lambda: False)
        without = model(ids).logits
    assert torch.equal(with_ops, without)


def test_the_cpu_driver_says_which_quantization_serves(fused, tmp_path, tokenizer):
    from tiny import tiny_model

    from llmos.drivers.cpu import CPUDriver
    model = tiny_model("llama")
    quant.quantize_model(model, "int8", calibration=list(range(3, 200)))
    info = CPUDriver(threads=2).adopt("tiny", model, cache_dir=str(tmp_path))
    assert info.kernels.endswith("; int8 activations: fused op")
    assert "int8 activations" not in CPUDriver(threads=2).adopt("plain", tiny_model("llama"),
                                                               cache_dir=str(tmp_path)).kernels


def hf_rms_norm(x, w, eps):
    """transformers' LlamaRMSNorm, op for op: the bits the fused norm must give."""
    variance = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(variance + eps))


@pytest.mark.parametrize("rows,width", [(1, 576), (7, 576), (33, 576), (1, 64), (5, 1536), (3, 17), (2, 1)])
@pytest.mark.parametrize("eps", [1e-5, 1e-6])
def test_rms_norm_is_bit_identical_to_atens_and_transformers(fused, rows, width, eps):
    gen = torch.Generator().manual_seed(rows * width)
    x = torch.randn(1, rows, width, generator=gen) * torch.logspace(-4, 4, rows)[None, :, None]
    w = torch.randn(width, generator=gen)
    if rows > 2:
        x[0, 1] = 0.0  # an all-zero row: eps alone
    got = torch.ops.llmos.rms_norm(x, w, eps)
    assert torch.equal(got, torch.nn.functional.rms_norm(x, (width,), w, eps))
    assert torch.equal(got, hf_rms_norm(x, w, eps))


def test_rms_norm_of_other_layouts_and_dtypes_is_atens(fused):
    x = torch.randn(4, 8, 64)
    w = torch.randn(64)
    strided = x.transpose(0, 1)  # not contiguous: ATen's op serves
    assert torch.equal(torch.ops.llmos.rms_norm(strided, w, 1e-5), torch.nn.functional.rms_norm(strided, (64,), w, 1e-5))
    b = x.bfloat16()
    assert torch.equal(torch.ops.llmos.rms_norm(b, w.bfloat16(), 1e-5),
                       torch.nn.functional.rms_norm(b, (64,), w.bfloat16(), 1e-5))
    with pytest.raises(RuntimeError):
        torch.ops.llmos.rms_norm(torch.randn(2, 63), w, 1e-5)  # a width that is not the weight's


def test_the_direct_path_norms_with_the_fused_op_where_it_is_exact(fused):
    from tiny import tiny_model

    from llmos.drivers.lean import LeanDecoder
    from llmos.drivers.lean_ops import RmsNorm
    lean = LeanDecoder(tiny_model("llama"))
    norms = [n for p in lean.direct.layers for n in (p.norm1, p.norm2)] + [lean.direct.norm]
    assert all(isinstance(n, RmsNorm) and n.fused for n in norms)


@pytest.mark.parametrize("rows", [1, 5, 16])
@pytest.mark.parametrize("smoothed,biased", [(False, False), (True, True)])
def test_int8_linear_is_bit_identical_to_the_torch_path(fused, monkeypatch, rows, smoothed, biased):
    torch.manual_seed(rows)
    lin = torch.nn.Linear(96, 80, bias=biased)
    group = quant.Int8Group([lin], act_max=torch.rand(96) * 4 if smoothed else None)
    group.prepack()
    x = torch.randn(1, rows, 96) * torch.logspace(-3, 3, rows)[None, :, None]
    strided = torch.randn(96, rows).t()[None]  # rows that are not contiguous
    with torch.inference_mode():
        got = [group.compute(x), group.compute(strided)]
        monkeypatch.setattr(ext, "available", lambda: False)
        want = [group.compute(x), group.compute(strided)]
    for g, w in zip(got, want):
        assert g.shape == (1, rows, 80) and torch.equal(g, w)
