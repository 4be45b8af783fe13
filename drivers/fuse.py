"""Fused projections: one GEMM for sibling Linear layers that read the same input.

Attention's q/k/v and the MLP's gate/up each read one tensor. A `FusedGroup` holds their
weights side by side and computes every member's output in one product; each member
(`FusedLinear`) stands where its Linear stood and reads its columns. The model's own forward
code is unchanged. Subclasses decide how the product is computed (int8 GEMM, prepacked
oneDNN weights).
"""
from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import nn

# Sibling projections that attention and MLP blocks feed with one tensor.
FUSE = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("query", "key", "value"))


class FusedGroup(nn.Module):
    """The product of several projections of the same input; members read their slices.

    The first member called with a tensor computes every member's output; the others take
    their slices of it. The output is dropped once each member has read it.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        # [input weakref, output, reads left]; mutated in place, as nn.Module's __setattr__ is slow.
        self._cache: list = [None, None, 0]

    def compute(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def nbytes(self) -> int:
        """Bytes of weights held outside parameters and buffers (opaque packed tensors)."""
        return 0

    def output(self, x: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return self.compute(x)
        c = self._cache
        if c[2] == 0 or c[0]() is not x:
            c[0], c[1], c[2] = weakref.ref(x), self.compute(x), self.size
        out = c[1]
        c[2] -= 1
        if c[2] == 0:
            c[0] = c[1] = None
        return out


class FusedLinear(nn.Module):
    """A Linear layer's place in a group: columns [start, stop) of the group's product."""

    def __init__(self, group: FusedGroup, start: int, stop: int, in_features: int) -> None:
        super().__init__()
        self.group = group
        self.start, self.stop = start, stop
        self.in_features, self.out_features = in_features, stop - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.group.output(x)
        return out if self.group.size == 1 else out[..., self.start:self.stop]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {type(self.group).__name__}"


def linear_parents(model: nn.Module) -> list[nn.Module]:
    """The modules that hold plain nn.Linear children."""
    return [mod for mod in model.modules() if any(type(c) is nn.Linear for c in mod.children())]


def groups(parent: nn.Module) -> list[tuple[str, ...]]:
    """Names of parent's Linear children, fusible siblings together, the rest alone."""
    linear = {n for n, c in parent.named_children() if type(c) is nn.Linear}
    out = []
    for names in FUSE:
        if set(names) <= linear and len({getattr(parent, n).in_features for n in names}) == 1:
            out.append(names)
            linear -= set(names)
    return out + [(n,) for n in sorted(linear)]


def replace_linears(parents: list[nn.Module], make: Callable[[list[nn.Linear]], FusedGroup],
                    member: type[FusedLinear] = FusedLinear) -> tuple[int, int]:
    """Swap every Linear child of `parents` for a `member` of a group built by `make`.
    Returns (layers, groups) replaced."""
    layers = count = 0
    for parent in parents:
        for names in groups(parent):
            linears = [getattr(parent, n) for n in names]
            group = make(linears)
            start = 0
            for n, lin in zip(names, linears):
                setattr(parent, n, member(group, start, start + lin.out_features, lin.in_features))
                start += lin.out_features
            layers += len(names)
            count += 1
    return layers, count
