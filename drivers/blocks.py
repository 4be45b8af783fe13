"""fp32 weights kept as the blocks they were dequantized from: llmos::block_dot (drivers/csrc/block_dot.cpp).

A model loaded from a GGUF file is fp32 in memory, but its weights are dequantized blocks: in
the default model every decoder weight is a Q4_1 value, w = (q·d) + m with q in 0..15 and fp16 d
and m per 32 inputs, and its tied LM head is Q8_0, w = q·d with q in -128..127. transformers
holds them as 538 MB of fp32, which a decode step at one row streams from memory in full.

BlockGroup finds the blocks back from the fp32 weights (`blocks_of`), keeps only them (~5 or
~8.5 bits a weight) and checks that they give every weight back bit for bit; block_dot
dequantizes them in registers and runs llmos::linear_dot's chain of fused multiply-adds on the
same values in the same order. So a product's bits are DotGroup's, and the model is the fp32
model that generate() runs; only the bytes read per step change. Weights that are not such
values (a model trained or stored in fp32 or bf16) have no blocks, and keep DotGroup's form.
drivers/choice.py offers the form where it exists and serves it where it is measured faster;
`--quantize int4` rounds any model's weights to such values and serves them so (drivers/int4.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from llmos.drivers.driver import QuantizeError
from llmos.drivers.packed import MklGroup

GROUP = 32  # weights per block along the input, as in GGUF's Q4_1 and Q8_0


class Blocks:
    """Block-quantized values of fp32 weights [out, in]: bits 4 (q 0..15, w = q·d + m) or
    8 (q -128..127, w = q·d), with fp16 d (and m) per GROUP inputs of each output."""

    def __init__(self, bits: int, q: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None) -> None:
        self.bits, self.q, self.d, self.m = bits, q, d, m

    def dequantize(self) -> torch.Tensor:
        """The fp32 weights, as the GGUF reader computes them: a multiply, then an add."""
        out, inp = self.q.shape
        w = self.q.reshape(out, -1, GROUP).float() * self.d.float()[..., None]
        if self.m is not None:
            w = w + self.m.float()[..., None]
        return w.reshape(out, inp)


def blocks_of(w: torch.Tensor) -> Blocks | None:
    """The 4-bit, else the 8-bit, blocks that give every fp32 weight of w [out, in] back bit for
    bit; None where there are none (or w is not fp32 with inputs in whole blocks). Block values
    quantize back to themselves, so each quantizer is run and its result checked."""
    if w.dtype != torch.float32 or w.dim() != 2 or w.shape[1] % GROUP or not w.numel():
        return None
    w = w.detach()
    for quantize in (q4_blocks, q8_blocks):  # the first output alone first: most weights are no blocks, and cheaply told
        if torch.equal(quantize(w[:1]).dequantize(), w[:1]):
            found = quantize(w)
            if torch.equal(found.dequantize(), w):
                return found
    return None


def quantize_groups(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w [out, in] as Q4_1 does it: q [out, in] (uint8, 0..15), step d and minimum m [out, in/32]
    (fp16 values, as fp32), with w ~= q * d + m; ggml's rounding (x + 0.5, truncated), here on the
    fp16 step and minimum that are stored rather than on their fp32 values. A block of Q4_1 values
    holds q = 0 and q = 15, so they come back as they were."""
    out, inp = w.shape
    g = w.detach().float().reshape(out, inp // GROUP, GROUP)
    lo = g.amin(dim=-1).half().float()
    d = ((g.amax(dim=-1) - lo) / 15).half().float()
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    q = ((g - lo[..., None]) * inv[..., None] + 0.5).floor_().clamp_(0, 15).to(torch.uint8)
    return q.reshape(out, inp), d, lo


def q4_blocks(w: torch.Tensor) -> Blocks:
    """w [out, in] as Q4_1 blocks (quantize_groups)."""
    q, d, m = quantize_groups(w)
    return Blocks(4, q, d.half(), m.half())


def q8_blocks(w: torch.Tensor) -> Blocks:
    """w [out, in] as Q8_0 does it: d = max |w| / 127 per 32 inputs (fp16), q = round(w / d)."""
    out, inp = w.shape
    g = w.detach().float().reshape(out, inp // GROUP, GROUP)
    d = (g.abs().amax(dim=-1) / 127).half()
    inv = torch.where(d.float() > 0, 1 / d.float(), torch.zeros_like(d, dtype=torch.float32))
    q = (g * inv[..., None]).round_().clamp_(-128, 127).to(torch.int8)
    return Blocks(8, q.reshape(out, inp), d, None)


class BlockGroup(MklGroup):
    """An fp32 product on weights kept as their blocks (`llmos::block_dot`): DotGroup's bits,
    from about a quarter (8-bit) or a sixth (4-bit) of the bytes, scales included."""

    form = "blocks"

    def __init__(self, src: MklGroup, blocks: Blocks) -> None:
        self._same_product(src)
        self.bits = blocks.bits
        m = blocks.m if blocks.m is not None else torch.empty(0, dtype=torch.float16)
        # Plain attributes, counted by nbytes(): a dtype cast of the model must leave them alone.
        self.packed, self.scales = torch.ops.llmos.block_pack(blocks.q, blocks.d, m, blocks.bits)

    @classmethod
    def of(cls, src: MklGroup) -> "BlockGroup | None":
        """src's product on its blocks; None where its weights are not block values."""
        if src.dtype != torch.float32:
            return None
        blocks = blocks_of(src.dense())
        return cls(src, blocks) if blocks is not None else None

    def product(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return F.linear(x, self.dense().to(x.dtype), self.bias)
        if x.dtype != torch.float32:  # a bf16 model's int4 layers: the product in fp32, then back
            bias = self.bias.float() if self.bias is not None else None
            return torch.ops.llmos.block_dot(x.float(), self.packed, self.scales, self.shape[0], self.bits,
                                             bias).to(x.dtype)
        return torch.ops.llmos.block_dot(x, self.packed, self.scales, self.shape[0], self.bits, self.bias)

    def dense(self) -> torch.Tensor:
        # Each output of I·Wᵀ is one weight times 1 plus zeros: the weights, exactly.
        eye = torch.eye(self.shape[1])
        return torch.ops.llmos.block_dot(eye, self.packed, self.scales, self.shape[0], self.bits, None).T.contiguous()

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def _apply(self, fn, recurse=True):  # the blocks are plain attributes: a device move would leave them behind
        if fn(torch.zeros(1)).device.type != "cpu":
            raise QuantizeError("block weights run on the CPU only (llmos::block_dot); they cannot move to another device")
        return super()._apply(fn, recurse)

    def nbytes(self) -> int:
        return self.packed.numel() * self.packed.element_size() + self.scales.numel() * self.scales.element_size()
