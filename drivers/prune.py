"""Structured pruning of Llama-family models (Llama, Qwen2, Mistral): a smaller dense model.

`prune_model` removes a fraction of every MLP's intermediate channels (rows of gate_proj and
up_proj, columns of down_proj) and, optionally, of the attention heads (rows of q_proj, and of
k_proj and v_proj with whole KV groups; columns of o_proj). The layers are rebuilt as plain
`nn.Linear` of the new shapes and the config is updated, so the result runs faster, saves with
`save_pretrained`, loads back with `from_pretrained` and can be quantized (drivers/quant.py).
Every layer loses the same number of channels and heads: transformers configs hold one
`intermediate_size` and one head count for all layers.

Which channels stay is decided by activation-aware importance measured on calibration text,
as Wanda scores weights (|W| × ||X||₂ of the input activations): a channel's score is the sum
of its column's Wanda scores in the layer that reads it. An MLP channel c scores
||X_c||₂ · Σ_i |W_down[i, c]| (X: down_proj's input over the calibration tokens); a query head
sums that over its head_dim columns of o_proj; a KV group sums its query heads.

Heads go either as whole KV groups (each with its query heads: the KV cache shrinks too) or as
the same number of query heads inside every group (the GQA ratio stays uniform). "auto" takes
whichever removes a count nearest the asked fraction, heads inside groups on a tie: on the
default model a third of the heads cost 4.4x its perplexity that way and 14x as a whole group.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from llmos.drivers.lean import FAMILIES

MAX_FRACTION = 0.9
HEAD_UNITS = ("auto", "group", "head")


class PruneError(ValueError):
    """A fraction out of range or a model that cannot be pruned; the message names the limit."""


@dataclass
class PruneReport:
    """What pruning did to a model (the same to every layer)."""

    fraction: float            # of MLP channels asked
    heads: float               # of query heads asked
    layers: int
    intermediate_before: int
    intermediate_after: int
    heads_before: int
    heads_after: int
    kv_heads_before: int
    kv_heads_after: int
    head_unit: str             # "group", "head" or "" (no head removed)
    params_before: int
    params_after: int
    calibration_tokens: int

    def summary(self) -> str:
        """One line for a load's answer and the kernel log."""
        heads = (f", heads {self.heads_before}->{self.heads_after} (KV {self.kv_heads_before}->{self.kv_heads_after}, "
                 f"by {self.head_unit})" if self.head_unit else "")
        return (f"pruned MLP channels {self.intermediate_before}->{self.intermediate_after} per layer{heads}: "
                f"{self.params_before / 1e6:.1f}M -> {self.params_after / 1e6:.1f}M parameters")


def check(model: nn.Module, fraction: float, heads: float = 0.0, head_unit: str = "auto") -> list[nn.Module]:
    """The decoder layers to prune; PruneError names what is out of range or unsupported."""
    for what, v in (("fraction", fraction), ("heads", heads)):
        if not (isinstance(v, (int, float)) and 0.0 <= v <= MAX_FRACTION):
            raise PruneError(f"prune {what} must be in [0, {MAX_FRACTION}], got {v!r}")
    if head_unit not in HEAD_UNITS:
        raise PruneError(f"unknown head unit {head_unit!r}; choose one of {', '.join(HEAD_UNITS)}")
    cfg = getattr(model, "config", None)
    family = getattr(cfg, "model_type", None)
    if family not in FAMILIES:
        raise PruneError(f"cannot prune a {family or type(model).__name__} model: pruning supports the "
                         f"{', '.join(FAMILIES)} families (gate/up/down MLPs)")
    layers = list(getattr(getattr(model, "model", None), "layers", None) or [])
    if not layers:
        raise PruneError(f"cannot prune {type(model).__name__}: no decoder layers at model.layers")
    for i, layer in enumerate(layers):
        problem = _layer_problem(layer)
        if problem:
            raise PruneError(f"cannot prune {type(model).__name__}: layer {i} {problem}; pruning supports "
                             "nn.Linear gate_proj/up_proj/down_proj and q/k/v/o_proj (prune before quantizing)")
    return layers


