"""Printing and saving benchmark results: rich tables, ratios, targets and the JSON file."""
from __future__ import annotations

import json
import re
from datetime import date, datetime, timezone
from pathlib import Path
from statistics import mean

import torch
from rich.console import Console
from rich.table import Table

from bench.common import MODEL, RunResult
from bench.memory import MEMORY_TARGET

BASELINE = "llmos"
TARGETS = [  # (name, concurrency, system or the systems to take the fastest of, peer, least tok/s ratio): #14's
    ("fastest mode ({}) ≥ 5× hf_generate (fp32) at 1 process", 1,
     ("llmos_int4", "llmos_int4_compiled", "llmos_int8", "llmos_int8_compiled", "llmos", "llmos_compiled"),
     "hf_generate", 5.0),
    ("int8 ({}) ≥ 3.5× hf_generate (fp32) at 1 process", 1, ("llmos_int8", "llmos_int8_compiled"), "hf_generate", 3.5),
    ("fp32 ({}) ≥ 2× hf_generate at 1 process", 1, ("llmos", "llmos_compiled"), "hf_generate", 2.0),
    ("int8 ({}) ≥ 4.5× hf_static_batch (fp32) at 16 processes", 16, ("llmos_int8", "llmos_int8_compiled"),
     "hf_static_batch", 4.5),
    ("llmos_daemon ≥ 0.9× llmos in-process at 16 processes", 16, "llmos_daemon", "llmos", 0.9),
    ("llmos_http ≥ 0.9× llmos in-process at 16 processes", 16, "llmos_http", "llmos", 0.9),
]


