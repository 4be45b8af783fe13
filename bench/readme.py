"""README benchmark blocks, generated from the JSON files committed in bench/results/.

Each block of README.md between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` is replaced by
what NAME renders (the markers stay): `throughput` and `profile` from the newest
`bench/results/<date>-<cpu>.json` that `bench/throughput.py --results` wrote, `prefill` from
`bench/results/prefill.json` (`bench/prefill.py --json`), `speculate` from
`bench/results/speculate.json` (`bench/speculate.py --json`), `compile` from
`bench/results/compile_step.json` (`bench/compile_step.py --json`). Standard library only.

    python bench/readme.py            # rewrite README.md, print the blocks that changed
    python bench/readme.py --check    # change nothing; exit 1 with a diff if a block is stale
"""
from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LLMOS = ("llmos", "llmos_int8", "llmos_int4", "llmos_compiled", "llmos_int8_compiled", "llmos_int4_compiled")
BLOCK = re.compile(r"^<!-- bench:(\w+) -->\n(.*?)^<!-- /bench:\1 -->$", re.M | re.S)
OPEN = re.compile(r"^<!-- bench:(\w+) -->$", re.M)
DASH = "–"


def fmt(x: float | None, digits: int = 1, suffix: str = "", scale: float = 1) -> str:
    """x × scale with `digits` decimals and thousands separators, then suffix; DASH when x is missing."""
    return DASH if x is None else f"{x * scale:,.{digits}f}{suffix}"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, numbers right-aligned (every column but the first)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def shown(path: Path) -> str:
    """The path as the README names it: relative to the repository root when inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def machine_line(m: dict) -> str:
    return (f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('threads', '?')} threads, "
            f"torch {m.get('torch', '?')}; {fmt(m.get('read_gb_s'))} GB/s read, fp32 GEMM "
            f"{fmt(m.get('gemm_16_gflops'))} / {fmt(m.get('gemm_2048_gflops'))} GFLOP/s (16×576×1536 / 2048³).")


def _load(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def latest_throughput(results: Path = RESULTS) -> Path | None:
    """The newest `<YYYY-MM-DD>-<cpu slug>[-N].json` holding "runs" and "machine": by the date in its
    name, then the time it finished (config.finished, where written; runs on several CPUs in one
    day), then the same day's run number, then the name (mtimes mean nothing in a git clone)."""
    found = []
    for path in results.glob("*.json"):
        data = _load(path)
        if not data or "runs" not in data or "machine" not in data:
            continue
        slug = re.sub(r"[^a-z0-9]+", "-", str(data["machine"].get("cpu", "")).lower()).strip("-") or "cpu"
        m = re.fullmatch(rf"(\d{{4}}-\d\d-\d\d)-{re.escape(slug)}(?:-(\d+))?\.json", path.name)
        if m:
            found.append((m[1], str(data.get("config", {}).get("finished", "")), int(m[2] or 1), path.name, path))
    return max(found)[4] if found else None


def targets_table(targets: list[dict]) -> str:
    need = any("need" in t for t in targets)
    rows = [[t["target"], fmt(t.get("value"), 2, "×")] + ([t.get("need", DASH)] if need else [])
            + [{True: "yes", False: "no"}.get(t.get("met"), "not measured")] for t in targets]
    return table(["target", "measured"] + (["needed"] if need else []) + ["met"], rows)


def command(data: dict) -> str:
    """The `bench/throughput.py` command line that wrote data, as far as its config tells."""
    cfg = data.get("config", {})
    args = [f"--systems {','.join(cfg.get('systems', []))}", f"--new-tokens {cfg.get('new_tokens')}",
            f"--concurrency {','.join(map(str, cfg.get('concurrency', [])))}"]
    args += [f"--threads {cfg['threads']}"] if cfg.get("threads", 2) != 2 else []
    args += [f"--repeat {cfg['repeat']}"] if cfg.get("repeat", 1) != 1 else []
    args += ["--no-memory"] if not data.get("memory") and "llmos" in cfg.get("systems", []) else []
    return "python bench/throughput.py " + " ".join(args + ["--profile"] * bool(data.get("profile")) + ["--results"])


