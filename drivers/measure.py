"""What drivers/choice.py measures of a GEMM form: whether its rows depend on their batch, and its time.

Batch invariance: whether a form computes a row the same whatever rows share its call.

Kernels pick their blocking by the call's shape, and some sum a row's products in another order
when few rows come: on an AMD EPYC, MKL's sgemm does at 1-3, 5-7 and 9-11 rows (two threads),
and oneDNN at one row of a [576 x 1536] product. A process's tokens would then depend on how
many others share its step. Each form is probed on one group of a shape: its rows computed in
calls of PROBE_ROWS rows must equal the same rows of a call of REF_ROWS (bit for bit). A form
that differs only below some row count is padded with zero rows up to it where it can be
(MklGroup and PackedGroup have `min_rows`) and at most MAX_PAD; otherwise it is not used.
"""
from __future__ import annotations

from dataclasses import dataclass

import time
from collections.abc import Callable

import torch

from llmos.drivers.fuse import FusedGroup
from llmos.drivers.quant import Int8Group

REF_ROWS = 256  # the kernel's token budget per step: the largest call a step makes
PROBE_ROWS = (*range(1, 18), 24, 31, 32, 33, 48, 64, 100, 128, 200, 255)
MAX_PAD = 16
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32}


@dataclass
class Probe:
    """What the probe found for one shape's forms."""

    pads: dict[str, int | None]  # form -> rows its calls are padded to (1: none); None: not invariant
    changed: dict[str, list[int]]  # form -> the row counts at which its rows differed, unpadded
    identical: bool  # whether every usable form computes the same bits


def set_pad(form: FusedGroup, pad: int | None) -> None:
    if hasattr(form, "min_rows"):
        form.min_rows = pad or 1


def input_spec(group: FusedGroup) -> tuple[int, torch.dtype]:
    """The input width and dtype a group's calls take in a served model."""
    if isinstance(group, Int8Group):
        return group.in_features, torch.float32
    dtype = getattr(group, "dtype", torch.float32)
    return group.shape[1], dtype if isinstance(dtype, torch.dtype) else torch.float32


@torch.inference_mode()
def probe(forms: dict[str, FusedGroup], width: int, mode: str, seed: int = 0) -> Probe:
    """Probe each of one group's forms (its pad is left set as found)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, REF_ROWS, width, generator=gen).to(DTYPES[mode])
    pads: dict[str, int | None] = {}
    changed: dict[str, list[int]] = {}
    refs = {}
    for name, f in forms.items():
        set_pad(f, 1)
        ref = refs[name] = f.compute(x)
        bad = changed[name] = [n for n in PROBE_ROWS if not torch.equal(f.compute(x[:, :n]), ref[:, :n])]
        pad = max(bad) + 1 if bad else 1
        if pad > MAX_PAD or (pad > 1 and not hasattr(f, "min_rows")):
            pads[name] = None
            continue
        set_pad(f, pad)
        ok = all(torch.equal(f.compute(x[:, :n]), ref[:, :n]) for n in range(1, pad))
        pads[name] = pad if ok else None
        set_pad(f, pads[name])
    usable = [refs[n] for n in forms if pads[n] is not None]
    identical = all(torch.equal(r, usable[0]) for r in usable[1:])
    return Probe(pads, changed, identical)


def injected(timer: Callable[[str, str, int], float], key: str, forms: tuple[str, ...],
             rows: tuple[int, ...], rounds: int) -> dict[str, list[list[float]]]:
    """Timings from `timer` (key, form, rows) -> seconds: tests give a synthetic machine."""
    return {f: [[timer(key, f, n) for _ in range(rounds)] for n in rows] for f in forms}


@torch.inference_mode()
def passes(served: list[FusedGroup], classes: dict[str, list[FusedGroup]], cands: dict[int, dict[str, FusedGroup]],
           forms: dict[str, tuple[str, ...]], rows: tuple[int, ...], rounds: int, min_rounds: int | None = None,
           settled: Callable[[dict], bool] | None = None) -> dict:
    """Seconds of each class's groups per round, for each form at each row count:
    out[key][form][i] lists one figure per round for rows[i]. A pass calls every group of the
    model in forward order, as a step does, so weights stream from memory; the calls of the
    measured classes are timed one by one and summed per class (other groups, and classes with
    fewer forms, run untimed). The forms alternate their order from round to round, so drift
    of a shared machine's load hits both alike; a warm-up pass first (oneDNN builds its kernels
    on first use). After `min_rounds`, timing stops once `settled(out)` says so."""
    key_of = {id(g): k for k, gs in classes.items() for g in gs}
    out = {k: {f: [[] for _ in rows] for f in forms[k]} for k in classes}
    inputs: dict[tuple, torch.Tensor] = {}
    width = max((len(f) for f in forms.values()), default=0)

    def one_pass(index: int, i: int, record: bool) -> None:
        sums: dict[str, float] = {}
        for g in served:
            k = key_of.get(id(g))
            timed = k is not None and index < len(forms[k])
            f = cands[id(g)][forms[k][index]] if timed else g
            x = _input(inputs, g, rows[i])
            t = time.perf_counter()
            f.compute(x)
            if timed:
                sums[k] = sums.get(k, 0.0) + time.perf_counter() - t
        if record:
            for k, s in sums.items():
                out[k][forms[k][index]][i].append(s)

    for i in range(len(rows)):
        for index in range(width):
            one_pass(index, i, record=False)
    for r in range(rounds):
        for i in range(len(rows)):
            for index in (range(width) if r % 2 == 0 else reversed(range(width))):
                one_pass(index, i, record=True)
        if settled is not None and r + 1 >= (min_rounds or rounds) and settled(out):
            break
    return out


def _input(inputs: dict, group: FusedGroup, rows: int) -> torch.Tensor:
    width, dtype = input_spec(group)
    x = inputs.get((width, dtype, rows))
    if x is None:
        x = inputs[(width, dtype, rows)] = torch.randn(1, rows, width).to(dtype)
    return x