def _fmt(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def print_setup(console: Console, args, bench) -> None:
    counts = [len(p) for p in bench.prompt_ids]
    console.print(f"[bold]llmos throughput[/] · model {MODEL} ({bench.path}) · torch {torch.__version__} · "
                  f"{args.threads} threads")
    if bench.machine is not None:
        console.print(f"machine: {bench.machine.line()}")
    console.print(f"systems: {', '.join(args.systems)} · concurrency {args.concurrency} × {args.new_tokens} "
                  "new tokens (greedy, EOS ignored)")
    console.print(f"prompt tokens of the {len(counts)} chat requests: min {min(counts)}, mean {mean(counts):.1f}, "
                  f"max {max(counts)}: {counts}")
    for n in args.concurrency:
        batch = [counts[i] for i in bench.batch(n)]
        console.print(f"  N={n}: {sum(batch)} prompt tokens (min {min(batch)}, max {max(batch)})")


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _find(results: list[RunResult], system: str, n: int) -> RunResult | None:
    return next((r for r in results if r.system == system and r.concurrency == n), None)


def ratios(results: list[RunResult]) -> list[dict]:
    """llmos / each peer at each concurrency: tok/s (higher is better) and TTFT p50 (lower is better)."""
    out = []
    for r in results:
        base = _find(results, BASELINE, r.concurrency)
        if r.system != BASELINE and base is not None:
            out.append({"concurrency": r.concurrency, "peer": r.system, "tok_s_ratio": ratio(base.tok_s, r.tok_s),
                        "ttft_p50_ratio": ratio(base.ttft_p50_ms, r.ttft_p50_ms)})
    return out


def weight_bytes(system: str) -> int:
    """Bytes a weight of the system's model takes (its Linear layers read every decode step)."""
    return 0.5 if "int4" in system else 1 if "int8" in system else 4


def rooflines(results: list[RunResult], machine, params: int, served: dict[str, float] | None = None) -> list[dict]:
    """Each run's tok/s as a fraction of the bound the machine's limits give its model at N;
    `served`: bytes a weight of a system's model as it is served, where that is known (an fp32
    model on its 4- or 8-bit blocks, still multiplied in floats)."""
    from bench.machine import roofline

    out = []
    for r in results:
        nbytes = (served or {}).get(r.system)
        roof = roofline(machine, params, nbytes or weight_bytes(r.system), r.concurrency,
                        integer="int8" in r.system)  # int4's blocks are multiplied in floats
        out.append({"system": r.system, "concurrency": r.concurrency, "weight_bytes": roof.weight_bytes,
                    "memory_ms": roof.memory_ms, "compute_ms": roof.compute_ms, "bound": roof.bound,
                    "bound_tok_s": roof.bound_tok_s, "fraction": ratio(r.tok_s, roof.bound_tok_s)})
    return out


def print_results(console: Console, results: list[RunResult], roofs: list[dict] | None = None) -> None:
    t = Table(title="Throughput (N requests arriving together, each generating new_tokens)")
    t.add_column("system", no_wrap=True)
    cols = ["N", "new", "tok/s", "TTFT p50 ms", "TTFT p99 ms", "wall s", "llmos ×"]
    cols += ["roof tok/s", "of roof"] if roofs else []
    for col in cols:
        t.add_column(col, justify="right")
    roof = {(x["system"], x["concurrency"]): x for x in roofs or []}
    for r in sorted(results, key=lambda r: (r.concurrency, r.system != BASELINE)):
        base = _find(results, BASELINE, r.concurrency)
        rel = ratio(base.tok_s, r.tok_s) if base else None
        row = [r.system, str(r.concurrency), str(r.new_tokens), _fmt(r.tok_s), _fmt(r.ttft_p50_ms, 0),
               _fmt(r.ttft_p99_ms, 0), _fmt(r.wall_s, 2), "" if r.system == BASELINE else _fmt(rel, 2) + "×"]
        x = roof.get((r.system, r.concurrency))
        if roofs:
            row += [f"{_fmt(x['bound_tok_s'], 0)} ({x['bound'][:3]})", f"{x['fraction']:.0%}"] if x else ["", ""]
        t.add_row(*row)
    console.print(t)
    if roofs:
        console.print("roof: N ÷ the least step time, max(weights ÷ read bandwidth, 2·weights·N FLOPs ÷ the 2048³ "
                      "GEMM peak); mem/com says which bound binds. Attention and the KV cache are left out.")
    rs = ratios(results)
    if rs:
        t = Table(title="llmos / peer (tok/s: higher is better for llmos; TTFT p50: lower is better for llmos)")
        for col in ("N", "peer", "tok/s ratio", "TTFT p50 ratio"):
            t.add_column(col, justify="right")
        for x in rs:
            t.add_row(str(x["concurrency"]), x["peer"], _fmt(x["tok_s_ratio"], 2) + "×",
                      _fmt(x["ttft_p50_ratio"], 2) + "×")
        console.print(t)
    for r in results:
        for note in r.notes:
            console.print(f"[yellow]note[/] {r.system} × {r.concurrency}: {note}")


def print_memory(console: Console, m: dict) -> None:
    n = m["processes"]
    t = Table(title=f"KV memory: {n} processes sharing a {m['system_prompt_tokens']}-token system prompt "
                    f"({m['new_tokens']} new tokens each)")
    t.add_column("what")
    t.add_column("value", justify="right")
    mib = 1 << 20
    rows = [
        ("page size (tokens) / bytes per page", f"{m['page_size']} / {m['page_bytes']:,}"),
        ("pool pages", f"{m['pool_pages']:,}"),
        ("prompt tokens (common prefix)", f"{min(m['prompt_tokens'])}–{max(m['prompt_tokens'])} "
                                          f"({m['common_prefix_tokens']})"),
        ("peak pages, 1 process", f"{m['pages_1']} ({m['kv_bytes_1'] / mib:.1f} MiB)"),
        (f"peak pages, {n} processes spawned together, nothing cached",
         f"{m[f'pages_{n}']} ({m[f'kv_bytes_{n}'] / mib:.1f} MiB)"),
        (f"ratio {n}/1 (target ≤ {m['target_ratio']})", _fmt(m["ratio"], 2) + "×"),
        ("… again with the system prompt already cached: pages / ratio",
         f"{m[f'pages_{n}_warm']} / {_fmt(m['ratio_warm'], 2)}×"),
        (f"peak pages sampled only after steps, 1 / {n}", f"{m['pages_after_step_1']} / {m[f'pages_after_step_{n}']}"),
        (f"least possible (all resident, full prefix pages shared): 1 / {n} / ratio",
         f"{m['ideal_pages_1']} / {m[f'ideal_pages_{n}']} / {_fmt(m['ideal_ratio'], 2)}×"),
        (f"measured / least possible ({n} processes)", _fmt(m["vs_least"], 2) + "×"),
        (f"pages holding the shared prompt prefix: 1 / {n} processes / ratio",
         f"{m['prefix_pages_1']} / {m[f'prefix_pages_{n}']} / {_fmt(m['prefix_ratio'], 2)}×"),
        (f"pages without any sharing ({n} × private)", str(m["unshared_pages"])),
        (f"peak shared pages / prefix-cache hits ({n} processes; warm)",
         f"{m[f'peak_shared_pages_{n}']} / {m[f'prefix_cached_tokens_{n}']:,} tokens; "
         f"{m[f'prefix_cached_tokens_{n}_warm']:,} tokens"),
        ("RSS with the model loaded / peak RSS during the check (psutil)",
         f"{m['rss_loaded_bytes'] / mib:,.0f} MiB / {m['peak_rss_bytes'] / mib:,.0f} MiB"),
        ("max RSS of the process so far (getrusage)", f"{m['max_rss_bytes'] / mib:,.0f} MiB"),
    ]
    for row in rows:
        t.add_row(*row)
    console.print(t)


def check_targets(results: list[RunResult], memory: dict) -> list[dict]:
    out = []
    for name, n, system, peer, need in TARGETS:
        if isinstance(system, tuple):  # the fastest of these that ran
            found = [r for r in (_find(results, s, n) for s in system) if r is not None]
            a = max(found, key=lambda r: r.tok_s, default=None)
            name = name.format(a.system if a else " or ".join(system))
        else:
            a = _find(results, system, n)
        b = _find(results, peer, n)
        value = ratio(a.tok_s, b.tok_s) if a and b else None
        out.append({"target": name, "value": value, "need": f"≥ {need}", "met": None if value is None else value >= need})
    value = memory.get("ratio")
    out.append({"target": f"memory: {memory.get('processes', 16)} sharing processes ≤ {MEMORY_TARGET}× one",
                "value": value, "need": f"≤ {MEMORY_TARGET}", "met": None if value is None else value <= MEMORY_TARGET,
                "floor": memory.get("ideal_ratio")})
    return out


def print_targets(console: Console, targets: list[dict]) -> None:
    t = Table(title="Targets")
    for col in ("target", "measured", "needed", "met"):
        t.add_column(col)
    for x in targets:
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: "[dim]not measured[/]"}[x["met"]]
        t.add_row(x["target"], _fmt(x["value"], 2), x["need"], met)
    console.print(t)
    for x in targets:
        if x.get("floor") is not None and x["floor"] > MEMORY_TARGET:
            console.print(f"[yellow]note:[/] the memory ratio cannot get much below {x['floor']:.2f} at this page size: "
                          "every process holds at least one private page (its own question and output) beside "
                          "the shared system-prompt pages. Measured / least possible is the kernel's own share.")