def prune_model(model: nn.Module, fraction: float, calibration_ids: list[int], heads: float = 0.0,
                head_unit: str = "auto") -> PruneReport:
    """Remove `fraction` of every MLP's intermediate channels and `heads` of its query heads,
    in place, keeping those most important on `calibration_ids`; see the module's docstring."""
    layers = check(model, fraction, heads, head_unit)
    cfg = model.config
    inter, nheads, nkv = layers[0].mlp.down_proj.in_features, cfg.num_attention_heads, cfg.num_key_value_heads
    drop_mlp = min(_round(fraction * inter), inter - 1)
    unit, groups_out, per_group_out = _head_plan(heads, nheads, nkv, head_unit)
    before = sum(p.numel() for p in model.parameters())
    report = PruneReport(fraction, heads, len(layers), inter, inter - drop_mlp, nheads, nheads, nkv, nkv, "",
                         before, before, len(calibration_ids))
    if not drop_mlp and not unit:
        return report
    if not calibration_ids:
        raise PruneError("pruning needs calibration text to measure importance: got no tokens")
    norms = input_norms(model, calibration_ids, [m for layer in layers for m in (layer.mlp.down_proj,
                                                                                  layer.self_attn.o_proj)])
    for layer in layers:
        if drop_mlp:
            scores = channel_scores(layer.mlp.down_proj, norms[layer.mlp.down_proj])
            _prune_mlp(layer.mlp, _top(scores, inter - drop_mlp))
        if unit:
            a = layer.self_attn
            heads_score = channel_scores(a.o_proj, norms[a.o_proj]).view(nheads, -1).sum(1)
            _prune_heads(a, _keep_heads(heads_score, nkv, groups_out, per_group_out))
    cfg.intermediate_size = inter - drop_mlp
    if unit:
        cfg.head_dim = layers[0].self_attn.head_dim
        cfg.num_key_value_heads = nkv - groups_out
        cfg.num_attention_heads = (nheads // nkv - per_group_out) * cfg.num_key_value_heads
    report.heads_after, report.kv_heads_after = cfg.num_attention_heads, cfg.num_key_value_heads
    report.head_unit = unit
    report.params_after = sum(p.numel() for p in model.parameters())
    return report


def prune_loaded(model: nn.Module, tokenizer, fraction: float, heads: float = 0.0,
                 head_unit: str = "auto") -> tuple[PruneReport, float]:
    """What a load does: prune calibrated on drivers/probe.py's CALIBRATION_TEXT, and measure
    perplexity on its PROBE_TEXT, pruned over unpruned (the second value)."""
    from llmos.drivers import probe

    check(model, fraction, heads, head_unit)
    ids = tokenizer(probe.PROBE_TEXT)["input_ids"]
    before = probe.perplexity(model, ids)
    report = prune_model(model, fraction, tokenizer(probe.CALIBRATION_TEXT)["input_ids"], heads, head_unit)
    return report, probe.perplexity(model, ids) / before


@torch.no_grad()
def input_norms(model: nn.Module, ids: list[int], linears: list[nn.Linear]) -> dict[nn.Linear, torch.Tensor]:
    """||X_j||₂ over every calibration token of each input channel j of each of `linears`
    (the text is run in windows of the model's context at most)."""
    sums: dict[nn.Linear, torch.Tensor] = {}

    def record(mod: nn.Module, args: tuple) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        sq = x.pow(2).sum(0)
        sums[mod] = sums[mod] + sq if mod in sums else sq

    window = min(512, int(getattr(model.config, "max_position_embeddings", 512)))
    dev = next(model.parameters()).device
    hooks = [m.register_forward_pre_hook(record) for m in linears]
    try:
        for s in range(0, len(ids), window):
            model(input_ids=torch.tensor([ids[s:s + window]], device=dev), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {m: s.sqrt() for m, s in sums.items()}


def channel_scores(reader: nn.Linear, norms: torch.Tensor) -> torch.Tensor:
    """Each input channel's importance to the layer that reads it: Σ_i |W[i, j]| · ||X_j||₂."""
    return reader.weight.detach().float().abs().sum(0) * norms.to(reader.weight.device)


def _round(x: float) -> int:
    """Half up (Python's round() takes halves to even: a quarter of 2 groups would be none)."""
    return math.floor(x + 0.5)


def _top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` highest scores, in their original order (ties: the lower index)."""
    order = torch.argsort(scores, descending=True, stable=True)[:keep]
    return order.sort().values


def _head_plan(heads: float, nheads: int, nkv: int, unit: str) -> tuple[str, int, int]:
    """(unit, KV groups to remove, query heads to remove per remaining group)."""
    if heads <= 0:
        return "", 0, 0
    per = nheads // nkv
    groups = min(_round(heads * nkv), nkv - 1)
    inside = min(_round(heads * per), per - 1)
    if unit == "auto":
        want = heads * nheads
        unit = "group" if abs(groups * per - want) < abs(inside * nkv - want) else "head"
    if unit == "group":
        return ("group", groups, 0) if groups else ("", 0, 0)
    return ("head", 0, inside) if inside else ("", 0, 0)


def _keep_heads(scores: torch.Tensor, nkv: int, groups_out: int, per_group_out: int) -> torch.Tensor:
    """The query heads to keep, in order: whole groups by their summed score, or the best
    heads inside every group."""
    per = scores.numel() // nkv
    by_group = scores.view(nkv, per)
    if groups_out:
        kept = _top(by_group.sum(1), nkv - groups_out)
        return (kept[:, None] * per + torch.arange(per)).flatten()
    keep = [g * per + _top(by_group[g], per - per_group_out) for g in range(nkv)]
    return torch.cat(keep)


def _prune_mlp(mlp: nn.Module, keep: torch.Tensor) -> None:
    mlp.gate_proj = _rows(mlp.gate_proj, keep)
    mlp.up_proj = _rows(mlp.up_proj, keep)
    mlp.down_proj = _cols(mlp.down_proj, keep)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = keep.numel()


def _prune_heads(a: nn.Module, heads: torch.Tensor) -> None:
    d = a.head_dim
    nheads = a.q_proj.out_features // d
    nkv = a.k_proj.out_features // d
    per = nheads // nkv
    groups = heads.view(-1).div(per, rounding_mode="floor").unique_consecutive()
    span = lambda idx: (idx[:, None] * d + torch.arange(d)).flatten()  # noqa: E731 - heads to channels
    a.q_proj, a.o_proj = _rows(a.q_proj, span(heads)), _cols(a.o_proj, span(heads))
    a.k_proj, a.v_proj = _rows(a.k_proj, span(groups)), _rows(a.v_proj, span(groups))
    a.num_key_value_groups = heads.numel() // groups.numel()


def _rows(lin: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    return _linear(lin, lin.weight[keep.to(lin.weight.device)], None if lin.bias is None else
                   lin.bias[keep.to(lin.weight.device)])


def _cols(lin: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    return _linear(lin, lin.weight[:, keep.to(lin.weight.device)], lin.bias)


def _linear(old: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.requires_grad_(old.weight.requires_grad)
    return new


def _layer_problem(layer: nn.Module) -> str:
    mlp, attn = getattr(layer, "mlp", None), getattr(layer, "self_attn", None)
    for owner, names in ((mlp, ("gate_proj", "up_proj", "down_proj")), (attn, ("q_proj", "k_proj", "v_proj", "o_proj"))):
        for n in names:
            mod = getattr(owner, n, None)
            if type(mod) is not nn.Linear:
                return f"has {type(mod).__name__ if mod is not None else 'no'} {n}"
    if not hasattr(mlp, "act_fn") or not hasattr(attn, "head_dim"):
        return "is not a gate/up/down MLP with head_dim attention"
    if mlp.gate_proj.out_features != mlp.down_proj.in_features or mlp.up_proj.out_features != mlp.down_proj.in_features:
        return "has gate/up/down projections of mismatched sizes"
    if attn.q_proj.out_features % attn.head_dim or attn.k_proj.out_features % attn.head_dim:
        return "has q/k projections that are not whole heads"
    return ""

