"""4-bit weights: Q4_1-style groups run by torch's int4 CPU kernel, for one-stream speed.

A decode step at one stream reads every weight once, so its time is the weights' bytes over
memory bandwidth. In 4 bits the default model's decoder Linears are 66 MB (with their
scales) instead of 425 MB in fp32, and torch's `_weight_int4pack_mm_for_cpu` reads them as
they are. Measured on a 2-core EPYC (bench/int4.py): all Linears at one row 8.7 ms against
17.5 (int8 on oneDNN) and 30 (packed fp32); a kernel decode step 17 ms against 26 and 37.
llmos's own int8 product (drivers/csrc/int8_dot.cpp) later overtook it there: the decoder's
products at one row in 3.0 ms, as the bytes of int8 weights stream; torch's int4 kernel does
not read its 4-bit weights at that rate.

Weights are asymmetric groups of 32 along the input, like GGUF's Q4_1: w = q * d + m with q in
0..15. The default model's weights are Q4_1 values dequantized to fp32, and every one of its
groups holds both q = 0 and q = 15, so its minimum is m and its range 15d: requantizing them
gives back the GGUF's own q, d and m, bit for bit, for all 106M weights (tests/test_int4.py
checks it against the file), so there is nothing to gain from reading the file's blocks.
The kernel then keeps the scale d and the zero m + 8d in bf16, its only format for them
(each weight within 5% of a quantization step of its Q4_1 value).

The kernel takes bf16 activations and returns bf16 outputs, accumulating each output in fp32
over the input in order, row by row: a row's result never depends on the other rows of its
batch, and fused projections (q/k/v, gate/up) equal separate ones. Its fp32-activation path
has no vectorized code on x86 (10-25x slower), so the mode is bf16 at the Linear boundary and
the model around it stays fp32: perplexity 1.0002x fp32's on bench/data/quality.txt. The LM
head, tied to an embedding that is Q8_0 in the GGUF, stays int8 (drivers/quant.py): in 4 bits,
a second rounding, it costs 6% perplexity.

The kernel's time grows with the rows (~1.4 ms a row for the default model's Linears), so
past R = 8 rows (measured here) int8 is faster. `wide_rows=R` gives each group a second, int8
copy of its weights for calls of more than R rows: faster batches and prefill, 107 MB more
for the default model, and a row's result then depends on how many rows share its step, so
the kernel is no longer exact against generate(). The served mode leaves it off.
"""
from __future__ import annotations

import torch
from torch import nn

from llmos.drivers.driver import QuantizeError
from llmos.drivers.fuse import FusedGroup, replace_linears
from llmos.drivers.quant import Int8Group, activation_ranges

GROUP = 32      # weights per (scale, minimum) pair along the input, as in Q4_1
N_MULTIPLE = 16  # torch's int4 CPU packing takes output widths in multiples of 16
WIDE_ROWS: int | None = None  # the served mode's dispatch threshold: None = 4-bit at every row count
HEADS = ("int8", "int4", "fp32")  # what the LM head can be; the served mode's is the first
_KERNEL = "torch.ops.aten._weight_int4pack_mm_for_cpu"


def supported() -> bool:
    """Whether this torch has the int4 CPU kernel."""
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and \
        hasattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu")


