"""Quantized weights: int8 Linear layers that keep batching exact.

Weights are int8, symmetric, one scale per output channel. Activations are quantized on the
fly, one scale per token (row). The product runs as an integer GEMM (`torch._int_mm`, oneDNN
with VNNI on x86) that accumulates exactly in int32, and every float step is per row, so a
token's output never depends on the other rows in its batch. That is why llmos does not use
`quantize_dynamic` (fbgemm): it quantizes a whole batch with one activation scale, so one
process's tokens would change with who else shares its step.

Projections that read the same input (q/k/v, gate/up) are fused into one GEMM. Per-row and
per-channel scales make the fused product bit-identical to the separate ones.

On the CPU the product has three forms, measured at load (drivers/choice.py): oneDNN on
prepacked weights, `_int_mm`, and llmos's own kernel (`llmos::int8_dot`, AVX-512 VNNI), which
quantizes, multiplies and scales in one call. All three give the same bits.

Given calibration text, each group is smoothed first (SmoothQuant: activation outlier
channels are scaled down and the weights' matching columns up), which brings the default
model's perplexity from ~6% above fp32 to ~2%.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmos.drivers import ext
from llmos.drivers.driver import QuantizeError, check_quantize
from llmos.drivers.fuse import FusedGroup, FusedLinear, linear_parents, replace_linears


CUDA_INT_MM_MIN_ROWS = 16
CUDA_INT_MM_MULTIPLE = 8  # cuBLASLt's int8 GEMM takes K and N in multiples of 8 only
# The quantization constants as 0-dim tensors: a Python number becomes a fresh tensor copy on
# every op, which at ~120 Linear groups a step costs more than the arithmetic at batch 1.
_EPS, _QMAX, _SHIFT = torch.tensor(1e-12), torch.tensor(127.0), torch.tensor(128.0)
_EPS_F, _QMAX_F = _EPS.item(), _QMAX.item()  # the same float32 values, for the fused op (drivers/ext.py)
DOT_EPS, DOT_QMAX = _EPS_F, _QMAX_F


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 weights [in, out] (ready for `_int_mm`) and one float32 scale per output channel."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.t().contiguous(), scale


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_weight(weight_t: torch.Tensor, multiple: int) -> torch.Tensor:
    """int8 weights [in, out] with zero rows and columns appended up to multiples of `multiple`.
    Exact: a zero row meets the zero columns appended to the activations (int8_matmul), and
    the zero columns' outputs are sliced off, so every real output is the same int32 sum."""
    k, n = weight_t.shape
    kp, np_ = round_up(k, multiple), round_up(n, multiple)
    if (kp, np_) == (k, n):
        return weight_t
    out = weight_t.new_zeros(kp, np_)
    out[:k, :n] = weight_t
    return out


def _quantize_rows(x: torch.Tensor, smooth: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., in] as float rows [M, in] (smoothed), and one scale per row, [M, 1]. Every op
    counts at batch 1 (each is a dispatch), so conversions that would do nothing are skipped."""
    rows = x.reshape(-1, x.shape[-1])
    if rows.dtype != torch.float32:
        rows = rows.float()
    if smooth is not None:
        rows = rows * smooth
    sx = rows.abs().amax(dim=1, keepdim=True).clamp_min_(_EPS).div_(_QMAX)  # (vector_norm(inf) is slower)
    return rows, sx


def _finish(y: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The dequantized rows y [M, out] with bias, in x's dtype and leading shape."""
    if bias is not None:
        y.add_(bias)
    if x.dtype != torch.float32:
        y = y.to(x.dtype)
    return y.view(*x.shape[:-1], y.shape[1])


def int8_matmul(x: torch.Tensor, weight_t: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                smooth: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., in] (float) times int8 weights, with x quantized per row."""
    rows, sx = _quantize_rows(x, smooth)
    xq = torch.div(rows, sx).round_().to(torch.int8)
    (m, k), n = xq.shape, scale.shape[0]
    pad_rows = CUDA_INT_MM_MIN_ROWS + 1 - m if xq.is_cuda and m <= CUDA_INT_MM_MIN_ROWS else 0  # cuBLASLt: > 16 rows
    if pad_rows or weight_t.shape[0] != k:  # weights padded by pad_weight: zero columns to match
        xq = torch.nn.functional.pad(xq, (0, weight_t.shape[0] - k, 0, pad_rows))
    return _finish(torch._int_mm(xq, weight_t)[:m, :n].mul(scale).mul_(sx), x, bias)  # oneDNN's order


def int8_matmul_packed(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, zeros: torch.Tensor,
                       bias: torch.Tensor | None, smooth: torch.Tensor | None = None) -> torch.Tensor:
    """int8_matmul on weights prepacked for oneDNN (CPU). oneDNN's fast int8 kernels take
    unsigned activations, so the int8 values are shifted by 128 and the shift is declared as
    the zero point: the int32 product, and the result, are exactly int8_matmul's."""
    if ext.available() and x.dtype == torch.float32:  # the same bits, one op (drivers/csrc/quant_rows.cpp)
        return torch.ops.llmos.int8_linear(x, packed, scale, zeros, bias, smooth, _EPS_F, _QMAX_F)
    rows, sx = _quantize_rows(x, smooth)
    xu = torch.div(rows, sx).round_().add_(_SHIFT).to(torch.uint8)
    y = torch.ops.onednn.qlinear_pointwise(xu, 1.0, 128, packed, scale, zeros, None, 1.0, 0, torch.float32,
                                           "none", [], "")
    return _finish(y.mul_(sx), x, bias)


