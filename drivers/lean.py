"""A direct forward pass for Llama-shaped decoders (Llama, Qwen2, Mistral families).

transformers' generic forward costs a few milliseconds a step on the CPU beyond its tensor
math: per-layer decorators, keyword plumbing, output recording, mask building, a norm over
every prompt row although only the sampled rows need logits. At batch 1 that is a third of
a decode step. This forward computes the same numbers (so the tokens are the same) and
skips the rest. Models of any other shape keep transformers' own forward (drivers/runner.py
decides).

With no forward hooks to honour (no LoRA adapter loaded: drivers/lora.py hooks the
projections), a step goes straight to each fused projection group's product and does the
small work in fewer ops (drivers/lean_ops.py): one norm op, RoPE over the query and key
heads at once, SiLU·mul in place. Each of those is checked at load to give the module's
bits exactly; where one does not, the module itself runs.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import nn

from llmos.drivers import ext, lean_ops
from llmos.drivers.attention import PagedBatch, paged_attention

FAMILIES = ("llama", "qwen2", "mistral")
Layers = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, PagedBatch], torch.Tensor]  # (h, cos, sin, batch) -> h
_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj", "act_fn")


class LeanDecoder:
    """Runs a supported transformers causal LM over one packed paged batch, sharing its modules."""

    def __init__(self, model: nn.Module) -> None:
        inner = model.model
        self.embed, self.layers, self.norm = inner.embed_tokens, list(inner.layers), inner.norm
        self.rotary, self.lm_head = inner.rotary_emb, model.lm_head
        attn = self.layers[0].self_attn
        self.rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        self.windows = [_window(layer.self_attn, model.config) for layer in self.layers]
        self.direct = lean_ops.plan(self.layers, self.rope, self.rotary, self.norm, self.lm_head)

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """Whether `model` has exactly the structure this forward reproduces."""
        cfg = getattr(model, "config", None)
        inner = getattr(model, "model", None)
        if getattr(cfg, "model_type", None) not in FAMILIES or inner is None:
            return False
        if not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
            return False
        if not hasattr(model, "lm_head") or getattr(cfg, "num_hidden_layers", -1) != len(inner.layers):
            return False
        return all(_layer_ok(layer) for layer in inner.layers) and \
            hasattr(sys.modules[type(inner.layers[0].self_attn).__module__], "apply_rotary_pos_emb")

    def __call__(self, ids: torch.Tensor, pos: torch.Tensor, batch: PagedBatch, keep: torch.Tensor,
                 hooked: bool = False, layers: Layers | None = None) -> torch.Tensor:
        """ids, pos: [1, T]; keep: rows that need logits → logits [len(keep), vocab]. `hooked`:
        some module has forward hooks (LoRA) that the direct path would skip. `layers`: runs the
        decoder layers of the direct path in place of run_layers (drivers/compiled.py)."""
        if not hooked:
            return self._direct(ids, pos, batch, keep, layers)
        h = self.embed(ids)
        cos, sin = self.rotary(h, pos)
        shape = (1, ids.shape[1], -1)
        for layer, window in zip(self.layers, self.windows):
            a = layer.self_attn
            x = layer.input_layernorm(h)
            heads = (1, ids.shape[1], -1, a.head_dim)
            q = a.q_proj(x).view(heads).transpose(1, 2)
            k = a.k_proj(x).view(heads).transpose(1, 2)
            v = a.v_proj(x).view(heads).transpose(1, 2)
            q, k = self.rope(q, k, cos, sin)
            o, _ = paged_attention(a, q, k, v, None, scaling=a.scaling, sliding_window=window, llmos_batch=batch)
            h = h + a.o_proj(o.reshape(shape))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        # The final norm is per row: norming only the kept rows gives the same numbers.
        return self.lm_head(self.norm(h[:, keep]))[0]

    def _direct(self, ids: torch.Tensor, pos: torch.Tensor, batch: PagedBatch, keep: torch.Tensor,
                layers: Layers | None = None) -> torch.Tensor:
        d = self.direct
        h = self.embed(ids)
        cos, sin = self.rotary(h, pos)
        if layers is not None:
            h = layers(h, cos, sin, batch)
        else:
            h = self.run_layers(d.layers, h, cos, sin, d.turn(cos, sin), batch)
        return d.head(d.norm(h[:, keep]))[0]

    def run_layers(self, plans: list[lean_ops.LayerPlan], h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   turn: lean_ops.Turn | None, batch: PagedBatch) -> torch.Tensor:
        """The decoder layers of the direct path over hidden states h [1, T, hidden], each layer
        as `plans` says (drivers/compiled.py runs it compiled)."""
        n = h.shape[1]
        shape = (1, n, -1)
        for layer, p, window in zip(self.layers, plans, self.windows):
            qkv = p.qkv(p.norm1(h)).view(n, -1, p.head_dim)  # [T, q + k + v heads, D]
            qk = qkv[:, :p.qk_heads]
            if turn is not None:
                qk = lean_ops.rope(qk, turn)
                q, k = qk[:, :p.q_heads].transpose(0, 1)[None], qk[:, p.q_heads:].transpose(0, 1)[None]
            else:
                q = qk[:, :p.q_heads].transpose(0, 1)[None]
                q, k = self.rope(q, qk[:, p.q_heads:].transpose(0, 1)[None], cos, sin)
            v = qkv[:, p.qk_heads:].transpose(0, 1)[None]
            o, _ = paged_attention(layer.self_attn, q, k, v, None, scaling=p.scaling, sliding_window=window,
                                   llmos_batch=batch)
            h = h + p.o(o.reshape(shape))
            h = h + p.down(p.act(p.gate_up(p.norm2(h))))
        return h


def fused_problem(lean: LeanDecoder | None) -> str | None:
    """Why the direct path of `lean` is not built of llmos's fused pieces (the fused RoPE, both
    norms llmos::rms_norm), which the compiled and the stacked decode steps keep as they are;
    None where it is."""
    if lean is None:
        return "not a Llama-shaped model (no direct path)"
    if not ext.available():
        return "the fused ops are not built (make setup)"
    if not lean.direct.fused_rope:
        return "its RoPE is not the fused one"
    for p in lean.direct.layers:
        if not all(isinstance(n, lean_ops.RmsNorm) and n.fused for n in (p.norm1, p.norm2)):
            return "a norm is not RMSNorm as llmos::rms_norm"
    return None


def _layer_ok(layer: nn.Module) -> bool:
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    if attn is None or mlp is None or hasattr(attn, "q_norm") or not hasattr(attn, "scaling"):
        return False
    if not hasattr(attn, "head_dim") or not all(hasattr(attn, n) for n in _ATTN):
        return False
    return all(hasattr(mlp, n) for n in _MLP) and hasattr(layer, "input_layernorm") and \
        hasattr(layer, "post_attention_layernorm")


def _window(attn: nn.Module, config) -> int | None:
    """The sliding window transformers passes this layer's attention (Qwen2 per layer, Mistral
    from the config, Llama none)."""
    if hasattr(attn, "sliding_window"):
        return attn.sliding_window
    return getattr(config, "sliding_window", None)
