"""LoRA adapters served over their base model: many adapters and the base in one forward.

A step packs every process's tokens into one row [1, T, H], whatever adapter each process
runs (multi-LoRA serving, as in S-LoRA and LoRAX). For every target layer (q/k/v/o and
gate/up/down projections, whatever module sits there: nn.Linear, a prepacked or an int8
member of a fused group) a forward hook adds `scaling * (x @ A^T) @ B^T` to the rows of
processes on an adapter. The step's adapters are stacked side by side, A as [in, W] and B
as [W, out] (W: the sum of their ranks), and a [T, W] mask keeps each row to its own
adapter's columns, so a layer costs four ops however many adapters share the step. Rows of
base-model processes get exact zeros: their output is what the base alone computes.

Hooks exist only while adapters are loaded, and return at once in a forward whose rows all
belong to the base model. Adapters are read from peft's format (adapter_config.json and
adapter_model.safetensors), which the trainer writes.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# peft features that change what a layer computes beyond x @ A^T @ B^T * scaling.
UNSUPPORTED = ("use_dora", "lora_bias", "fan_in_fan_out", "modules_to_save", "trainable_token_indices",
               "layer_replication", "alora_invocation_tokens", "target_parameters", "use_qalora",
               "rank_pattern", "alpha_pattern")
_KEY = re.compile(r"(?:base_model\.model\.)?(?P<path>.+)\.lora_(?P<ab>[AB])\.weight")
MAX_STACKS = 2  # stacked adapter sets kept: steady decoding reuses the same set step after step


@dataclass
class LoraLayer:
    """One target layer of an adapter: A^T [in, r] and scaling * B^T [r, out]."""

    module: nn.Module
    a_t: torch.Tensor
    b_t: torch.Tensor


@dataclass
class Adapter:
    """A LoRA adapter read for one served model: its rank and its layers by module path."""

    rank: int
    layers: dict[str, LoraLayer]

    @property
    def num_parameters(self) -> int:
        return sum(x.a_t.numel() + x.b_t.numel() for x in self.layers.values())

    @property
    def nbytes(self) -> int:
        return sum(x.a_t.numel() * x.a_t.element_size() + x.b_t.numel() * x.b_t.element_size()
                   for x in self.layers.values())


def read_peft(path: str, model: nn.Module) -> Adapter:
    """Read a peft LoRA adapter directory for `model` (weights cast to its dtype and device).
    ValueError names what this server cannot apply."""
    from safetensors.torch import load_file

    root = Path(path)
    cfg = json.loads((root / "adapter_config.json").read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{path}: a {cfg.get('peft_type')} adapter; only LoRA is served")
    used = [k for k in UNSUPPORTED if cfg.get(k)]
    if used:
        raise ValueError(f"{path}: LoRA with {', '.join(used)} is not supported")
    rank, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scaling = alpha / (math.sqrt(rank) if cfg.get("use_rslora") else rank)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in load_file(str(root / "adapter_model.safetensors")).items():
        m = _KEY.fullmatch(key)
        if m is None:
            raise ValueError(f"{path}: unsupported adapter tensor {key!r}")
        pairs.setdefault(m["path"], {})[m["ab"]] = t
    param = next(model.parameters())
    layers = {}
    for name, ab in pairs.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{path}: the adapter targets {name!r}, which this model does not have") from None
        a, b = ab.get("A"), ab.get("B")
        if a is None or b is None or a.shape[0] != rank or b.shape[1] != rank \
                or a.shape[1] != module.in_features or b.shape[0] != module.out_features:
            raise ValueError(f"{path}: the LoRA weights of {name!r} do not fit it "
                             f"({module.in_features} -> {module.out_features}, rank {rank})")
        layers[name] = LoraLayer(module, a.t().to(param.device, param.dtype).contiguous(),
                                 (b.double() * scaling).t().to(param.device, param.dtype).contiguous())
    if not layers:
        raise ValueError(f"{path}: the adapter holds no LoRA weights")
    return Adapter(rank, layers)


@dataclass
class _Stack:
    """Several adapters side by side: per layer A^T [in, W] and B^T [W, out], with zeros
    where an adapter does not target the layer; column c belongs to adapter columns[c]."""

    index: dict[str, int]
    columns: torch.Tensor  # [W] adapter index of each column
    layers: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]
    dtype: torch.dtype


@dataclass
class _Step:
    layers: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]
    mask: torch.Tensor  # [T, W]: 1 where a row's adapter owns the column


class LoraSet:
    """The adapters loaded over one served model, applied per row by forward hooks.

    Adapters are loaded off the kernel thread while steps run: loading only ever adds
    hooks and cached stacks of other adapters stay valid, so a forward running meanwhile
    computes exactly what it would have without the new adapter."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.adapters: dict[str, Adapter] = {}
        self._hooked: dict[nn.Module, torch.utils.hooks.RemovableHandle] = {}
        self._stacks: dict[tuple[str, ...], _Stack] = {}
        self._step: _Step | None = None  # set only while a forward with adapter rows runs
        apply = self._apply

        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
            return apply(module, args, out)  # a plain function: deep copies of the model (a trainer's twin) share it
        self._hook = hook

    def load(self, name: str, path: str) -> Adapter:
        """Read the peft adapter at `path` for this model and serve it as `name`."""
        adapter = read_peft(path, self.model)
        self._forget(name)
        self.adapters[name] = adapter
        for x in adapter.layers.values():
            if x.module not in self._hooked:
                self._hooked[x.module] = x.module.register_forward_hook(self._hook)
        return adapter

    def remove(self, name: str) -> None:
        if self.adapters.pop(name, None) is None:
            return
        self._forget(name)
        targeted = {x.module for ad in self.adapters.values() for x in ad.layers.values()}
        for module in [m for m in self._hooked if m not in targeted]:
            self._hooked.pop(module).remove()

    @contextmanager
    def applied(self, spans: list[tuple[str, int]]) -> Iterator[None]:
        """Run a forward inside this: `spans` lists (adapter, rows) in row order ("" = the
        base model). Nothing is computed for a forward with no adapter rows."""
        names = tuple(sorted({a for a, _ in spans if a}))
        if not names:
            yield
            return
        missing = [a for a in names if a not in self.adapters]
        if missing:
            raise KeyError(f"LoRA adapter {missing[0]!r} is not loaded on this model")
        stack = self._stack(names)
        rows: list[int] = []
        for a, n in spans:
            rows += [stack.index[a] if a else -1] * n
        owner = torch.tensor(rows, device=stack.columns.device)
        mask = (owner[:, None] == stack.columns[None, :]).to(stack.dtype)
        self._step = _Step(stack.layers, mask)
        try:
            yield
        finally:
            self._step = None

    def _apply(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
        step = self._step
        if step is None or module not in step.layers:
            return None
        a_t, b_t = step.layers[module]
        x = args[0]
        delta = torch.mm(torch.mm(x.reshape(-1, x.shape[-1]), a_t).mul_(step.mask), b_t)
        return out + delta.view(out.shape)

    def _forget(self, name: str) -> None:
        for key in list(self._stacks):
            if name in key:
                self._stacks.pop(key, None)

    def _stack(self, names: tuple[str, ...]) -> _Stack:
        if names in self._stacks:
            return self._stacks[names]
        ads = [self.adapters[a] for a in names]
        widths = [ad.rank for ad in ads]
        total = sum(widths)
        some = next(iter(ads[0].layers.values())).a_t
        columns = torch.tensor([i for i, w in enumerate(widths) for _ in range(w)], device=some.device)
        layers: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        for path in dict.fromkeys(p for ad in ads for p in ad.layers):
            mod = next(ad.layers[path].module for ad in ads if path in ad.layers)
            a_cat = some.new_zeros(mod.in_features, total)
            b_cat = some.new_zeros(total, mod.out_features)
            at = 0
            for ad, w in zip(ads, widths):
                if path in ad.layers:
                    a_cat[:, at:at + w] = ad.layers[path].a_t
                    b_cat[at:at + w] = ad.layers[path].b_t
                at += w
            layers[mod] = (a_cat, b_cat)
        if len(self._stacks) >= MAX_STACKS:
            self._stacks.pop(next(iter(self._stacks)))
        self._stacks[names] = _Stack({a: i for i, a in enumerate(names)}, columns, layers, some.dtype)
        return self._stacks[names]
