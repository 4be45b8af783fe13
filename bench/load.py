"""Load test: many concurrent clients with mixed syscalls against an llmosd with a small KV pool.

    python bench/load.py                         # 200 clients for 60 s on a tiny random model
    python bench/load.py --clients 20 --seconds 10 --kv-pages 16
    python bench/load.py --model smollm2-135m --json load.json

It starts its own daemon (its own state dir and socket), runs bench/loadgen.py's clients
through the asyncio SDK, and reports syscalls per second, p50/p99 latency per syscall kind,
processes completed, lost and failed, and the daemon's peak RSS.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore", category=FutureWarning)

import psutil  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.common import default_store  # noqa: E402
from bench.loadgen import Stats, run_load  # noqa: E402

TINY = "tiny"


def make_tiny_model(root: Path) -> Path:
    """A tiny random llama with its tokenizer, saved as a transformers directory (tests/tiny.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tiny import tiny_model, tiny_tokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = root / "tiny-llama"
    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


class LoadDaemon:
    """An llmosd subprocess of the benchmark's own, with its peak RSS sampled while it runs."""

    def __init__(self, model: str, kv_pages: int, page_size: int, threads: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="llmos-load-"))
        ref = str(make_tiny_model(self.dir)) if model == TINY else model
        self.socket = self.dir / "llmosd.sock"
        cmd = [sys.executable, "-m", "llmos.main", "--state-dir", str(self.dir / "state"), "--socket", str(self.socket),
               "--store", str(default_store()), "--model", ref, "--device", "cpu", "--threads", str(threads),
               "--kv-pages", str(kv_pages), "--page-size", str(page_size), "--grace", "1"]
        self.log = open(self.dir / "llmosd.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True)
        for line in self.proc.stdout:
            if "serving on" in line:
                self.model = line.rsplit("(model ", 1)[1].rstrip(")\n")
                break
        else:
            raise RuntimeError(f"llmosd did not start; see {self.dir / 'llmosd.log'}")
        self.peak_rss = 0

    def sample(self) -> None:
        try:
            self.peak_rss = max(self.peak_rss, psutil.Process(self.proc.pid).memory_info().rss)
        except psutil.Error:
            pass

    async def sample_every(self, seconds: float) -> None:
        while True:
            self.sample()
            await asyncio.sleep(seconds)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(60)


async def measure(d: LoadDaemon, args: argparse.Namespace, console: Console) -> Stats:
    sampler = asyncio.ensure_future(d.sample_every(0.2))
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[calls]} syscalls"),
               TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"{args.clients} clients", total=args.seconds, calls=0)
        t0 = time.monotonic()

        def tick(stats: Stats) -> None:
            progress.update(task, completed=min(time.monotonic() - t0, args.seconds), calls=stats.calls)
        stats = await run_load(f"unix:{d.socket}", d.model, args.clients, args.seconds, args.max_tokens,
                               args.seed, on_call=tick)
    sampler.cancel()
    d.sample()
    return stats


def report(fig: dict, console: Console) -> None:
    table = Table(title="syscall latency")
    for col in ("syscall", "calls", "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "syscall" else "right")
    for kind, v in fig["latency"].items():
        table.add_row(kind, str(v["n"]), f"{v['p50_ms']:.1f}", f"{v['p99_ms']:.1f}")
    console.print(table)
    console.print(f"{fig['syscalls_per_s']:.1f} syscalls/s over {fig['wall_s']:.1f} s; processes: "
                  f"{fig['spawned']} spawned, {fig['completed']} completed, [bold]{fig['lost']} lost[/], "
                  f"[bold]{fig['failed']} failed[/] calls; {fig['preemptions']} preemptions, {fig['swaps']} swaps "
                  f"seen; daemon peak RSS {fig['peak_rss_mb']:.0f} MiB")
    if fig["errors"]:
        console.print(f"[red]errors: {fig['errors']}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--kv-pages", type=int, default=64, help="the daemon's KV pool, deliberately small")
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--model", default=TINY, help=f"{TINY} (a random tiny llama, built here) or any llmosd model")
    p.add_argument("--max-tokens", type=int, default=16, help="new tokens per process (per turn)")
    p.add_argument("--threads", type=int, default=2, help="the daemon's CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the figures here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the load test; exit 1 if any process was lost or any call failed."""
    args = parse(argv)
    console = Console()
    with console.status(f"starting llmosd ({args.model}, {args.kv_pages} KV pages)"):
        d = LoadDaemon(args.model, args.kv_pages, args.page_size, args.threads)
    try:
        stats = asyncio.run(measure(d, args, console))
    finally:
        d.stop()
    fig = {"clients": args.clients, "seconds": args.seconds, "model": d.model, "kv_pages": args.kv_pages,
           "max_tokens": args.max_tokens, **stats.figures(), "peak_rss_mb": d.peak_rss / 2**20}
    report(fig, console)
    if args.json:
        args.json.write_text(json.dumps(fig, indent=2))
    return 1 if fig["lost"] or fig["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
