"""Prepacked weights for the CPU: Linear layers run by oneDNN on weights reordered once.

transformers' Linear layers call MKL's sgemm with the weights as stored ([out, in]). Reordered
once into oneDNN's blocked layout, the same products take about a third of the time on this
kind of CPU, at batch 1 and at 16 (measured by bench/linear.py), and a row's result never
depends on the other rows in its batch.
q/k/v and gate/up are fused into one product each (drivers/fuse.py).

The packed tensor is opaque: it has no autograd and cannot be copied. Deep-copying a packed
layer (the trainer's twin, an export) gives back a plain nn.Linear with the same weights.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from llmos.drivers.fuse import FusedGroup, FusedLinear, linear_parents, replace_linears
from llmos.drivers.quant import Int8Group

DTYPES = (torch.float32, torch.bfloat16)


def supported(model: nn.Module) -> bool:
    """Whether this torch can prepack the model's Linear weights (CPU, oneDNN, fp32/bf16)."""
    p = next(model.parameters(), None)
    return (p is not None and p.device.type == "cpu" and p.dtype in DTYPES
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class PackedGroup(FusedGroup):
    """One or more projections of the same input as one oneDNN product on prepacked weights."""

    def __init__(self, linears: list[nn.Linear], tied: set[int]) -> None:
        super().__init__(len(linears))
        weight = torch.cat([lin.weight.detach() for lin in linears]) if len(linears) > 1 else linears[0].weight.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight)
        self.shape = tuple(weight.shape)
        biases = [lin.bias.detach() if lin.bias is not None else weight.new_zeros(lin.out_features) for lin in linears]
        has_bias = any(lin.bias is not None for lin in linears)
        self.register_buffer("bias", torch.cat(biases) if has_bias else None)
        # A weight another module also uses (a tied LM head) is kept, so copies stay tied.
        self.kept = {start: lin.weight for start, lin in zip(_starts(linears), linears) if id(lin.weight) in tied}

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:  # oneDNN's op has no backward
            return F.linear(x, self.packed.to_dense(), self.bias)
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.bias, "none", [], "")

    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.packed.element_size()


class PackedLinear(FusedLinear):
    """A Linear layer served from a PackedGroup; a deep copy of it is a plain nn.Linear."""

    def __deepcopy__(self, memo: dict) -> nn.Linear:
        g: PackedGroup = self.group  # type: ignore[assignment]
        kept = g.kept.get(self.start)
        weight = copy.deepcopy(kept, memo) if kept is not None else \
            nn.Parameter(g.packed.to_dense()[self.start:self.stop].clone(), requires_grad=False)
        lin = nn.Linear(self.in_features, self.out_features, bias=g.bias is not None, device="meta")
        lin.weight = weight
        if g.bias is not None:
            lin.bias = nn.Parameter(g.bias[self.start:self.stop].clone(), requires_grad=False)
        return lin


def _starts(linears: list[nn.Linear]) -> list[int]:
    starts, at = [], 0
    for lin in linears:
        starts.append(at)
        at += lin.out_features
    return starts


def pack_model(model: nn.Module) -> int:
    """Replace the model's Linear layers (the LM head included) by prepacked ones, in place,
    and prepack int8 groups (drivers/quant.py). Returns how many Linear layers were replaced;
    0 where the model or this torch cannot be packed."""
    for group in model.modules():
        if isinstance(group, Int8Group):
            group.prepack()
    if not supported(model):
        return 0
    linear_weights = {id(m.weight) for m in model.modules() if type(m) is nn.Linear}
    tied = {id(p) for m in model.modules() if type(m) is not nn.Linear
            for p in m.parameters(recurse=False) if id(p) in linear_weights}

    layers, _ = replace_linears(linear_parents(model), lambda linears: PackedGroup(linears, tied), member=PackedLinear)
    _own_memory(model)
    return layers


def _own_memory(model: nn.Module) -> None:
    """Give the tensors left (embeddings, norms) storage of their own. Loaded weights are views
    of the checkpoint's file mapping, and one of them alive keeps every page of the file that
    packing read resident: ~400 MB more RSS for the default model."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.data = t.data.clone()
