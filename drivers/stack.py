"""A model's decode steps as one C++ call: llmos.DecodeStack (drivers/csrc/decode_stack.cpp).

The direct path (drivers/lean.py) runs a decoder layer as some fourteen calls from Python: its
norms, products, RoPE, the KV writes, attention, SiLU·mul and the residual adds. On vectors of
576 floats each call costs more than its arithmetic, and at one row those calls took as long as
the products did. DecodeStack makes the same calls on the same tensors from C++, every layer
in one call a step, so a decode step gives the direct path's bits (tests/test_decode_stack.py)
and tokens never change.

It serves steps of decode rows (verify rows included) on the CPU where every piece of every
layer is one it knows: both norms llmos::rms_norm, the fused RoPE, SiLU·mul, fp32 activations and
KV, and each product at the step's row count llmos's own (a DotGroup's llmos::linear_dot, a
BlockGroup's llmos::block_dot or an Int8Group's llmos::int8_dot). drivers/choice.py may serve a product in another form at some row
counts; steps of those row counts keep the compiled or eager path. `problem` says why a model
is not served at all.
"""
from __future__ import annotations

import bisect

import torch

from llmos.drivers import lean_ops
from llmos.drivers.attention import PagedBatch
from llmos.drivers.blocks import BlockGroup
from llmos.drivers.choice import RowsGroup
from llmos.drivers.lean import LeanDecoder, fused_problem
from llmos.drivers.packed import DotGroup
from llmos.drivers.quant import DOT_EPS, DOT_QMAX, Int8Group

FLOAT_DOT, INT8_DOT, BLOCKS4, BLOCKS8 = 0, 1, 2, 3  # decode_stack.cpp's kinds of product
_NONE = torch.empty(0)


def problem(lean: LeanDecoder | None) -> str | None:
    """Why DecodeStack cannot serve the model behind `lean` at any row count; None if it can at some."""
    why = fused_problem(lean)
    if why is not None:
        return why
    if lean.embed.weight.dtype != torch.float32 or lean.embed.weight.device.type != "cpu":
        return "not float32 on the CPU"
    if not all(isinstance(p.act, lean_ops.SiluMul) for p in lean.direct.layers):
        return "its MLP is not SiLU·mul"
    if not _bucket_ops(lean, 1) and not _bucket_ops(lean, 1 << 20):
        return "its products are not in forms it runs"
    return None


class StackedDecode:
    """The direct path's layers of one model as DecodeStack calls, one stack per range of row
    counts whose products have the same forms, built on first use for the KV pool in use."""

    def __init__(self, lean: LeanDecoder) -> None:
        self.lean = lean
        limits = {last for fn in _products(lean) for last in getattr(_group(fn), "limits", ()) if last is not None}
        self.bounds = sorted(limits)  # row counts where some product changes form
        self._stacks: dict[int, object | None] = {}
        self._kv: list | None = None
        self.steps = 0  # steps DecodeStack ran

    def __call__(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: PagedBatch) -> torch.Tensor | None:
        """The layers over a step of decode rows; None where a product at this row count is not
        one DecodeStack runs (the caller then runs them another way)."""
        if batch.kv is not self._kv:
            self._stacks, self._kv = {}, batch.kv
        rows = h.shape[1]
        bucket = bisect.bisect_left(self.bounds, rows)
        if bucket not in self._stacks:
            self._stacks[bucket] = self._build(rows, batch.kv)
        stack = self._stacks[bucket]
        if stack is None or h.dtype != torch.float32:
            return None
        c, s, _ = self.lean.direct.turn(cos, sin)
        self.steps += 1
        return stack.run(h, c, s, batch.slot_mapping, batch.decode_pages, batch.decode_lens)

    def reset(self) -> None:
        """Drop the stacks built (and their hold on the KV pool): the pool is freed or replaced."""
        self._stacks, self._kv = {}, None

    def serves_every_row_count(self) -> bool:
        """Whether every product is llmos's own at every row count (so no step needs another path)."""
        return all(_bucket_ops(self.lean, rows) is not None for rows in (*self.bounds, (self.bounds or [0])[-1] + 1))

    def _build(self, rows: int, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> object | None:
        ops = _bucket_ops(self.lean, rows)
        if ops is None or any(k.dtype != torch.float32 or not k.is_contiguous() for pair in kv for k in pair):
            return None
        plans, lean = self.lean.direct.layers, self.lean
        p0 = plans[0]
        ints = [lean.embed.weight.shape[1], p0.q_heads, p0.qk_heads - p0.q_heads, p0.head_dim, p0.act.inter]
        floats = [DOT_EPS, DOT_QMAX]
        weights: list[torch.Tensor] = []
        for i, (p, window) in enumerate(zip(plans, lean.windows)):
            weights += [p.norm1.weight, p.norm2.weight]
            ints.append(window or 0)
            for kind, n, tensors in ops[4 * i:4 * i + 4]:
                ints += [kind, n]
                weights += tensors
            floats += [p.norm1.eps, p.norm2.eps, p.scaling]
        pools = [t for pair in kv for t in pair]
        return torch.classes.llmos.DecodeStack(weights, pools, ints, floats)


def _products(lean: LeanDecoder) -> list:
    return [fn for p in lean.direct.layers for fn in (p.qkv, p.o, p.gate_up, p.down)]


def _group(fn: object) -> object:
    return getattr(fn, "__self__", None)


def _bucket_ops(lean: LeanDecoder, rows: int) -> list[tuple[int, int, list[torch.Tensor]]] | None:
    """Each product's (kind, outputs, tensors) as it is served at `rows` rows; None if one is
    not llmos's own product there."""
    out = []
    for fn in _products(lean):
        form = _group(fn)
        if isinstance(form, RowsGroup):
            form = form.form_at(rows)
        op = _operands(form)
        if op is None:
            return None
        out.append(op)
    return out


def _operands(form: object) -> tuple[int, int, list[torch.Tensor]] | None:
    if type(form) is DotGroup and form.min_rows == 1 and form.packed.dtype == torch.float32:
        bias = form.bias if form.bias is not None else _NONE
        return FLOAT_DOT, form.shape[0], [form.packed, _NONE, _NONE, bias, _NONE]
    if isinstance(form, BlockGroup) and form.min_rows == 1:  # int4's Int4Group too
        bias = form.bias if form.bias is not None else _NONE
        return BLOCKS4 if form.bits == 4 else BLOCKS8, form.shape[0], [form.packed, form.scales, _NONE, bias, _NONE]
    if type(form) is Int8Group and form.dot_operands() is not None:
        tiles, comp, scale, bias, smooth = form.dot_operands()
        return INT8_DOT, scale.shape[0], [tiles, comp, scale, _none(bias), _none(smooth)]
    return None


def _none(t: torch.Tensor | None) -> torch.Tensor:
    return _NONE if t is None else t