def write_json(path: Path, args, results: list[RunResult], memory: dict, targets: list[dict],
               machine: dict | None = None, roofs: list[dict] | None = None, profile: list[dict] | None = None,
               kernels: dict | None = None) -> None:
    data = {
        "machine": machine or {},
        "runs": [r.as_json() for r in results],
        "ratios": ratios(results),
        "roofline": roofs or [],
        "profile": profile or [],
        "kernels": kernels or {},
        "memory": memory,
        "targets": targets,
        "config": {"model": MODEL, "threads": args.threads, "new_tokens": args.new_tokens, "repeat": args.repeat,
                   "concurrency": args.concurrency, "systems": args.systems, "torch": torch.__version__,
                   "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def results_path(root: Path, cpu: str, day: date | None = None) -> Path:
    """bench/results/<date>-<cpu>.json (a later run of the same day gets -2, -3, ...)."""
    slug = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-") or "cpu"
    stem = f"{(day or date.today()).isoformat()}-{slug}"
    path, n = root / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = root / f"{stem}-{n}.json"
    return path


def check_plot(ap, path: Path | None) -> None:
    """Refuse --plot at once where matplotlib is missing, not after the run: it is a bench extra."""
    if path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            ap.error(f"--plot {path} needs matplotlib, a bench extra: pip install -e '.[bench]'")


def plot(path: Path, results: list[RunResult], roofs: list[dict] | None = None, title: str = "") -> None:
    """tok/s against concurrency, one line per system, with the roofline of each weight format dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system in dict.fromkeys(r.system for r in results):
        rs = sorted((r for r in results if r.system == system), key=lambda r: r.concurrency)
        ax.plot([r.concurrency for r in rs], [r.tok_s for r in rs], marker="o", label=system)
    bounds: dict[int, dict[int, float]] = {}
    for x in roofs or []:
        bounds.setdefault(x["weight_bytes"], {})[x["concurrency"]] = x["bound_tok_s"]
    for (nbytes, pts), style in zip(sorted(bounds.items(), reverse=True), ("--", ":", "-.")):
        ns = sorted(pts)
        ax.plot(ns, [pts[n] for n in ns], linestyle=style, color="grey", alpha=0.8,
                label=f"roofline, {nbytes / 1e6:.0f} MB of weights")
    ax.set_xscale("log", base=2)
    ns = sorted({r.concurrency for r in results})
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_yscale("log")
    ax.set_xlabel("concurrent processes (N)")
    ax.set_ylabel("generated tok/s")
    save_plot(fig, ax, path, title or f"{MODEL} throughput")


def save_plot(fig, ax, path: Path, title: str) -> None:
    """Title, grid and legend on ax, then fig written to path as a PNG (and closed)."""
    import matplotlib.pyplot as plt

    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
