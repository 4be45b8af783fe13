"""The direct path of drivers/lean.py: each layer's projections as products of their fused
groups (drivers/fuse.py), and the small per-token work in fewer ops.

- RMSNorm: one op instead of transformers' eight: llmos::rms_norm (drivers/csrc/opaque.cpp, ATen's
  sum of squares and the rest in one pass) where the fused ops are built, else `F.rms_norm`
  (which is six ATen ops inside).
- RoPE: the query and key heads of a layer, side by side in the fused q/k/v product, turned
  at once: x·cos + roll(x)·sin' with sin' = (-sin₁, sin₂), which is rotate_half(x)·sin term by
  term ((-a)·b and a·(-b) are the same float), instead of fourteen ops for q and k apart.
- SiLU·mul: the up half multiplied into silu(gate) in place.

Each is checked at load against the module or function it stands for, on probe inputs, bit for
bit; where one differs (another norm formula, partial rotary, another activation), the module
itself runs. A step does the same arithmetic either way, so tokens never change.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from llmos.drivers import ext
from llmos.drivers.fuse import FusedLinear

Fn = Callable[[torch.Tensor], torch.Tensor]
Turn = tuple[torch.Tensor, torch.Tensor, int]  # cos [T, 1, D], signed sin [T, 1, D], D / 2
PROBE_ROWS = 5


@dataclass
class LayerPlan:
    """What the direct path calls for one decoder layer."""

    norm1: Fn
    qkv: Fn  # x [1, T, hidden] -> [1, T, (q + 2 kv heads) * head_dim]
    o: Fn
    norm2: Fn
    gate_up: Fn  # x -> [1, T, 2 * intermediate]
    act: Fn  # [1, T, 2 * intermediate] -> silu(gate) * up
    down: Fn
    head_dim: int
    q_heads: int
    qk_heads: int
    scaling: float


@dataclass
class DirectPlan:
    """Every layer's plan, the final norm and LM head, and whether the fused RoPE is exact."""

    layers: list[LayerPlan]
    norm: Fn
    head: Fn
    fused_rope: bool

    def turn(self, cos: torch.Tensor, sin: torch.Tensor) -> Turn | None:
        """The step's rotation for `rope` from the rotary module's cos, sin [1, T, D]; None
        where the module's own RoPE function must run."""
        if not self.fused_rope:
            return None
        return _turn(cos, sin)


def rope(qk: torch.Tensor, turn: Turn) -> torch.Tensor:
    """qk [T, heads, D] rotated: what apply_rotary_pos_emb gives each head."""
    cos, sin, half = turn
    return qk * cos + qk.roll(half, -1) * sin


def _turn(cos: torch.Tensor, sin: torch.Tensor) -> Turn:
    half = cos.shape[-1] // 2
    s = sin[0, :, None]
    return cos[0, :, None], torch.cat((-s[..., :half], s[..., half:]), -1), half


def plan(layers: list[nn.Module], rope_fn: Callable, rotary: nn.Module, norm: nn.Module,
         head: nn.Module) -> DirectPlan:
    """The direct path for these decoder layers, every piece checked against its module."""
    like = _like(norm)
    with torch.inference_mode():
        out = [_layer(layer, like) for layer in layers]
        fused = _rope_exact(out[0], rope_fn, rotary, *like)
        return DirectPlan(out, _norm(norm), product([head]), fused)


def product(mods: list[nn.Module]) -> Fn:
    """x -> the outputs of `mods` side by side: their group's product where they are its only
    members in order (one call, no slicing), else the modules' own outputs joined."""
    g = getattr(mods[0], "group", None)
    whole = all(isinstance(m, FusedLinear) and m.group is g for m in mods) and g.size == len(mods) and \
        mods[0].start == 0 and all(a.stop == b.start for a, b in pairwise(mods))
    if whole:
        return g.compute
    if len(mods) == 1:
        return mods[0]
    return lambda x: torch.cat([m(x) for m in mods], -1)


