"""`llmos eval`: start an evaluation process, show its progress, print its metrics.

    llmos eval MODEL DATA --metric ppl|bleu|rouge [--max-tokens N] [--window N] [--nice N] [--json]
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rich.table import Table

from llmos.shell.interrupt import interruptible

if TYPE_CHECKING:
    from llmos.shell.commands import Shell

COUNTS = ("tokens", "windows", "documents", "items")  # results that are counts, shown as integers
ORDER = ("ppl", "nll", "bleu", "rouge1", "rouge2", "rougeL", *COUNTS)


def add_parsers(sub: argparse._SubParsersAction, parser_class: type) -> None:
    """The eval command's subparser, under the shell's."""
    p = sub.add_parser("eval", help="evaluate a model: perplexity on text, or BLEU/ROUGE against references")
    p.add_argument("model")
    p.add_argument("data", help="a text file (ppl) or a JSONL file of prompt/reference items; sent to llmosd")
    p.add_argument("--daemon-path", action="store_true",
                   help="DATA is a file on the daemon's disk, inside its data_dirs (admins only)")
    p.add_argument("--metric", "-m", required=True, choices=("ppl", "bleu", "rouge"))
    p.add_argument("--max-tokens", "-n", type=int, default=None, help="bleu/rouge: new tokens per item (256)")
    p.add_argument("--window", type=int, default=0, help="ppl: tokens per window (default min(512, context - 1))")
    p.add_argument("--nice", type=int, default=0, help="priority, -20 (first) .. 19")
    p.add_argument("--quantize", default="", metavar="MODE", help="evaluate the loaded MODEL:MODE copy")
    p.add_argument("--json", action="store_true", help="print the structured results as JSON")


def table(results: dict[str, float]) -> Table:
    """The metrics first, then the counts they were computed over."""
    t = Table(box=None, header_style="bold")
    t.add_column("METRIC")
    t.add_column("VALUE", justify="right")
    for name in sorted(results, key=lambda n: (n in COUNTS, ORDER.index(n) if n in ORDER else len(ORDER), n)):
        t.add_row(name, f"{results[name]:.0f}" if name in COUNTS else f"{results[name]:.4f}")
    return t


def evaluate(sh: "Shell", a: argparse.Namespace) -> int:
    path, server_path = ("", a.data) if a.daemon_path else (a.data, "")
    pid = sh.c.eval(a.model, path, a.metric, server_path=server_path, max_tokens=a.max_tokens, window=a.window,
                    priority=a.nice, quantize=a.quantize)
    try:
        for ch in interruptible(sh.c.read(pid)):  # progress lines, on stderr: stdout is for the results
            sh.err.write(ch.text)
            sh.err.flush()
        r = sh.c.wait(pid)
    except KeyboardInterrupt:
        sh.c.kill(pid)
        sh.say(f"[pid {pid} sent TERM]")
        return 130
    if a.json:
        sh.json({"pid": r.pid, "model": a.model, "data": a.data, "metric": a.metric, "state": r.state,
                 "reason": r.reason, "results": r.results})
    elif r.results:  # a terminated eval reports what it had
        sh.out.write(f"{a.metric} of {a.model} on {a.data} (pid {r.pid})\n")
        sh.console.print(table(r.results))
    if r.state != "exited":
        sh.say(f"llmos: eval pid {pid} was {r.state}: {r.reason}")
        return 1
    return 0


COMMANDS = {"eval": evaluate}