def render_throughput(data: dict, source: str) -> str:
    """A row per system and, per process count N, its tok/s, its ratio to the peer at N
    (`hf_generate` at N = 1, `hf_static_batch` above) and, where known, its share of the roofline."""
    runs = {(r["system"], r["concurrency"]): r.get("tok_s") for r in data["runs"]}
    roof = {(r["system"], r["concurrency"]): r.get("fraction") for r in data.get("roofline", [])}
    systems = [s for s in data.get("config", {}).get("systems", []) if any(k[0] == s for k in runs)]
    systems += [s for s, _ in runs if s not in systems]
    counts = sorted({k[1] for k in runs})
    peers = {n: "hf_generate" if n == 1 else "hf_static_batch" for n in counts}
    roofed = [n for n in counts if any(k[1] == n for k in roof)]
    header = ["system"]
    for n in counts:
        header += [f"N={n} tok/s", f"× {peers[n]}"] + (["of roof"] if n in roofed else [])
    rows = []
    for s in systems:
        row = [s]
        for n in counts:
            base, mine = runs.get((peers[n], n)), runs.get((s, n))
            ratio = fmt(mine / base, 2, "×") if base and mine is not None and s.startswith("llmos") else DASH
            row += [fmt(mine), ratio] + ([fmt(roof.get((s, n)), 0, "%", 100)] if n in roofed else [])
        rows.append(row)
    return "\n\n".join([
        f"{machine_line(data['machine'])} From `{source}`: `{command(data)}`.",
        table(header, rows),
        f"tok/s with N processes × {data.get('config', {}).get('new_tokens', '?')} new tokens each; `×` is an llmos "
        "system's tok/s over its peer's at that N (`hf_generate` one request at a time at N = 1, `hf_static_batch` "
        "above); `of roof` is tok/s over the roofline bound for the bytes of its weights as served.",
        targets_table(data.get("targets", []))])


def render_profile(data: dict, source: str) -> str:
    if not data.get("profile"):
        return f"not measured yet (no step profile in `{source}`; `bench/throughput.py --profile --results` adds one)."
    rows = [[p["model"], str(p["processes"]), fmt(p.get("step_ms")), fmt(p.get("gemm_ms")), fmt(p.get("non_gemm_ms")),
             fmt(p.get("non_gemm_share"), 0, "%", 100), {True: "yes", False: "no"}.get(p.get("target_met"), DASH)]
            for p in data["profile"]]
    return f"One steady decode step (`bench/step_profile.py`), from `{source}`:\n\n" + table(
        ["model", "N", "step ms", "GEMM ms", "else ms", "else share", "≤ 25%"], rows)


def render_prefill(data: dict, source: str) -> str:
    done = {r["tokens"] for r in data.get("long_prompt", [])}
    left = ", ".join(f"{n:,}" for n in data.get("args", {}).get("lengths", []) if n not in done)
    why = f"no cells at {left} prompt tokens" if left else "stopped early"
    out = [f"{machine_line(data.get('machine', {}))} From `{source}`"
           + ("." if data.get("complete", True) else f" (incomplete run: {why}).")]
    rows = [[f"{r['tokens']:,}", r["system"], fmt(r.get("ttft_s"), 2), fmt(r.get("vs_hf_forward"), 2, "×")
             if r["system"] != "hf_forward" else "1.00×", fmt(r.get("prefill_tok_s"))] for r in data.get("long_prompt", [])]
    out.append(table(["prompt tokens", "system", "TTFT s", "× hf_forward", "prefill tok/s"], rows))
    rows = []
    for lat in data.get("latency", []):
        steps = lat.get("steps_to_first_token", [])
        beside = f"{lat.get('decoders')} decoding" + (f" + a {n:,}-token prompt" if (n := lat.get("long_prompt")) else "")
        ms = [f"{fmt(lat.get(f'{k}_p50_ms'))} / {fmt(lat.get(f'{k}_p99_ms'))}" for k in ("idle", "loaded", "loaded_in_flight")]
        rows.append([beside, f"{lat.get('arrivals', DASH)} at nice {lat.get('nice', DASH)}", ms[0], ms[1],
                     fmt(lat.get("p99_ratio"), 2, "×"), ms[2], fmt(lat.get("p99_ratio_in_flight"), 2, "×"),
                     ", ".join(f"{k}: {steps.count(k)}" for k in sorted(set(steps))) or DASH])
    if rows:
        out.append(table(["beside", "arrivals", "idle p50 / p99 ms", "loaded p50 / p99 ms", "p99 × idle",
                          "+ step in flight p50 / p99 ms", "p99 × idle", "steps to first token: arrivals"], rows))
    return "\n\n".join(out + [targets_table(data.get("targets", []))])


