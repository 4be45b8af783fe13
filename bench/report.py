"""Printing and saving benchmark results: rich tables, ratios, targets and the JSON file."""
from __future__ import annotations

import json
import platform
from pathlib import Path
from statistics import mean

import torch
from rich.console import Console
from rich.table import Table

from bench.common import MODEL, RunResult
from bench.memory import MEMORY_TARGET

BASELINE = "llmos"
TARGETS = [  # (name, concurrency, system, peer system, minimum system/peer tok/s)
    ("llmos ≥ 1.2× hf_static_batch at 16 processes", 16, "llmos", "hf_static_batch", 1.2),
    ("llmos ≥ 0.95× hf_generate at 1 process", 1, "llmos", "hf_generate", 0.95),
    ("llmos_daemon ≥ 0.9× llmos in-process at 16 processes", 16, "llmos_daemon", "llmos", 0.9),
    ("llmos_http ≥ 0.9× llmos in-process at 16 processes", 16, "llmos_http", "llmos", 0.9),
    ("llmos_int8 ≥ 2.5× hf_generate (fp32) at 1 process", 1, "llmos_int8", "hf_generate", 2.5),
    ("llmos_int8 ≥ 3× hf_static_batch (fp32) at 16 processes", 16, "llmos_int8", "hf_static_batch", 3.0),
]


def _fmt(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def print_setup(console: Console, args, bench) -> None:
    counts = [len(p) for p in bench.prompt_ids]
    console.print(f"[bold]llmos throughput[/] · model {MODEL} ({bench.path}) · torch {torch.__version__} · "
                  f"{args.threads} threads · {platform.processor() or platform.machine()}")
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


def print_results(console: Console, results: list[RunResult]) -> None:
    t = Table(title="Throughput (N requests arriving together, each generating new_tokens)")
    t.add_column("system", no_wrap=True)
    for col in ("N", "new", "tok/s", "TTFT p50 ms", "TTFT p99 ms", "wall s", "llmos ×"):
        t.add_column(col, justify="right")
    for r in sorted(results, key=lambda r: (r.concurrency, r.system != BASELINE)):
        base = _find(results, BASELINE, r.concurrency)
        rel = ratio(base.tok_s, r.tok_s) if base else None
        t.add_row(r.system, str(r.concurrency), str(r.new_tokens), _fmt(r.tok_s), _fmt(r.ttft_p50_ms, 0),
                  _fmt(r.ttft_p99_ms, 0), _fmt(r.wall_s, 2), "" if r.system == BASELINE else _fmt(rel, 2) + "×")
    console.print(t)
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
        a, b = _find(results, system, n), _find(results, peer, n)
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


def write_json(path: Path, args, results: list[RunResult], memory: dict, targets: list[dict]) -> None:
    data = {
        "runs": [r.as_json() for r in results],
        "ratios": ratios(results),
        "memory": memory,
        "targets": targets,
        "config": {"model": MODEL, "threads": args.threads, "new_tokens": args.new_tokens,
                   "concurrency": args.concurrency, "systems": args.systems, "torch": torch.__version__},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