class Int8Group(FusedGroup):
    """int8 weights of one or more projections of the same input, computed as one GEMM."""

    def __init__(self, linears: list[nn.Linear], act_max: torch.Tensor | None = None, alpha: float = 0.5) -> None:
        super().__init__(len(linears))
        weight = torch.cat([lin.weight for lin in linears]).detach().float()
        smooth = None
        if act_max is not None:
            # SmoothQuant: divide activation channels by s and multiply weight columns by it, so
            # outlier channels stop stretching every token's quantization step.
            w_max = weight.abs().amax(dim=0).clamp_min(1e-5)
            s = (act_max.float().clamp_min(1e-5) ** alpha / w_max ** (1 - alpha)).clamp_min(1e-5)
            weight, smooth = weight * s, 1 / s
        weight_t, scale = quantize_weight(weight)
        self.register_buffer("smooth", smooth)
        self.register_buffer("weight_t", weight_t)
        self.register_buffer("scale", scale)
        biases = [lin.bias if lin.bias is not None else torch.zeros(lin.out_features) for lin in linears]
        has_bias = any(lin.bias is not None for lin in linears)
        self.register_buffer("bias", torch.cat(biases).detach().float() if has_bias else None)
        self.packed: torch.Tensor | None = None  # oneDNN's layout (prepack)
        self.dot: tuple[torch.Tensor, torch.Tensor] | None = None  # llmos::int8_dot's tiles and zero-point sums
        self.in_features = weight.shape[1]

    def prepack(self) -> None:
        """Move the weights into oneDNN's packed layout (CPU only; the CPU driver calls this)."""
        if self.weight_t is not None and self.weight_t.device.type == "cpu" and \
                hasattr(torch.ops.onednn, "qlinear_prepack"):
            self.packed = torch.ops.onednn.qlinear_prepack(self.weight_t.t().contiguous(), None)
            self.zeros = torch.zeros(self.scale.shape[0], dtype=torch.long)
            self._packed_away()

    def dot_pack(self) -> None:
        """Move the weights into the tiles of llmos's own int8 kernel (llmos::int8_dot,
        drivers/csrc/int8_dot.cpp; CPU, where the fused ops are built). Its results are
        oneDNN's, bit for bit: the same exact integer sums, scaled in the same order."""
        if self.weight_t is not None and self.weight_t.device.type == "cpu" and ext.available():
            self.dot = torch.ops.llmos.dot8_pack(self.weight_t.t().contiguous())
            self._packed_away()

    def dot_operands(self) -> tuple[torch.Tensor, ...] | None:
        """llmos::int8_dot's weight operands (tiles, zero-point sums, scale, bias, smooth), after
        dot_pack; None before. Its eps and qmax are DOT_EPS and DOT_QMAX."""
        return None if self.dot is None else (*self.dot, self.scale, self.bias, self.smooth)

    def _packed_away(self) -> None:
        self.packed_bytes = self.weight_t.numel()
        self.weight_t = None

    def pad(self, multiple: int) -> bool:
        """Zero-pad the weights' K and N to multiples of `multiple` (pad_weight), for GEMMs that
        take no other shapes; outputs stay exactly the same. Whether anything was padded."""
        if self.weight_t is None:
            raise QuantizeError("prepacked int8 weights cannot be padded")
        padded = pad_weight(self.weight_t, multiple)
        changed = padded is not self.weight_t
        self.weight_t = padded
        return changed

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        if self.dot is not None:
            y = torch.ops.llmos.int8_dot(x.float(), *self.dot, self.scale, self.bias, self.smooth, _EPS_F, _QMAX_F)
            return y if x.dtype == torch.float32 else y.to(x.dtype)
        if self.packed is not None:
            return int8_matmul_packed(x, self.packed, self.scale, self.zeros, self.bias, self.smooth)
        return int8_matmul(x, self.weight_t, self.scale, self.bias, self.smooth)

    def nbytes(self) -> int:  # the weights in a layout of their own (weight_t, a buffer, counts itself)
        if self.dot is not None:
            return sum(t.numel() * t.element_size() for t in self.dot)
        return self.packed_bytes if self.weight_t is None else 0


