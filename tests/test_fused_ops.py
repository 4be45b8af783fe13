"""The fused CPU ops (drivers/ext.py, built by `make setup`) give exactly the bits of the torch
ops they replace, and the int8 path serves the same logits with them as without."""
import copy
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
    assert "; int8 activations: fused op" in info.kernels
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


@pytest.mark.parametrize("out,width", [(960, 576), (576, 1536), (50, 7), (1, 48), (97, 130)])
@pytest.mark.parametrize("smoothed,biased", [(False, False), (True, True)])
def test_int8_dot_gives_onednns_bits_and_a_row_never_depends_on_its_batch(fused, out, width, smoothed, biased):
    torch.manual_seed(out + width)
    group = quant.Int8Group([torch.nn.Linear(width, out, bias=biased)],
                            act_max=torch.rand(width) * 4 if smoothed else None)
    onednn, torch_path, dot = (copy.deepcopy(group) for _ in range(3))
    onednn.prepack()
    dot.dot_pack()
    tiles = -(-out // 48)  # outputs padded up to whole tiles, inputs to a multiple of 4; an int32 sum per output
    assert dot.dot is not None and dot.weight_t is None and dot.nbytes() == tiles * 48 * (-(-width // 4) * 4 + 4)
    x = torch.randn(130, width) * torch.logspace(-3, 3, 130)[:, None]
    with torch.inference_mode():
        full = dot.compute(x)
        assert torch.equal(full, onednn.compute(x)) and torch.equal(full, torch_path.compute(x))
        for n in (*range(1, 20), 63, 64, 65, 129):  # every register tile and the row blocks' edges
            assert torch.equal(dot.compute(x[:n]), full[:n])
        for i in (0, 1, 7, 64, 129):  # a row alone, wherever it sat
            assert torch.equal(dot.compute(x[i:i + 1]), full[i:i + 1])
        strided = torch.randn(width, 9).t()
        assert torch.equal(dot.compute(strided), onednn.compute(strided))
        assert dot.compute(x[:0]).shape == (0, out) and dot.compute(x.view(10, 13, width)).shape == (10, 13, out)


def test_int8_dot_refuses_weights_that_do_not_fit(fused):
    w = torch.randint(-127, 128, (50, 7), dtype=torch.int8)
    packed, comp = torch.ops.llmos.dot8_pack(w)
    scale = torch.rand(50)
    assert torch.equal(comp[:50], 128 * w.int().sum(1)) and not comp[50:].any()
    for x, s, c in ((torch.randn(2, 9), scale, comp), (torch.randn(2, 7), torch.rand(500), comp),
                    (torch.randn(2, 7).double(), scale, comp), (torch.randn(2, 7), scale, comp[:10])):
        with pytest.raises(RuntimeError, match="int8_dot"):
            torch.ops.llmos.int8_dot(x, packed, c, s, None, None, 1e-12, 127.0)
    with pytest.raises(RuntimeError, match="bias must be a float32 vector of 50"):
        torch.ops.llmos.int8_dot(torch.randn(2, 7), packed, comp, scale, torch.rand(49), None, 1e-12, 127.0)
    with pytest.raises(RuntimeError, match="dot8_pack"):
        torch.ops.llmos.dot8_pack(torch.randn(4, 4))
    with pytest.raises(RuntimeError, match="at most 66000 inputs"):  # beyond it an int32 sum could overflow
        torch.ops.llmos.dot8_pack(torch.zeros(1, 66001, dtype=torch.int8))


@pytest.mark.parametrize("out,width", [(960, 576), (576, 1536), (50, 7), (1, 48)])
def test_linear_dot_is_the_product_and_a_row_never_depends_on_its_batch(fused, out, width):
    gen = torch.Generator().manual_seed(out + width)
    w, b = torch.randn(out, width, generator=gen) * 0.05, torch.randn(out, generator=gen)
    x = torch.randn(130, width, generator=gen)
    packed = torch.ops.llmos.dot_pack(w)
    full = torch.ops.llmos.linear_dot(x, packed, out, b)
    want = (x.double() @ w.double().T + b.double()).float()
    assert full.shape == (130, out) and torch.allclose(full, want, atol=1e-5, rtol=1e-5)
    for n in (*range(1, 20), 63, 64, 65, 129):  # every tile size and the row blocks' edges
        assert torch.equal(torch.ops.llmos.linear_dot(x[:n], packed, out, b), full[:n])
    for i in (0, 1, 7, 64, 129):  # a row alone, wherever it sat
        assert torch.equal(torch.ops.llmos.linear_dot(x[i:i + 1], packed, out, b), full[i:i + 1])
    strided = torch.randn(3, 130, 2 * width, generator=gen)[1, :, ::2]  # not contiguous: made so first
    assert torch.equal(torch.ops.llmos.linear_dot(strided, packed, out, None),
                       torch.ops.llmos.linear_dot(strided.contiguous(), packed, out, None))
    assert torch.ops.llmos.linear_dot(x[:0], packed, out, b).shape == (0, out)
    assert torch.ops.llmos.linear_dot(x.view(10, 13, width), packed, out, b).shape == (10, 13, out)


def test_linear_dot_refuses_weights_that_do_not_fit(fused):
    packed = torch.ops.llmos.dot_pack(torch.randn(50, 7))
    for x, n in ((torch.randn(2, 8), 50), (torch.randn(2, 7), 500), (torch.randn(2, 7).double(), 50)):
        with pytest.raises(RuntimeError, match="linear_dot"):
            torch.ops.llmos.linear_dot(x, packed, n, None)
    with pytest.raises(RuntimeError, match="dot_pack"):
        torch.ops.llmos.dot_pack(torch.randn(4, 4, 4))


def test_a_dot_group_serves_the_linear_layers_and_gives_their_weights_back(fused):
    from llmos.drivers.packed import DotGroup, MklGroup
    lins = [torch.nn.Linear(48, 30, bias=True), torch.nn.Linear(48, 20, bias=False)]
    group = DotGroup(MklGroup(lins, tied=set()))
    assert torch.equal(group.dense(), torch.cat([lins[0].weight, lins[1].weight]).detach())
    x = torch.randn(5, 48)
    with torch.inference_mode():
        want = torch.cat([lins[0](x), lins[1](x)], dim=-1)
        assert torch.allclose(group.compute(x), want, atol=1e-5)
    tiles, width, cols = group.packed.shape  # outputs padded up to whole tiles (48 on AVX-512, 24 on AVX2)
    assert width == 48 and tiles * cols >= 50 > (tiles - 1) * cols and group.nbytes() == tiles * cols * 48 * 4
    xg = torch.randn(2, 48, requires_grad=True)  # training takes the plain product, which has a backward
    group.compute(xg).sum().backward()
    assert xg.grad is not None and xg.grad.shape == (2, 48)


def _sdpa_over_pages(q, k_pool, v_pool, pages, lens, scale, window):
    from llmos.drivers.attention import _gather
    b, page_size = q.shape[0], k_pool.shape[1]
    kd, vd = _gather(k_pool, pages, b), _gather(v_pool, pages, b)
    kpos = torch.arange(pages.shape[1] * page_size)
    mask = kpos[None, :] < lens[:, None]
    if window:
        mask &= kpos[None, :] > (lens[:, None] - 1) - window
    return torch.nn.functional.scaled_dot_product_attention(q[:, :, None], kd, vd, attn_mask=mask[:, None, None, :],
                                                            scale=scale, enable_gqa=True)[:, :, 0]


@pytest.mark.parametrize("heads,kv_heads,dim", [(9, 3, 64), (4, 4, 128), (6, 2, 24)])
@pytest.mark.parametrize("window", [0, 7])
def test_paged_decode_is_attention_over_the_pages_and_a_row_never_depends_on_its_batch(fused, heads, kv_heads, dim,
                                                                                       window):
    gen = torch.Generator().manual_seed(heads * dim + window)
    num_pages, page_size, rows = 40, 4, 6
    k_pool, v_pool = (torch.randn(num_pages, page_size, kv_heads, dim, generator=gen) for _ in range(2))
    lens = torch.tensor([1, 4, 5, 17, 30, 9])  # one token, a full page, one past it, many pages
    pages = torch.stack([torch.randperm(num_pages, generator=gen)[:8] for _ in range(rows)])  # scattered pages
    q = torch.randn(rows, heads, dim, generator=gen) * 3
    scale = dim ** -0.5
    got = torch.ops.llmos.paged_decode(q, k_pool, v_pool, pages, lens, scale, window)
    want = _sdpa_over_pages(q, k_pool, v_pool, pages, lens, scale, window)
    assert got.shape == q.shape and torch.allclose(got, want, atol=2e-6, rtol=1e-5)
    for i in range(rows):  # alone, with its table cut to the pages it uses: the same bits
        used = (int(lens[i]) + page_size - 1) // page_size
        alone = torch.ops.llmos.paged_decode(q[i:i + 1], k_pool, v_pool, pages[i:i + 1, :used], lens[i:i + 1], scale,
                                             window)
        assert torch.equal(alone[0], got[i])
    mixed = torch.ops.llmos.paged_decode(q[[4, 0, 2]], k_pool, v_pool, pages[[4, 0, 2]], lens[[4, 0, 2]], scale, window)
    assert torch.equal(mixed, got[[4, 0, 2]])


def test_paged_decode_refuses_tables_that_point_outside_the_pool(fused):
    k_pool = v_pool = torch.randn(4, 2, 1, 8)
    q = torch.randn(1, 1, 8)
    for pages, lens, what in ((torch.tensor([[0, 4]]), torch.tensor([3]), "out of the pool"),
                              (torch.tensor([[0, -1]]), torch.tensor([4]), "out of the pool"),
                              (torch.tensor([[0, 1]]), torch.tensor([5]), "exceeds its page table")):
        with pytest.raises(RuntimeError, match=what):
            torch.ops.llmos.paged_decode(q, k_pool, v_pool, pages, lens, 1.0, 0)
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.llmos.paged_decode(q.double(), k_pool, v_pool, torch.tensor([[0]]), torch.tensor([1]), 1.0, 0)


@pytest.mark.skipif(not ext.available(), reason="the fused ops are not built (make setup)")
def test_argmax_rows_is_torchs_argmax_ties_and_nans_included():
    gen = torch.Generator().manual_seed(0)
    for rows, vocab in ((1, 49152), (16, 49152), (3, 17), (5, 1), (7, 100)):
        x = torch.randn(rows, vocab, generator=gen)
        assert torch.equal(torch.ops.llmos.argmax_rows(x), x.argmax(-1)), (rows, vocab)
    x = torch.zeros(6, 50)
    x[0, [3, 9, 40]] = 2.0  # ties: the first
    x[1, [10, 45]] = float("nan")  # a NaN wins, the first of them
    x[2] = float("-inf")
    x[3, 0], x[3, 49] = -0.0, 0.0  # signed zeros are equal
    x[3, 1:49] = -1.0
    x[4, 33] = float("inf")
    x[5, [20, 30]] = float("nan")
    x[5, 25] = float("inf")
    assert torch.ops.llmos.argmax_rows(x).tolist() == x.argmax(-1).tolist() == [3, 10, 0, 0, 33, 20]
    with pytest.raises(RuntimeError, match="argmax_rows"):
        torch.ops.llmos.argmax_rows(torch.zeros(2, 3, 4))
