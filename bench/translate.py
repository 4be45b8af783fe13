"""Translation quality: BLEU of `Client.translate` on the bundled English-French set.

    python bench/translate.py                      # the default model, through a daemon of its own
    python bench/translate.py --json out.json

Also runs `llmos eval --metric bleu` on the same set (raw replies, no stop at a blank line),
so both figures come from one run. A 135M model translates poorly: expect a low BLEU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sacrebleu  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402

from bench.common import MODEL, default_store  # noqa: E402
from bench.daemon import DaemonUnderTest  # noqa: E402

SET = Path(__file__).resolve().parent / "data" / "en-fr.jsonl"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=default_store())
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    from llmos.syscalls.sdk import Client

    console = Console()
    items = [json.loads(line) for line in SET.read_text().splitlines()]
    with console.status("starting llmosd"):
        d = DaemonUnderTest(args.store, args.threads)
    try:
        with Client(d.socket, timeout=600) as c, Progress(console=console, transient=True) as bar:
            task = bar.add_task("translating", total=len(items))
            outs, t0 = [], time.perf_counter()
            for it in items:
                source = it["messages"][1]["content"].split("\n\n", 1)[1]
                outs.append(c.translate(MODEL, source, "fr", "en", max_tokens=args.max_tokens))
                bar.advance(task)
            wall = time.perf_counter() - t0
            pid = c.eval(MODEL, SET, "bleu", max_tokens=args.max_tokens)
            raw = c.wait(pid).results["bleu"]
    finally:
        d.stop()
    bleu = sacrebleu.corpus_bleu(outs, [[it["reference"] for it in items]]).score
    fig = {"model": MODEL, "items": len(items), "translate_bleu": bleu, "eval_bleu_raw": raw, "wall_s": wall,
           "examples": [{"reference": it["reference"], "output": o} for it, o in zip(items[:5], outs[:5])]}
    console.print(f"{MODEL} on {SET.name} ({len(items)} sentences): translate() BLEU {bleu:.1f}; "
                  f"`llmos eval --metric bleu` on raw replies {raw:.1f}")
    for ex in fig["examples"]:
        console.print(f"  {ex['reference']!r} -> {ex['output']!r}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(fig, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