@dataclass
class QuantReport:
    """What quantization did to a model."""

    mode: str
    layers: int
    groups: int
    bytes_before: int
    bytes_after: int


def check_model(model: nn.Module, mode: str) -> list[nn.Module]:
    """The modules holding Linear layers to quantize; refuse models with other kinds."""
    parents = linear_parents(model)
    others = sorted({type(m).__name__ for m in model.modules()
                     if type(m) is not nn.Linear and ("Linear" in type(m).__name__ or "Conv1D" in type(m).__name__)})
    if others or not parents:
        raise QuantizeError(f"{type(model).__name__} cannot be quantized to {mode}: it uses "
                            f"{', '.join(others) or 'no Linear'} layers; {mode} supports torch.nn.Linear only")
    if mode == "int4":  # the blocks' shape limits (drivers/int4.py)
        from llmos.drivers import int4
        int4.check_model(model)
    return parents


def activation_ranges(model: nn.Module, ids: list[int]) -> dict[nn.Linear, torch.Tensor]:
    """The largest |input| each Linear layer sees per channel, running the model on `ids`."""
    ranges: dict[nn.Linear, torch.Tensor] = {}

    def record(mod: nn.Module, args: tuple) -> None:
        m = args[0].detach().reshape(-1, args[0].shape[-1]).abs().amax(dim=0).float()
        ranges[mod] = torch.maximum(ranges[mod], m) if mod in ranges else m

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if type(m) is nn.Linear]
    try:
        with torch.no_grad():
            model(torch.tensor([ids], device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return ranges


def quantize_model(model: nn.Module, mode: str, calibration: list[int] | None = None) -> QuantReport:
    """Replace the model's Linear layers in place (all of them, the LM head included).
    With calibration token ids, weights are smoothed against the activations they meet."""
    mode = check_quantize(mode)
    before = model_bytes(model)
    if mode == "none":
        return QuantReport(mode, 0, 0, before, before)
    parents = check_model(model, mode)
    if getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False  # the LM head gets its own quantized copy
    if mode == "int4":  # Q4_1 blocks, the LM head Q8_0 (drivers/int4.py)
        from llmos.drivers import int4
        layers, groups = int4.quantize(model, parents)
        return QuantReport(mode, layers, groups, before, model_bytes(model))
    ranges = activation_ranges(model, calibration) if calibration else {}
    layers, groups = replace_linears(parents, lambda linears: Int8Group(linears, ranges.get(linears[0])))
    for layer in model.modules():
        _fold_smoothing(layer)
    return QuantReport(mode, layers, groups, before, model_bytes(model))


def _fold_smoothing(layer: nn.Module) -> None:
    """Move a decoder layer's smoothing divisions into the ops before them (the norms' weights,
    the up projection's output scale), saving an elementwise op per GEMM. Only where the
    layer has the Llama shape and the norm is checked to scale with its weight."""
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    pairs = [(getattr(layer, "input_layernorm", None), getattr(attn, "q_proj", None)),
             (getattr(layer, "post_attention_layernorm", None), getattr(mlp, "gate_proj", None))]
    for norm, proj in pairs:
        if _int8(proj) and proj.group.smooth is not None and _scales_with_weight(norm):
            with torch.no_grad():
                norm.weight.mul_(proj.group.smooth.to(norm.weight.dtype))
            proj.group.smooth = None
    up, down = getattr(mlp, "up_proj", None), getattr(mlp, "down_proj", None)
    if _int8(up) and _int8(down) and down.group.smooth is not None:
        cols = slice(up.start, up.stop)
        up.group.scale[cols] *= down.group.smooth  # silu(gate) * up is linear in up's outputs
        if up.group.bias is not None:
            up.group.bias[cols] *= down.group.smooth
        down.group.smooth = None


def _scales_with_weight(norm: nn.Module | None) -> bool:
    w = getattr(norm, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 1:
        return False
    x, s = torch.randn(3, w.shape[0], dtype=w.dtype, device=w.device), torch.rand_like(w) + 0.5
    with torch.no_grad():
        want = norm(x) * s
        saved = w.detach().clone()
        w.mul_(s)
        got = norm(x)
        w.copy_(saved)
    return torch.allclose(got, want, rtol=1e-4, atol=1e-6)


def _int8(mod: nn.Module | None) -> bool:
    return isinstance(mod, FusedLinear) and isinstance(mod.group, Int8Group)


def pad_int8(model: nn.Module, multiple: int = CUDA_INT_MM_MULTIPLE) -> tuple[int, int]:
    """Pad every int8 group of the model for `_int_mm` on CUDA (Int8Group.pad), so that a
    vocabulary of 32001 or any odd width runs; returns (groups padded, int8 groups)."""
    groups = [m for m in model.modules() if isinstance(m, Int8Group)]
    return sum(g.pad(multiple) for g in groups), len(groups)


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer, counted once even where shared."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total + sum(m.nbytes() for m in model.modules() if isinstance(m, FusedGroup))
