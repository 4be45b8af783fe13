"""Speculative decoding (kernel/speculate.py): speculation on against off, in the same run.

Workloads on the default model, greedy:
- chat: the chat prompts of bench/common.py, one process at a time;
- edit: "repeat this ~300-token text with one change" (bench/data/edit.txt), as code-editing
  agents ask, one process at a time;
- json: structured output under a JSON schema (a list of records, as agents' tool calls and
  extraction ask), one process at a time: the grammar forces much of it, and its proposals are
  trimmed to what the grammar allows;
- chat x16 and edit x16: 16 processes at once: does speculation slow a batch?
Each cell is the median of --repeat runs (the edit x16 cell: one run). Printed: tok/s off and
on, their ratio, tokens per step of each process (1.0 without speculation), the share of
proposals accepted, and whether the tokens were the same (greedy output must not change).

    python bench/speculate.py [--repeat 3] [--new-tokens 64] [--edit-tokens 330] [--json out.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import machine  # noqa: E402
from bench.common import MODEL, QUESTIONS, chat, default_store  # noqa: E402

EDIT = Path(__file__).parent / "data" / "edit.txt"
EDIT_ASK = ("Repeat the text below exactly as it is, changing only \"host memory\" to \"swap space\". "
            "Reply with the text alone.\n\n")


RECORDS_ASK = "List five European countries and their capitals, as JSON."
RECORDS = {"type": "array", "minItems": 5, "maxItems": 5, "items": {
    "type": "object", "properties": {"country": {"type": "string", "maxLength": 24},
                                     "capital": {"type": "string", "maxLength": 24}},
    "required": ["country", "capital"], "additionalProperties": False}}


def workloads(chat_prompts: int) -> dict[str, list[list[dict]]]:
    text = EDIT.read_text().strip()
    return {"chat": [chat(q) for q in QUESTIONS[:chat_prompts]], "edit": [chat(EDIT_ASK + text)],
            "json": [chat(RECORDS_ASK)]}


def run(k, m, messages: list[list[dict]], new_tokens: int, at_once: int, speculate: bool,
        grammar=None) -> dict:
    """Every request, at_once processes at a time; tokens, seconds, steps and proposals."""
    from llmos.kernel import ROOT, SpawnSpec, SpecConfig, StopRules

    m.scheduler.config = dataclasses.replace(m.scheduler.config, speculate=SpecConfig(enabled=speculate))
    tokens, outs, steps, drafted, accepted = 0, [], 0, 0, 0
    t0 = time.perf_counter()
    for i in range(0, len(messages), at_once):
        procs = [k.spawn(ROOT, SpawnSpec(MODEL, messages=msg, grammar=grammar, stop=StopRules(max_tokens=new_tokens)))
                 for msg in messages[i:i + at_once]]
        s0 = k.steps
        k.run_until_idle()
        steps += (k.steps - s0) * len(procs)
        for p in procs:
            tokens += len(p.out_tokens)
            outs.append(list(p.out_tokens))
            drafted += p.lookup.drafted
            accepted += p.lookup.accepted
            k.reap(ROOT, p.pid)
    wall = time.perf_counter() - t0
    return {"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall, "tokens_per_step": tokens / max(steps, 1),
            "drafted": drafted, "accepted": accepted, "outputs": outs}


def cell(k, m, name: str, messages: list[list[dict]], new_tokens: int, at_once: int, repeat: int) -> dict:
    from llmos.syscalls.abi.grammar import GrammarSpec

    grammar = GrammarSpec("json_schema", RECORDS) if name == "json" else None
    runs = {False: [], True: []}
    for _ in range(repeat):  # interleaved, so a slow spell of the shared machine hits both
        for speculate in (False, True):
            runs[speculate].append(run(k, m, messages, new_tokens, at_once, speculate, grammar))
    off, on = (sorted(runs[s], key=lambda r: r["tok_s"])[len(runs[s]) // 2] for s in (False, True))
    return {"workload": name, "procs": at_once, "tokens": on["tokens"],
            "tok_s_off": round(off["tok_s"], 1), "tok_s_on": round(on["tok_s"], 1),
            "speedup": round(on["tok_s"] / off["tok_s"], 3),
            "speedups": [round(b["tok_s"] / a["tok_s"], 3) for a, b in zip(runs[False], runs[True])],
            "tokens_per_step": round(on["tokens_per_step"], 2),
            "accept_rate": round(on["accepted"] / on["drafted"], 3) if on["drafted"] else 0.0,
            "same_tokens": all(r["outputs"] == runs[False][0]["outputs"] for r in runs[False] + runs[True])}


def row_cost(k, m, procs: int, rows=(1, 2, 3, 5), context: int = 300, repeat: int = 9) -> dict[int, float]:
    """Milliseconds of one forward pass of `procs` slices of `rows` rows each (a decode and rows - 1
    proposals) at `context` tokens, the sizes interleaved so a slow spell hits them all; median."""
    from llmos.drivers.driver import SeqSlice, StepInput

    mem, times = m.memory, {r: [] for r in rows}
    pids = [-1 - i for i in range(procs)]
    for pid in pids:
        assert mem.allocate(pid, 0, context + max(rows)), "the KV pool is too small for the row-cost probe"
    try:
        for _ in range(repeat):
            for r in rows:
                batch = StepInput([SeqSlice(pid, [17] * r, context, mem.page_table(pid), True, draft=[17] * (r - 1))
                                   for pid in pids])
                t0 = time.perf_counter()
                k.driver.step(m.name, batch)
                times[r].append((time.perf_counter() - t0) * 1000)
    finally:
        for pid in pids:
            mem.free(pid)
    return {r: sorted(v)[len(v) // 2] for r, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64, help="most tokens of a chat answer")
    ap.add_argument("--edit-tokens", type=int, default=330, help="most tokens of an edit (the text is 282)")
    ap.add_argument("--chat-prompts", type=int, default=8, help="chat prompts in the 1-process row")
    ap.add_argument("--json-tokens", type=int, default=160, help="most tokens of the JSON records")
    ap.add_argument("--cells", type=int, default=5, help="run only the first N workload rows (1-5)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--store", type=Path, default=default_store())
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)

    from llmos.drivers import open_driver
    from llmos.kernel import ROOT, Kernel, KernelConfig
    from llmos.kernel.models import ModelStore

    mach = machine.probe(args.threads) if args.device == "cpu" else None
    k = Kernel(open_driver(args.device, threads=args.threads), KernelConfig(), ModelStore(args.store))
    m = k.load_model(ROOT, MODEL)
    w = workloads(args.chat_prompts)
    chats16 = [chat(q) for q in (QUESTIONS * 2)[:16]]
    plan = [("chat", w["chat"], args.new_tokens, 1, args.repeat),
            ("edit", w["edit"], args.edit_tokens, 1, args.repeat),
            ("json", w["json"], args.json_tokens, 1, args.repeat),
            ("chat", chats16, args.new_tokens, 16, args.repeat), ("edit", w["edit"] * 16, args.edit_tokens, 16, 1)]
    print(f"{'workload':9} {'procs':>5} {'tokens':>7} {'tok/s off':>10} {'tok/s on':>9} {'ratio':>6} "
          f"{'tok/step':>8} {'accepted':>8} {'same':>5}", flush=True)
    rows = []
    for name, messages, new_tokens, at_once, repeat in plan[:args.cells]:
        r = cell(k, m, name, messages, new_tokens, at_once, repeat)
        rows.append(r)
        print(f"{r['workload']:9} {r['procs']:>5} {r['tokens']:>7} {r['tok_s_off']:>10} {r['tok_s_on']:>9} "
              f"{r['speedup']:>6} {r['tokens_per_step']:>8} {r['accept_rate']:>8} {r['same_tokens']!s:>5}",
              flush=True)
    costs = {procs: row_cost(k, m, procs) for procs in (1, 16)}
    print("\nforward pass ms by rows per process (a decode and rows - 1 proposals), 300 tokens of context:")
    for procs, ms in costs.items():
        print(f"  {procs:>2} procs: " + ", ".join(f"{r} rows {v:.1f} ms ({v / ms[1]:.2f}x)" for r, v in ms.items()))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine.as_json(mach) if mach else {},
                                         "model": MODEL, "device": args.device, "threads": args.threads,
                                         "repeat": args.repeat, "rows": rows, "row_cost_ms": costs}, indent=2))
    return 0 if all(r["same_tokens"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