def render_speculate(data: dict, source: str) -> str:
    rows = [[r["workload"], str(r["procs"]), str(r["tokens"]), fmt(r.get("tok_s_off")), fmt(r.get("tok_s_on")),
             fmt(r.get("speedup"), 2, "×"), fmt(r.get("tokens_per_step"), 2), fmt(r.get("accept_rate"), 0, "%", 100),
             "yes" if r.get("same_tokens") else "NO"] for r in data.get("rows", [])]
    costs = [f"{procs} process{'es' * (procs != '1')}: " + ", ".join(
        f"{rows_} row{'s' * (rows_ != '1')} {ms / per[min(per, key=int)]:.2f}×" for rows_, ms in per.items())
        for procs, per in data.get("row_cost_ms", {}).items() if per]
    head = (f"{machine_line(data['machine'])} " if data.get("machine") else "") + \
        f"From `{source}` ({data.get('model', '?')}, greedy, median of {data.get('repeat', '?')} runs per cell):"
    out = [head, table(["workload", "processes", "tokens", "tok/s off", "tok/s on", "on / off", "tokens per step",
                        "proposals kept", "same tokens"], rows)]
    if costs:
        out.append("A forward pass by rows per process (one decode and rows − 1 proposals, 300 tokens of "
                   "context), over one row: " + "; ".join(costs) + ".")
    return "\n\n".join(out)


def render_compile(data: dict, source: str) -> str:
    rows = [[r["mode"], str(r["procs"]), fmt(r.get("compile_s"), 0), f"{fmt(r.get('eager_median_ms'))} / "
             f"{fmt(r.get('eager_min_ms'))}", f"{fmt(r.get('compiled_median_ms'))} / {fmt(r.get('compiled_min_ms'))}",
             f"{fmt(r.get('speedup_median'), 2, '×')} / {fmt(r.get('speedup_min'), 2, '×')}",
             {True: "yes", False: "no"}.get(r.get("bit_equal"), DASH),
             DASH if r.get("max_abs_diff") is None else f"{r['max_abs_diff']:.2g}"] for r in data.get("rows", [])]
    return "\n\n".join([f"{machine_line(data.get('machine', {}))} From `{source}`:",
                        table(["weights", "processes", "compile s", "eager step ms (median / min)",
                               "compiled step ms (median / min)", "speed-up (median / min)", "bit-equal logits",
                               "largest logit difference"], rows)])


SOURCES = {"prefill": "prefill.json", "speculate": "speculate.json", "compile": "compile_step.json"}  # fixed files


def render(name: str, results: Path = RESULTS, throughput: Path | None = None) -> str:
    """The text of block `name` (without its markers); ValueError for an unknown name."""
    kinds = {"throughput": render_throughput, "profile": render_profile, "prefill": render_prefill,
             "speculate": render_speculate, "compile": render_compile}
    if name not in kinds:
        raise ValueError(f"unknown bench block {name!r} (known: {', '.join(kinds)})")
    path = results / SOURCES[name] if name in SOURCES else throughput or latest_throughput(results)
    data = _load(path) if path else None
    if data is None:
        what = path if path else results / "<date>-<cpu>.json"
        return f"not measured yet (no `{shown(what)}`)."
    return kinds[name](data, shown(path))


def rewrite(text: str, results: Path = RESULTS, throughput: Path | None = None) -> tuple[str, list[str]]:
    """text with every bench block regenerated, and the names of the blocks that changed."""
    if len(OPEN.findall(text)) != len(BLOCK.findall(text)):
        raise ValueError("a <!-- bench:NAME --> marker has no matching <!-- /bench:NAME -->")
    changed: list[str] = []

    def one(m: re.Match[str]) -> str:
        body = f"\n{render(m[1], results, throughput)}\n\n"
        if body != m[2]:
            changed.append(m[1])
        return f"<!-- bench:{m[1]} -->\n{body}<!-- /bench:{m[1]} -->"
    return BLOCK.sub(one, text), changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is stale")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--throughput", type=Path, help="throughput JSON to use instead of the newest")
    ap.add_argument("--results", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    old = args.readme.read_text()
    try:
        new, changed = rewrite(old, args.results, args.throughput)
    except ValueError as e:
        print(f"{args.readme}: {e}", file=sys.stderr)
        return 2
    if args.check:
        if changed:
            diff = difflib.unified_diff(old.splitlines(), new.splitlines(), str(args.readme), "generated", lineterm="")
            print("\n".join(list(diff)[:60]))
            print(f"stale bench blocks: {', '.join(changed)} (run python bench/readme.py)")
        return 1 if changed else 0
    if changed:
        args.readme.write_text(new)
    print(f"{args.readme}: {'rewrote ' + ', '.join(changed) if changed else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
