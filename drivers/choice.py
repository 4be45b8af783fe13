"""Measured kernel choice: which GEMM form serves each Linear shape, timed on this CPU at load.

The same products run at very different speeds on different CPUs of one kind (oneDNN's
prepacked fp32 weights won 3x over MKL on an AMD EPYC, nothing at one row on an Intel Xeon),
so the forms are timed here rather than assumed. The forms of a group:

    fp32         "dot" (llmos::linear_dot on weights packed for it; the default where the fused ops
                 are built), "blocks" (llmos::block_dot: the same bits from the 4- or 8-bit blocks
                 the weights were dequantized from, where every weight of a shape is one:
                 drivers/blocks.py), "packed" (oneDNN on prepacked weights; the default without
                 the fused ops), "mkl" (the weights as stored)
    bf16         "packed", "mkl"
    int8         "qlinear" (oneDNN on prepacked int8; the default), "int_mm" (torch._int_mm),
                 "dot" (llmos::int8_dot on weights packed for it, where the fused ops are built with VNNI)

For every shape ([out, in] of a fused group, per mode):
1. Exactness first (drivers/measure.py): a form whose rows change with the call's row count
   is served padded to the row count from which they do not, or not at all.
2. Every form is timed at 1, 4, 16 and 64 rows in passes over all the model's groups in order, so
   weights stream from memory as in a step. The machine is shared and noisy: ROUNDS rounds with
   the forms' order alternating, and per round the ratio of a form's time to the default's.
   Timing stops after MIN_ROUNDS once the choice is the same at every round's extremes; else
   the upper quartile of the ratios decides (a form must have won in three rounds of four),
   and a form other than the default must win by MARGIN.
3. A shape gets the form with the best geometric mean of its ratios over the row buckets.
   Forms that give bit-identical results (the int8 ones: their products are exact integers)
   may also split by rows: a bucket where the other form takes at most 80% of the time goes
   to it, and the group keeps both forms (one more int8 copy of the shape's weights). fp32
   forms round differently, so switching between them would make a row depend on its batch.
4. The choice is cached in <cache_dir>/kernels.json under the CPU, the torch version and the
   thread count, so a second load does not measure again (drivers/choice_cache.py).
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from llmos.drivers import blocks, ext, measure, packed
from llmos.drivers.choice_cache import KernelCache, Machine
from llmos.drivers.fuse import FusedGroup, FusedLinear
from llmos.drivers.int4 import Int4Group
from llmos.drivers.quant import Int8Group

# The first form a mode offers is its default: another must beat it by MARGIN. fp32's is llmos's own
# product: batch-invariant by construction, and at least as fast wherever it was measured (two EPYCs).
FORMS = {"fp32": ("dot", "blocks", "packed", "mkl"), "bf16": ("packed", "mkl"), "int8": ("qlinear", "int_mm", "dot")}
SPLIT = ("int8",)  # modes whose forms may split by rows: identical by construction (exact integer products)
BUCKETS = ((1, 1), (2, 4), (5, 16), (17, None))  # row counts (first, last); None: no end
BUCKET_ROWS = (1, 4, 16, 64)  # the row count timed for each bucket
MARGIN = 0.10  # a non-default form must take at most 90% of the default's time
SPLIT_MARGIN = 0.20  # and a second form kept for some row counts, at most 80% of the first's there
ROUNDS, MIN_ROUNDS = 7, 3  # timing stops after MIN_ROUNDS once every round agrees on the choice

Timer = Callable[[str, str, int], float]  # (shape key, form, rows) -> seconds of one pass


@dataclass
class ShapeChoice:
    """How one shape is served, and the measurements behind it (all JSON-plain)."""

    table: list[list]  # [[last row count or None, form], ...] in row order
    pads: dict[str, int | None]  # form -> rows it is padded to; None: not batch-invariant, not used
    ratios: dict[str, list[float]] = field(default_factory=dict)  # form -> time / first form's, per bucket
    ms: dict[str, list[float]] = field(default_factory=dict)  # form -> median ms of a pass, per bucket
    identical: bool = False
    why: str = ""
    changed: dict[str, list[int]] = field(default_factory=dict)  # form -> row counts its rows differed at
    rounds: int = 0  # timing rounds taken

    def forms(self) -> list[str]:
        return list(dict.fromkeys(form for _, form in self.table))

    def form_at(self, rows: int) -> str:
        return next(f for last, f in self.table if last is None or rows <= last)


class RowsGroup(FusedGroup):
    """Bit-identical forms of the same weights, each serving calls of a range of row counts."""

    def __init__(self, table: list[tuple[int | None, FusedGroup]]) -> None:
        super().__init__(table[0][1].size)
        self.limits = [last for last, _ in table]
        self.forms = nn.ModuleList(form for _, form in table)

    def form_at(self, rows: int) -> FusedGroup:
        """The form that serves a call of `rows` rows."""
        return next((form for last, form in zip(self.limits, self.forms) if last is None or rows <= last),
                    self.forms[-1])

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return self.form_at(x.numel() // x.shape[-1]).compute(x)


def shape_key(group: FusedGroup) -> str | None:
    """'<mode> <out>x<in>' of a group whose form is chosen here; None for others (int4's blocks)."""
    if isinstance(group, packed.MklGroup) and not isinstance(group, Int4Group):
        mode = {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(group.dtype)
        return f"{mode} {group.shape[0]}x{group.shape[1]}" if mode else None
    if type(group) is Int8Group and group.weight_t is not None:
        return f"int8 {group.weight_t.shape[1]}x{group.weight_t.shape[0]}"
    return None


def candidates(group: FusedGroup) -> dict[str, FusedGroup]:
    """Every form of `group`, built (the group itself is its unconverted form)."""
    if isinstance(group, packed.MklGroup):
        forms = {"packed": packed.PackedGroup(group), "mkl": group}
        if group.dtype == torch.float32 and ext.available():
            forms["dot"] = packed.DotGroup(group)
            found = blocks.BlockGroup.of(group)
            if found is not None:
                forms["blocks"] = found
        return forms
    forms = {"qlinear": _make(group, "qlinear", sole=False), "int_mm": group}
    if ext.available() and torch.ops.llmos.int8_dot_fast():
        forms["dot"] = _make(group, "dot", sole=False)
    return forms


def serve(model: nn.Module, cache_dir: str | Path | None = None, machine: Machine | None = None,
          timer: Timer | None = None) -> str:
    """Give every Linear group of `model` its fastest batch-invariant form on this CPU, in place,
    measuring the shapes the cache does not know. Returns a one-line summary of the choice."""
    t0 = time.perf_counter()
    cache = KernelCache(cache_dir, machine or Machine.here())
    known = {k: c for k, c in ((k, _parse(c)) for k, c in cache.known().items())
             if c and (ext.available() or not {"dot", "blocks"} & set(c.forms()))}  # a form this process lacks: measure again
    final: set[int] = set()

    def at_once(g: packed.MklGroup) -> FusedGroup:  # a shape the cache knows: no fused copy kept
        f = _build(g, known, {}) or g
        if f is not g:
            final.add(id(f))
        return f
    if packed.supported(model):
        packed.fuse_model(model, at_once)
    served = _served_groups(model)
    classes: dict[str, list[FusedGroup]] = {}
    for g in served:
        key = shape_key(g)
        if key is not None:
            classes.setdefault(key, []).append(g)
    chosen = {k: known[k] for k in classes if k in known}
    missing = [k for k in classes if k not in chosen]
    cands: dict[int, dict[str, FusedGroup]] = {}
    if missing:
        cands = {id(g): candidates(g) for k in missing for g in classes[k]}
        for k in missing:  # a form is offered to a shape only where each of its groups has it
            shared = set.intersection(*(set(cands[id(g)]) for g in classes[k]))
            for g in classes[k]:
                cands[id(g)] = {f: c for f, c in cands[id(g)].items() if f in shared}
        chosen.update(_measure(served, {k: classes[k] for k in missing}, cands, timer))
        cache.put({k: asdict(chosen[k]) for k in missing})
    packed.swap_groups(model, lambda g: None if id(g) in final else _build(g, chosen, cands))
    cands.clear()
    packed.own_memory(model)
    return summary(chosen, classes, time.perf_counter() - t0 if missing else None)


def _measure(served: list[FusedGroup], classes: dict[str, list[FusedGroup]],
             cands: dict[int, dict[str, FusedGroup]], timer: Timer | None) -> dict[str, ShapeChoice]:
    """Probe and time the forms of `classes` (shape key -> its groups) and decide each."""
    probes = {k: measure.probe(cands[id(gs[0])], int(k.split("x")[-1]), k.split()[0]) for k, gs in classes.items()}
    for k, gs in classes.items():
        for g in gs:
            for form, f in cands[id(g)].items():
                measure.set_pad(f, probes[k].pads[form])
    mode = {k: k.split()[0] for k in classes}
    forms = {k: tuple(f for f in FORMS[mode[k]] if probes[k].pads.get(f) is not None) for k in classes}
    ident = {k: probes[k].identical and mode[k] in SPLIT for k in classes}

    def choose(k: str, times: dict, stat: Callable = statistics.median) -> ShapeChoice:
        return decide(FORMS[mode[k]], probes[k].pads, ident[k], ratios_of(times[k], stat))

    def settled(times: dict) -> bool:  # the choice would be the same at every round's extremes
        return all(len({str(choose(k, times, stat).table) for stat in (min, max, _upper_quartile)}) == 1
                   for k in classes)
    times = ({k: measure.injected(timer, k, forms[k], BUCKET_ROWS, ROUNDS) for k in classes} if timer else
             measure.passes(served, classes, cands, forms, BUCKET_ROWS, ROUNDS, MIN_ROUNDS, settled))
    out = {}
    for k in classes:  # where rounds disagree, a challenger must have won in three rounds of four
        c = out[k] = choose(k, times, _upper_quartile)
        c.ms = {f: [round(1e3 * statistics.median(t), 4) for t in ts] for f, ts in times[k].items()}
        c.changed = probes[k].changed
        c.rounds = min((len(t) for ts in times[k].values() for t in ts), default=0)
    return out


def _parse(entry: dict) -> ShapeChoice | None:
    try:
        return ShapeChoice(**entry)
    except TypeError:  # an entry written by other code: measure again
        return None


def _served_groups(model: nn.Module) -> list[FusedGroup]:
    seen: dict[int, FusedGroup] = {}
    for m in model.modules():
        if isinstance(m, FusedLinear):
            seen.setdefault(id(m.group), m.group)
    return list(seen.values())


def _build(g: FusedGroup, chosen: dict[str, ShapeChoice], cands: dict[int, dict[str, FusedGroup]]) -> FusedGroup | None:
    key = shape_key(g)
    if key not in chosen:
        return None
    c = chosen[key]
    made = cands.get(id(g)) or {}
    forms = {}
    for form in c.forms():
        f = made.get(form)
        if f is None:
            f = _make(g, form, sole=len(c.forms()) == 1)
        measure.set_pad(f, c.pads.get(form))
        forms[form] = f
    if len(forms) == 1:
        return next(iter(forms.values()))
    return RowsGroup([(last, forms[form]) for last, form in c.table])


def _make(g: FusedGroup, form: str, sole: bool) -> FusedGroup:
    if form == "packed":
        return packed.PackedGroup(g)
    if form == "dot" and isinstance(g, packed.MklGroup):
        return packed.DotGroup(g)
    if form == "blocks":  # weights that are no longer block values (a changed model): dot's same bits
        return blocks.BlockGroup.of(g) or packed.DotGroup(g)
    if form in ("qlinear", "dot"):  # int8: oneDNN's layout or llmos::int8_dot's
        twin = g if sole else copy.deepcopy(g)
        if form == "qlinear":
            twin.prepack()
        else:
            twin.dot_pack()
        return twin
    return g  # mkl, int_mm: the group as it is


def ratios_of(times: dict[str, list[list[float]]], stat: Callable = statistics.median) -> dict[str, list[float]]:
    """Per bucket, `stat` of the per-round ratios of each form's time to the first form's:
    times[form][bucket] holds one figure per round, rounds paired across forms."""
    if not times:
        return {}
    base = next(iter(times.values()))
    return {f: [stat([a / b for a, b in zip(ts[i], base[i]) if b > 0] or [1.0]) for i in range(len(ts))]
            for f, ts in times.items()}


def decide(forms: tuple[str, ...], pads: dict[str, int | None], identical: bool,
           ratios: dict[str, list[float]]) -> ShapeChoice:
    """The choice for one shape from its probe (`pads`: None for a form that is not batch-
    invariant) and its time ratios per bucket to the first usable form's."""
    default = forms[0]
    eligible = [f for f in forms if pads.get(f) is not None]
    if not eligible:
        return ShapeChoice([[None, default]], {default: 1}, ratios, identical=identical,
                           why="no form keeps rows independent of their batch here; the default as it is")
    base = eligible[0]
    ratios = {f: ratios.get(f) or [1.0] * len(BUCKETS) for f in eligible}
    best = min(eligible, key=lambda f: _gmean(ratios[f]))
    gain = 1 - _gmean(ratios[best]) / _gmean(ratios[base])
    single = best if gain >= MARGIN else base
    why = (f"{single}: the fastest, by {gain:.0%} over {base} (mean over the row buckets)" if single != base else
           f"{base}: {best} was faster by only {gain:.0%}, under the {MARGIN:.0%} margin" if best != base else
           f"{base}: the fastest (mean over the row buckets)")
    table: list[list] = [[None, single]]
    if identical and len(eligible) > 1:  # a bucket may go to another form, if that pays its memory
        per = [min(eligible, key=lambda f: ratios[f][i]) for i in range(len(BUCKETS))]
        per = [f if ratios[f][i] <= (1 - SPLIT_MARGIN) * ratios[single][i] else single for i, f in enumerate(per)]
        if len(set(per)) > 1:
            table, why = _merge(per), f"identical results: each row bucket's fastest by {SPLIT_MARGIN:.0%}"
    if base != default and default in pads:  # (a default not offered here, unbuilt, is not named)
        why += f"; {default} excluded: its rows change with the batch"
    return ShapeChoice(table, {f: pads[f] for f in eligible}, ratios, identical=identical, why=why)


def _merge(per_bucket: list[str]) -> list[list]:
    table: list[list] = []
    for (_, last), form in zip(BUCKETS, per_bucket):
        if table and table[-1][1] == form:
            table[-1][0] = last
        else:
            table.append([last, form])
    return table


def _upper_quartile(xs: list[float]) -> float:
    return sorted(xs)[math.ceil(0.75 * len(xs)) - 1]


def _gmean(xs: list[float]) -> float:
    return math.exp(sum(math.log(max(x, 1e-12)) for x in xs) / len(xs))


def summary(chosen: dict[str, ShapeChoice], classes: dict[str, list[FusedGroup]], seconds: float | None) -> str:
    """One line: which form serves how many shapes of each mode, how much faster than the other
    form it is at 1 and 16 rows (median time ratios), what padding and splits by rows cost, and
    whether it was measured now or read from the cache."""
    plans: dict[tuple[str, str], list[str]] = {}
    for k in classes:
        table = chosen[k].table
        plan = ", ".join(f"{f} to {last} row{'s' * (last != 1)}" if last is not None else f"{f} above"
                         for last, f in table) if len(table) > 1 else table[0][1]
        plans.setdefault((k.split()[0], plan), []).append(k)
    parts, modes = [], set()
    for (mode, plan), keys in plans.items():
        c0 = chosen[keys[0]]
        other = _runner_up(c0)
        if other is None:
            notes = ["the only batch-invariant form"]
        else:
            one, sixteen = (_gmean([_speedup(chosen[k], b, other) for k in keys]) for b in (0, 2))
            pad = c0.pads.get(other) or 1
            notes = [f"x{one:.2f} vs {other}{f' (padded to {pad} rows)' if pad > 1 else ''} at 1 row, "
                     f"x{sixteen:.2f} at 16"]
        notes += sorted({f"{f} padded to {p} rows for {k.split()[1]}" for k in keys
                         for f, p in chosen[k].pads.items() if p and p > 1 and f in chosen[k].forms()})
        extra = sum(len(classes[k]) * math.prod(int(v) for v in k.split()[1].split("x"))  # int8: a byte a weight
                    for k in keys if len(chosen[k].forms()) > 1)
        if extra:
            notes.append(f"both forms kept: +{extra / 1e6:.0f} MB")
        n = len(keys)
        parts.append(f"{plan} for {n if mode in modes else f'{n} {mode} shape' + 's' * (n != 1)} ({'; '.join(notes)})")
        modes.add(mode)
    when = f"measured in {seconds:.1f}s" if seconds is not None else "cached"
    return ", ".join(parts) + f" [{when}]" if parts else ""


def _runner_up(c: ShapeChoice) -> str | None:
    """The form that comes closest to the one serving one row (by its mean over the buckets)."""
    others = [f for f in c.ratios if f != c.form_at(1)]
    return min(others, key=lambda f: _gmean(c.ratios[f])) if others else None


def _speedup(c: ShapeChoice, bucket: int, other: str) -> float:
    """`other`'s time over the served form's at a bucket (>1: the served form is faster); where
    `other` serves that bucket itself (a split by rows), the fastest form that does not."""
    served = c.form_at(BUCKET_ROWS[bucket])
    others = [r[bucket] for f, r in c.ratios.items() if f != served]
    theirs = c.ratios[other][bucket] if other != served and other in c.ratios else min(others, default=1.0)
    mine = c.ratios[served][bucket]
    return theirs / mine if mine > 0 else 1.0
