"""fp32 Linear layers on the CPU: MKL on the weights as stored, oneDNN on weights prepacked, or
llmos's own kernel on weights packed for it (DotGroup).

transformers' Linear layers call MKL's sgemm with the weights as stored ([out, in]). Reordered
once into oneDNN's blocked layout, the same products took about a third of the time on an
AMD EPYC, and the same time at one row on an Intel Xeon (bench/linear.py). Which form serves
which shape is measured at load (drivers/choice.py); `pack_model` prepacks every layer.
q/k/v and gate/up are fused into one product each (drivers/fuse.py).

A form that computes a row differently when fewer rows share a call (MKL below ~12 rows,
oneDNN at one row of some shapes) is served with `min_rows`: smaller calls are padded with
zero rows, so that a row's result never depends on the other rows in its batch.

The packed tensor is opaque: it has no autograd and cannot be copied. Deep-copying a member
(the trainer's twin, an export) gives back a plain nn.Linear with the same weights.
"""
from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from llmos.drivers import ext
from llmos.drivers.fuse import FusedGroup, FusedLinear, linear_parents, replace_linears
from llmos.drivers.quant import Int8Group

DTYPES = (torch.float32, torch.bfloat16)


def supported(model: nn.Module) -> bool:
    """Whether this torch can prepack the model's Linear weights (CPU, oneDNN, fp32/bf16)."""
    p = next(model.parameters(), None)
    return (p is not None and p.device.type == "cpu" and p.dtype in DTYPES
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class MklGroup(FusedGroup):
    """One or more projections of the same input as one product on the weights as stored (MKL)."""

    form = "mkl"

    def __init__(self, linears: list[nn.Linear], tied: set[int]) -> None:
        super().__init__(len(linears))
        self.weight = torch.cat([lin.weight.detach() for lin in linears]) if len(linears) > 1 \
            else linears[0].weight.detach()
        self.shape = tuple(self.weight.shape)
        biases = [lin.bias.detach() if lin.bias is not None else self.weight.new_zeros(lin.out_features)
                  for lin in linears]
        has_bias = any(lin.bias is not None for lin in linears)
        self.register_buffer("bias", torch.cat(biases) if has_bias else None)
        # A weight another module also uses (a tied LM head) is kept, so copies stay tied.
        self.kept = {start: lin.weight for start, lin in zip(_starts(linears), linears) if id(lin.weight) in tied}
        self.min_rows = 1

    def _same_product(self, src: "MklGroup") -> None:
        """Start as another form of src's product: its size, shape, kept weights, padding and bias."""
        FusedGroup.__init__(self, src.size)
        self.shape, self.kept, self.min_rows = src.shape, src.kept, src.min_rows
        self.register_buffer("bias", src.bias)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        m = x.numel() // self.shape[1]
        if m >= self.min_rows or m == 0:
            return self.product(x)
        rows = torch.cat([x.reshape(m, self.shape[1]), x.new_zeros(self.min_rows - m, self.shape[1])])
        return self.product(rows)[:m].view(*x.shape[:-1], self.shape[0])

    def product(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def dense(self) -> torch.Tensor:
        """The weights [out, in], as a plain tensor."""
        return self.weight

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype

    def nbytes(self) -> int:  # the weight is counted here unless it is a kept parameter
        shared = len(self.kept) == 1 and self.size == 1
        return 0 if shared else self.weight.numel() * self.weight.element_size()


class PackedGroup(MklGroup):
    """The same product by oneDNN on the weights reordered once into its blocked layout."""

    form = "packed"

    def __init__(self, linears: list[nn.Linear] | MklGroup, tied: set[int] | None = None) -> None:
        src = linears if isinstance(linears, MklGroup) else MklGroup(linears, tied or set())
        self._same_product(src)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(src.weight)

    def product(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:  # oneDNN's op has no backward
            return F.linear(x, self.packed.to_dense(), self.bias)
        if ext.available():  # the same call, as an op torch.compile calls whole (drivers/compiled.py)
            return torch.ops.llmos.linear_packed(x, self.packed, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.bias, "none", [], "")

    def dense(self) -> torch.Tensor:
        return self.packed.to_dense()

    @property
    def dtype(self) -> torch.dtype:
        return self.packed.dtype

    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.packed.element_size()


class DotGroup(MklGroup):
    """The same product by llmos's own kernel (`llmos::linear_dot`, drivers/csrc/linear_dot.cpp):
    each output one fused multiply-add chain in the order of the input, whatever rows share the
    call, on the weights packed once into tiles that stream from memory in order. At one row it
    reads the weights near the machine's bandwidth, which MKL and oneDNN do not on every CPU."""

    form = "dot"

    def __init__(self, src: MklGroup) -> None:
        self._same_product(src)
        # A plain attribute, as nbytes() counts it (a buffer would be counted twice, and cast by .to()).
        self.packed = torch.ops.llmos.dot_pack(src.weight.detach().float().contiguous())

    def product(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return F.linear(x, self.dense(), self.bias)
        return torch.ops.llmos.linear_dot(x, self.packed, self.shape[0], self.bias)

    def dense(self) -> torch.Tensor:
        return self.packed.transpose(1, 2).reshape(-1, self.shape[1])[:self.shape[0]]

    @property
    def dtype(self) -> torch.dtype:
        return self.packed.dtype

    def nbytes(self) -> int:
        return self.packed.numel() * self.packed.element_size()


class PackedLinear(FusedLinear):
    """A Linear layer served from an MklGroup or PackedGroup; a deep copy of it is a plain nn.Linear."""

    def __deepcopy__(self, memo: dict) -> nn.Linear:
        g: MklGroup = self.group  # type: ignore[assignment]
        kept = g.kept.get(self.start)
        weight = copy.deepcopy(kept, memo) if kept is not None else \
            nn.Parameter(g.dense()[self.start:self.stop].clone(), requires_grad=False)
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


def fuse_model(model: nn.Module, convert: Callable[[MklGroup], FusedGroup] | None = None) -> int:
    """Replace the model's Linear layers (the LM head included) by members of MklGroups (the
    weights as stored, fused), in place, or of `convert(group)` made of each at once (so the
    fused copies are never all held together). Returns how many Linear layers were replaced."""
    linear_weights = {id(m.weight) for m in model.modules() if type(m) is nn.Linear}
    tied = {id(p) for m in model.modules() if type(m) is not nn.Linear
            for p in m.parameters(recurse=False) if id(p) in linear_weights}
    make = (lambda linears: convert(MklGroup(linears, tied))) if convert else (lambda linears: MklGroup(linears, tied))
    layers, _ = replace_linears(linear_parents(model), make, member=PackedLinear)
    return layers


def pack_model(model: nn.Module) -> int:
    """Replace the model's Linear layers (the LM head included) by prepacked ones, in place,
    and prepack int8 groups (drivers/quant.py): every layer in its default form, unmeasured.
    Returns how many Linear layers were replaced; 0 where the model or this torch cannot be packed."""
    for group in model.modules():
        if isinstance(group, Int8Group):
            group.prepack()
    if not supported(model):
        return 0
    layers = fuse_model(model, PackedGroup)
    own_memory(model)
    return layers


def swap_groups(model: nn.Module, convert: Callable[[FusedGroup], FusedGroup | None]) -> None:
    """Serve every member's group as `convert(group)`, each group converted once (None: keep it).
    A group is freed once its last member moves on, so the model is never held twice."""
    done: dict[int, FusedGroup] = {}  # by id: an original group stays alive until its members move
    for member in [m for m in model.modules() if isinstance(m, FusedLinear)]:
        g = member.group
        if id(g) not in done:
            done[id(g)] = convert(g) or g
        member.group = done[id(g)]


def own_memory(model: nn.Module) -> None:
    """Give the tensors left (embeddings, norms) storage of their own. Loaded weights are views
    of the checkpoint's file mapping, and one of them alive keeps every page of the file that
    packing read resident: ~400 MB more RSS for the default model."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.data = t.data.clone()
