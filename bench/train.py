"""Training beside inference: how much a concurrent LoRA fine-tune slows streaming processes.

N processes each stream --new-tokens tokens (greedy, EOS ignored), once alone and once while a
fine-tune runs on the same model and device; the table shows their tok/s and the ratio.
Serving several adapters in one batch is measured by bench/multilora.py.

    python bench/train.py                          # the tiny random model (no download)
    python bench/train.py --model smollm2-135m     # the default model, from the model store
    python bench/train.py --streams 1,4 --json bench/results/train.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.common import QUESTIONS, default_store  # noqa: E402

ANSWERS = ["A kernel schedules work fairly.", "Pages hold the keys and values.", "Signals stop and resume."]


def make_kernel(model: str, store: Path):
    """A kernel serving `model` ('tiny' builds a random one from tests/tiny.py)."""
    from llmos.drivers.cpu import CPUDriver
    from llmos.kernel import ROOT, Kernel, KernelConfig
    from llmos.kernel.models import ModelStore

    k = Kernel(CPUDriver(), KernelConfig(page_size=16, kv_pages=1024), store=ModelStore(store))
    if model == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from tiny import tiny_model, tiny_tokenizer
        k.adopt_model("tiny", tiny_model(), tiny_tokenizer())
    else:
        k.store = ModelStore(default_store())
        k.load_model(ROOT, model)
    return k


def stream(k, model: str, n: int, new_tokens: int) -> tuple[float, int]:
    """Run n streams to the end; returns (seconds, tokens)."""
    from llmos.kernel import ROOT, SpawnSpec, StopRules

    procs = [k.spawn(ROOT, SpawnSpec(model, messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                     stop=StopRules(max_tokens=new_tokens, ignore_eos=True))) for i in range(n)]
    t0 = time.perf_counter()
    while any(not p.state.done for p in procs):
        k.step()
    return time.perf_counter() - t0, sum(len(p.out_tokens) for p in procs)


def run(args: argparse.Namespace) -> list[dict]:
    from llmos.kernel import ROOT
    from llmos.kernel.workloads import train

    tmp = Path(tempfile.mkdtemp(prefix="llmos-bench-train-"))
    data = tmp / "bench.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                       {"role": "assistant", "content": ANSWERS[i % 3]}]})
                              for i, q in enumerate(QUESTIONS)))
    k = make_kernel(args.model, tmp / "store")
    rows = []
    for n in args.streams:
        stream(k, args.model, n, 4)  # warm-up
        alone_s, alone_tok = stream(k, args.model, n, args.new_tokens)
        t = train.start(k, ROOT, args.model, train.TrainSpec(str(data), steps=1_000_000, batch=args.batch,
                                                             checkpoint_every=0, name=f"bench{n}"),
                        priority=args.nice)
        steps0 = len(t.task.losses)
        with_s, with_tok = stream(k, args.model, n, args.new_tokens)
        steps = len(t.task.losses) - steps0
        k.signal(ROOT, t.pid, "KILL")
        alone, beside = alone_tok / alone_s, with_tok / with_s
        rows.append({"streams": n, "alone_tok_s": alone, "training_tok_s": beside, "ratio": beside / alone,
                     "train_steps": steps, "train_steps_s": steps / with_s})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--streams", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--nice", type=int, default=0, help="the fine-tune's priority")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = ap.parse_args(argv)
    rows = run(args)
    t = Table(title=f"streaming beside a LoRA fine-tune ({args.model}, nice {args.nice})")
    for col in ("streams", "alone tok/s", "with training tok/s", "ratio", "train steps/s"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(str(r["streams"]), f"{r['alone_tok_s']:.0f}", f"{r['training_tok_s']:.0f}", f"{r['ratio']:.2f}",
                  f"{r['train_steps_s']:.2f}")
    Console().print(t)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
