"""Journal cost: the same work in the in-process kernel with and without the crash-safe journal.

N processes each generate --new-tokens tokens (greedy, EOS ignored), alternating journal off
and on for --rounds rounds on one kernel, so both modes see the same machine state. The journal
is the daemon's own: a SQLite file in a temp dir fed by the kernel's JournalTap.

    python bench/journal.py                       # tiny random model: the journal's own overhead
    python bench/journal.py --model smollm2-135m  # the real default model (from the model store)
    python bench/journal.py --json bench/results/journal.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.common import QUESTIONS, chat, default_store  # noqa: E402


def make_kernel(args: argparse.Namespace):
    from llmos.drivers import open_driver
    from llmos.kernel import ROOT, Kernel, KernelConfig
    from llmos.kernel.models import ModelStore

    k = Kernel(open_driver("cpu", threads=args.threads), KernelConfig(), ModelStore(args.store))
    if args.model == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from tiny import tiny_model, tiny_tokenizer
        return k, k.adopt_model("tiny", tiny_model(), tiny_tokenizer()).name
    return k, k.load_model(ROOT, args.model).name


def run_once(k, model: str, args: argparse.Namespace, journal_dir: Path | None) -> dict:
    """Spawn the processes, step until idle; figures for this run."""
    from llmos.journal_db import attach
    from llmos.kernel import ROOT, SpawnSpec, StopRules

    journal = attach(k, journal_dir / "journal.db", interval_s=args.interval_ms / 1000) if journal_dir else None
    steps0 = k.steps
    t0 = time.perf_counter()
    procs = [k.spawn(ROOT, SpawnSpec(model, messages=chat(QUESTIONS[i % len(QUESTIONS)]),
                     stop=StopRules(max_tokens=args.new_tokens, ignore_eos=True))) for i in range(args.procs)]
    k.run_until_idle()
    wall = time.perf_counter() - t0
    out = {"journal": journal is not None, "wall_s": wall, "steps": k.steps - steps0,
           "tokens": sum(p.usage.generated_tokens for p in procs)}
    if journal is not None:
        flush0 = time.perf_counter()
        journal.flush()
        k.listeners.clear()
        journal.close()
        db = journal_dir / "journal.db"
        out.update(commits=journal.stats.commits, commit_s=journal.stats.seconds,
                   flush_after_s=time.perf_counter() - flush0,
                   journal_bytes=sum(f.stat().st_size for f in db.parent.glob("journal.db*")))
    for p in procs:
        k.reap(ROOT, p.pid)
    out["tok_s"], out["steps_s"] = out["tokens"] / wall, out["steps"] / wall
    return out


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    for on in (False, True):
        mine = [r for r in runs if r["journal"] == on]
        row = {"journal": "on" if on else "off", "runs": len(mine),
               "tok_s": sum(r["tok_s"] for r in mine) / len(mine),
               "steps_s": sum(r["steps_s"] for r in mine) / len(mine)}
        if on:
            row.update({k: sum(r[k] for r in mine) / len(mine)
                        for k in ("commits", "commit_s", "flush_after_s", "journal_bytes")})
        rows.append(row)
    rows[1]["ratio"] = rows[1]["tok_s"] / rows[0]["tok_s"]
    return rows


def print_table(console: Console, rows: list[dict], args: argparse.Namespace) -> None:
    t = Table(title=f"journal cost · {args.model} · {args.procs} processes × {args.new_tokens} tokens · "
                    f"commit every {args.interval_ms:g} ms")
    for col in ("journal", "tok/s", "steps/s", "× off", "commits/run", "ms in commits", "journal KiB"):
        t.add_column(col, justify="right")
    for r in rows:
        on = r["journal"] == "on"
        t.add_row(r["journal"], f"{r['tok_s']:,.1f}", f"{r['steps_s']:,.1f}", f"{r.get('ratio', 1.0):.3f}",
                  f"{r['commits']:.0f}" if on else "—", f"{r['commit_s'] * 1000:.1f}" if on else "—",
                  f"{r['journal_bytes'] / 1024:,.0f}" if on else "—")
    console.print(t)
    console.print("[dim]timings on a busy machine are indicative only; compare within one run[/]")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="'tiny' (random, built here) or a model the store can load")
    ap.add_argument("--procs", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="pairs of runs, journal off then on")
    ap.add_argument("--interval-ms", type=float, default=50.0, help="the journal's commit interval")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--store", type=Path, default=default_store())
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console()
    k, model = make_kernel(args)
    run_once(k, model, argparse.Namespace(**{**vars(args), "procs": 2, "new_tokens": 4}), None)  # warm-up
    runs = []
    with tempfile.TemporaryDirectory(prefix="llmos-journal-bench-") as tmp:
        for i in range(args.rounds):
            (Path(tmp) / f"round{i}").mkdir()
            runs.append(run_once(k, model, args, None))
            runs.append(run_once(k, model, args, Path(tmp) / f"round{i}"))
    rows = summarize(runs)
    print_table(console, rows, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": rows,
                                         "runs": runs}, indent=2))
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