def quantize_groups(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w [out, in] as Q4_1 does it: q [out, in] (uint8, 0..15), scale d and minimum m [out, in/32]
    (fp32), with w ~= q * d + m; ggml's rounding (x + 0.5, truncated)."""
    out, inp = w.shape
    g = w.detach().float().reshape(out, inp // GROUP, GROUP)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    d = (hi - lo) / 15
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    q = ((g - lo[..., None]) * inv[..., None] + 0.5).floor_().clamp_(0, 15).to(torch.uint8)
    return q.reshape(out, inp), d, lo


def dequantize_groups(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """q * d + m per group, fp32 [out, in]."""
    out, inp = q.shape
    return (q.reshape(out, -1, GROUP).float() * d[..., None] + m[..., None]).reshape(out, inp)


def kernel_form(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's operands: packed nibbles [out, in/2] (uint8) and scales and zeros
    [in/32, out, 2] (bf16), where the kernel computes w = (q - 8) * scale + zero."""
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)
    sz = torch.stack([d, m + 8 * d], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
    return packed, sz


def kernel_weight(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The weights the kernel multiplies by, fp32 [out, in]: its bf16 scales and zeros applied
    to q as it does, in one fp32 rounding (an fma; exact in fp64, then rounded once)."""
    _, sz = kernel_form(q, d, m)
    scale, zero = sz.double().transpose(0, 1).unbind(-1)
    out, inp = q.shape
    w = (q.reshape(out, -1, GROUP).double() - 8) * scale[..., None] + zero[..., None]
    return w.float().reshape(out, inp)


def shape_problem(name: str, lin: nn.Linear) -> str | None:
    """Why the int4 kernel cannot take this Linear layer, or None."""
    if lin.in_features % GROUP:
        return f"{name} has in_features {lin.in_features}, not a multiple of {GROUP} (the group size)"
    if lin.out_features % N_MULTIPLE:
        return f"{name} has out_features {lin.out_features}, not a multiple of {N_MULTIPLE} (torch's int4 CPU packing)"
    return None


def check_model(model: nn.Module, head: str = HEADS[0]) -> None:
    """Refuse, by name, a model whose 4-bit layers (every Linear but an LM head that is not
    int4) the kernel cannot take, or a torch without the kernel."""
    if not supported():
        raise QuantizeError(f"int4 needs {_KERNEL}, which torch {torch.__version__} lacks")
    skip = _head(model) if head != "int4" else None
    for name, mod in model.named_modules():
        if type(mod) is nn.Linear and mod is not skip:
            problem = shape_problem(name, mod)
            if problem:
                raise QuantizeError(f"{type(model).__name__} cannot be quantized to int4: {problem}")


class Int4Group(FusedGroup):
    """4-bit weights of one or more projections of the same input, computed as one product;
    with `wide_rows`, calls of more rows go to an int8 copy of the same weights instead."""

    def __init__(self, linears: list[nn.Linear], wide_rows: int | None = None,
                 act_max: torch.Tensor | None = None) -> None:
        super().__init__(len(linears))
        weight = torch.cat([lin.weight.detach() for lin in linears]).float()
        self.shape = tuple(weight.shape)
        # Plain attributes, not buffers: a dtype cast of the model must leave the kernel's
        # bf16 scales and uint8 nibbles alone (a device move is refused in _apply).
        self.packed, self.scales_zeros = kernel_form(*quantize_groups(weight))
        has_bias = any(lin.bias is not None for lin in linears)
        biases = [lin.bias.detach().float() if lin.bias is not None else torch.zeros(lin.out_features)
                  for lin in linears]
        self.register_buffer("bias", torch.cat(biases) if has_bias else None)
        self.wide_rows = wide_rows
        self.wide = Int8Group(linears, act_max) if wide_rows is not None else None

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.shape[1])
        if self.wide is not None and rows.shape[0] > self.wide_rows:
            return self.wide.compute(x)
        if rows.dtype != torch.bfloat16:
            rows = rows.to(torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows.contiguous(), self.packed, GROUP, self.scales_zeros)
        y = y.to(x.dtype) if x.dtype != torch.bfloat16 else y
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*x.shape[:-1], self.shape[0])

    def nbytes(self) -> int:
        return self.packed.numel() * self.packed.element_size() + \
            self.scales_zeros.numel() * self.scales_zeros.element_size()

    def _apply(self, fn, recurse: bool = True):  # nn.Module's signature
        device = fn(torch.zeros(1)).device
        if device.type != "cpu":
            raise QuantizeError(f"int4 weights run on the CPU only ({_KERNEL}); cannot move them to {device}")
        return super()._apply(fn, recurse)


def quantize(model: nn.Module, parents: list[nn.Module], calibration: list[int] | None = None,
             wide_rows: int | None = WIDE_ROWS, head: str = HEADS[0]) -> tuple[int, int]:
    """Replace the model's Linear layers in place: 4-bit groups, and the LM head as `head` says
    (int8 smoothed on `calibration` where given; fp32 leaves it a Linear). Returns (layers,
    groups) replaced."""
    if head not in HEADS:
        raise QuantizeError(f"unknown int4 LM head {head!r}; supported: {', '.join(HEADS)}")
    lm_head = _head(model)
    check_model(model, head)
    ranges = activation_ranges(model, calibration) if calibration else {}
    if head == "fp32" and lm_head is not None:
        parents = [p for p in parents if lm_head not in p.children()]

    def make(linears: list[nn.Linear]) -> FusedGroup:
        if linears[0] is lm_head and head == "int8":
            return Int8Group(linears, ranges.get(lm_head))
        return Int4Group(linears, wide_rows, ranges.get(linears[0]) if wide_rows is not None else None)

    return replace_linears(parents, make)


def _head(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if type(head) is nn.Linear else None