def _layer(layer: nn.Module, like: tuple[torch.dtype, torch.device]) -> LayerPlan:
    a, mlp = layer.self_attn, layer.mlp
    d = a.head_dim
    qh, kvh = a.q_proj.out_features // d, a.k_proj.out_features // d
    gate_up, down = product([mlp.gate_proj, mlp.up_proj]), product([mlp.down_proj])
    p = LayerPlan(_norm(layer.input_layernorm), product([a.q_proj, a.k_proj, a.v_proj]), product([a.o_proj]),
                  _norm(layer.post_attention_layernorm), gate_up, _act(mlp, like), down, d, qh, qh + kvh, a.scaling)
    x = _probe(a.q_proj.in_features, *like)
    if not torch.equal(p.down(p.act(p.gate_up(x))), mlp(x)):  # an MLP of another formula: run it as it is
        p.gate_up, p.act, p.down = (lambda y: y), mlp, (lambda y: y)
    return p


@dataclass
class RmsNorm:
    """A module's RMSNorm as one op: llmos::rms_norm where `fused` (drivers/csrc/opaque.cpp),
    else `F.rms_norm`."""

    weight: torch.Tensor
    eps: float
    fused: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return torch.ops.llmos.rms_norm(x, self.weight, self.eps)
        return F.rms_norm(x, (self.weight.shape[0],), self.weight, self.eps)


def _norm(mod: nn.Module) -> Fn:
    w, eps = getattr(mod, "weight", None), getattr(mod, "variance_epsilon", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 1 or not isinstance(eps, float):
        return mod
    x = _probe(w.shape[0], w.dtype, w.device)
    want = mod(x)
    for fast in ([RmsNorm(w, eps, fused=True)] if ext.available() else []) + [RmsNorm(w, eps)]:
        if torch.equal(fast(x), want):
            return fast
    return mod


@dataclass
class SiluMul:
    """silu(gate) · up over the gate/up product [..., 2 · inter], the up half multiplied in place."""

    inter: int

    def __call__(self, gu: torch.Tensor) -> torch.Tensor:
        return F.silu(gu[..., :self.inter]).mul_(gu[..., self.inter:])


def _act(mlp: nn.Module, like: tuple[torch.dtype, torch.device]) -> Fn:
    inter, fn = mlp.gate_proj.out_features, mlp.act_fn
    fast = SiluMul(inter)

    def slow(gu: torch.Tensor) -> torch.Tensor:
        return fn(gu[..., :inter]) * gu[..., inter:]
    gu = _probe(2 * inter, *like)
    return fast if torch.equal(fast(gu), slow(gu)) else slow


def _rope_exact(p: LayerPlan, rope_fn: Callable, rotary: nn.Module, dtype: torch.dtype,
                device: torch.device) -> bool:
    x = _probe(p.qk_heads * p.head_dim, dtype, device).view(1, PROBE_ROWS, p.qk_heads, p.head_dim)
    pos = torch.tensor([[0, 1, 7, 100, 1000]], device=device)
    cos, sin = rotary(x, pos)
    if cos.shape[-1] != p.head_dim or p.head_dim % 2:
        return False
    heads = x[0].transpose(0, 1)[None]  # [1, heads, T, D], transformers' layout
    want_q, want_k = rope_fn(heads[:, :p.q_heads], heads[:, p.q_heads:], cos, sin)
    got = rope(x[0], _turn(cos, sin)).transpose(0, 1)[None]
    return torch.equal(got[:, :p.q_heads], want_q) and torch.equal(got[:, p.q_heads:], want_k)


def _like(mod: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of a module's inputs: those of its first float tensor."""
    t = next((t for t in (*mod.parameters(), *mod.buffers()) if t.is_floating_point()), None)
    return (t.dtype, t.device) if t is not None else (torch.float32, torch.device("cpu"))


def _probe(width: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """[1, PROBE_ROWS, width] of rows at very different scales, the same every load."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, PROBE_ROWS, width, generator=gen) * torch.logspace(-2, 2, PROBE_ROWS)[:, None]
    return x.to(dtype=dtype, device=device)
