"""Pruning the default model (drivers/prune.py): perplexity, speed and size against the unpruned
model, all in one run.

    python bench/prune.py                          # MLP fractions 0.1, 0.25, 0.5
    python bench/prune.py --heads 0.33 --int8      # also a third of the heads; int8 copies too
    python bench/prune.py --json bench/results/prune.json

Each variant is pruned from a fresh copy (calibrated on drivers/probe.py's CALIBRATION_TEXT),
scored for perplexity on bench/data/quality.txt as bench/quality.py does (windows of 512 tokens,
drivers/probe.py `perplexity`), then served by one in-process kernel (`Kernel.adopt_model`, the
CPU driver's prepacked path). Throughput: N chat requests spawned at once, each generating
--new-tokens tokens (greedy, EOS ignored), at 1 and 16 processes; the variants take turns in
every repeat and the median of --repeat runs is reported, since the machine is shared.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from datetime import date
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.common import MODEL, QUESTIONS, chat, default_store, drive  # noqa: E402

TEXT = Path(__file__).resolve().parent / "data" / "quality.txt"


def make_variant(base, tok, fraction: float, heads: float, int8: bool) -> tuple[torch.nn.Module, dict]:
    """A pruned (and maybe quantized) copy of `base`, with its perplexity and size."""
    from llmos.drivers import probe, prune, quant

    model = copy.deepcopy(base)
    row = {"variant": label(fraction, heads, int8), "fraction": fraction, "heads": heads, "int8": int8}
    t0 = time.perf_counter()
    if fraction or heads:
        r = prune.prune_model(model, fraction, tok(probe.CALIBRATION_TEXT)["input_ids"], heads=heads)
        row.update(intermediate=r.intermediate_after, attn_heads=r.heads_after, kv_heads=r.kv_heads_after,
                   prune_s=time.perf_counter() - t0)
    else:
        cfg = model.config
        row.update(intermediate=cfg.intermediate_size, attn_heads=cfg.num_attention_heads,
                   kv_heads=cfg.num_key_value_heads, prune_s=0.0)
    row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    if int8:
        quant.quantize_model(model, "int8", calibration=tok(probe.CALIBRATION_TEXT)["input_ids"])
    row["ppl"] = probe.perplexity(model, tok(TEXT.read_text())["input_ids"])
    row["size_mb"] = quant.model_bytes(model) / 1e6
    return model, row


def label(fraction: float, heads: float, int8: bool) -> str:
    parts = [f"MLP -{fraction:g}" if fraction else "", f"heads -{heads:g}" if heads else ""]
    name = ", ".join(p for p in parts if p) or "unpruned"
    return name + (" int8" if int8 else "")


def run_once(k, name: str, n: int, new_tokens: int, tick) -> float:
    """tok/s of n chat requests spawned together on model `name`."""
    from llmos.kernel import ROOT, SpawnSpec, StopRules

    t0 = time.perf_counter()
    procs = [k.spawn(ROOT, SpawnSpec(name, messages=chat(QUESTIONS[i % len(QUESTIONS)]),
                                     stop=StopRules(max_tokens=new_tokens, ignore_eos=True))) for i in range(n)]
    done = drive(k, procs, tick)
    wall = time.perf_counter() - t0
    for p in procs:
        k.reap(ROOT, p.pid)
    return done / wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fractions", default="0.1,0.25,0.5", help="MLP channel fractions to remove")
    ap.add_argument("--heads", type=float, default=0.0, help="fraction of attention heads to remove too")
    ap.add_argument("--int8", action="store_true", help="add an int8 copy of every variant")
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per cell; the median is reported")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--store", type=Path, default=default_store())
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmos.drivers import open_driver
    from llmos.kernel import Kernel, KernelConfig
    from llmos.kernel.models import ModelStore

    transformers.logging.set_verbosity_error()
    console = Console(width=None if sys.stdout.isatty() else 160)
    fractions = [float(f) for f in args.fractions.split(",") if f]
    conc = [int(c) for c in args.concurrency.split(",") if c]
    specs = [(0.0, 0.0)] + [(f, args.heads) for f in fractions]
    specs = [(f, h, q) for f, h in specs for q in ((False, True) if args.int8 else (False,))]
    path = ModelStore(args.store).resolve(MODEL)
    tok = AutoTokenizer.from_pretrained(str(path))
    base = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="sdpa").eval()
    console.print(f"[bold]pruning {MODEL}[/] ({path}) · torch {torch.__version__} · {args.threads} threads · "
                  f"{len(specs)} variants · concurrency {conc} × {args.new_tokens} new tokens · median of {args.repeat}")
    # One process in flight per request, its prompt and output: a pool that never preempts.
    k = Kernel(open_driver("cpu", threads=args.threads), KernelConfig(kv_pages=max(conc) * 16 + 64))
    rows: list[dict] = []
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*cols, console=console, refresh_per_second=2) as bar:
        job = bar.add_task("pruning and scoring", total=len(specs))
        for i, (f, h, q) in enumerate(specs):
            phase(console, bar, job, f"pruning and scoring: {label(f, h, q)}")
            model, row = make_variant(base, tok, f, h, q)
            k.adopt_model(f"v{i}", model, tok)
            rows.append(row)
            bar.advance(job)
        total = len(specs) * args.repeat * sum(conc) * args.new_tokens
        job = bar.add_task("decoding", total=total + len(specs) * args.new_tokens)
        tick = lambda n: bar.advance(job, n)  # noqa: E731
        for i in range(len(specs)):  # warm-up: the first steps of a shape pay for allocations
            run_once(k, f"v{i}", 1, args.new_tokens, tick)
        runs: dict[tuple[int, int], list[float]] = {}
        for rep in range(args.repeat):
            for n in conc:
                for i, row in enumerate(rows):
                    phase(console, bar, job, f"decoding: repeat {rep + 1}, {n} processes, {row['variant']}")
                    runs.setdefault((i, n), []).append(run_once(k, f"v{i}", n, args.new_tokens, tick))
    for i, row in enumerate(rows):
        for n in conc:
            row[f"tok_s_{n}"] = statistics.median(runs[(i, n)])
            row[f"tok_s_{n}_runs"] = runs[(i, n)]
    show(console, rows, conc, len(tok(TEXT.read_text())["input_ids"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"date": date.today().isoformat(), "model": MODEL, "threads": args.threads,
                "new_tokens": args.new_tokens, "repeat": args.repeat, "concurrency": conc,
                "calibration": "drivers/probe.py CALIBRATION_TEXT", "ppl_text": "bench/data/quality.txt"}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        console.print(f"wrote {args.json}")
    return 0


def phase(console: Console, bar: Progress, job, text: str) -> None:
    """Name the phase on the bar; off a terminal, where the bar is not drawn, as a line too."""
    bar.update(job, description=text)
    if not console.is_terminal:
        console.print(f"{time.strftime('%H:%M:%S')} {text}")


def show(console: Console, rows: list[dict], conc: list[int], tokens: int) -> None:
    ref = rows[0]
    t = Table(title=f"{MODEL} pruned: perplexity on bench/data/quality.txt ({tokens} tokens), decode speed, size")
    heads = ["variant", "MLP ch.", "heads (KV)", "params M", "size MB", "ppl", "× ppl"]
    for n in conc:
        heads += [f"tok/s ×{n}", "× speed"]
    for h in heads:
        t.add_column(h, justify="left" if h == "variant" else "right")
    for r in rows:
        cells = [r["variant"], str(r["intermediate"]), f"{r['attn_heads']} ({r['kv_heads']})", f"{r['params_m']:.1f}",
                 f"{r['size_mb']:.0f}", f"{r['ppl']:.2f}", f"{r['ppl'] / ref['ppl']:.3f}"]
        for n in conc:
            cells += [f"{r[f'tok_s_{n}']:.1f}", f"{r[f'tok_s_{n}'] / ref[f'tok_s_{n}']:.2f}×"]
        t.add_row(*cells)
    console.print(t)


if __name__ == "__main__":
    sys.exit(main())
