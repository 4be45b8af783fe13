"""Prefill benchmark: long prompts and interactive latency, llmos in-process against transformers.

Long prompt: one process alone, a prompt of 500, 2,000 and 8,000 tokens, one new token. Its
time to first token (TTFT) and prefill tokens/s, on the model's fp32 and int8 copies, against
transformers' single full-prompt forward on the same prompt (fp32, all logits, as `model(ids)`
gives them; and its last row alone, as generate() asks for its first token). Every prompt is
distinct, so the prefix cache never serves one from an earlier run. The row llmos_fp32_chunks_256
pays the prompt in chunks of 256 tokens, as every step did before the scheduler's prefill budget.

Interactive latency (measured first): 16 processes decode; a chat request at nice -5 arrives
between two steps, --arrivals times; then again while a 2,000-token prompt at nice 0 is also
being prefilled beside them. Its TTFT against the same request on an idle engine just before
(the others stopped with STOP, so that both see the machine as busy as it is then). In a
daemon an arrival may also wait for the step in flight when it lands: "+ step in flight" adds
the step before each arrival to its TTFT, the worst that wait can be.

    python bench/prefill.py                                 # 500,2000,8000 × fp32,int8; 20 arrivals
    python bench/prefill.py --quick                         # smoke run: 500 tokens, 4 arrivals, a 600-token prompt
    python bench/prefill.py --json bench/results/prefill.json --plot bench/results/prefill.png
    python bench/prefill.py --lengths 8000 --repeat 1 --small-budget 0 --no-latency \
        --json bench/results/prefill.json --merge      # add the longest cells to a run's file
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore", category=FutureWarning)

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench import machine, report  # noqa: E402
from bench.common import MODEL, QUESTIONS, chat, default_store, long_system_prompt, percentile_ms  # noqa: E402

LONG_TARGET = 0.7   # TTFT / HF forward at 2,000 tokens, at most
LONG_AT = 2000
LATENCY_TARGET = 3.0  # p99 TTFT under load / idle, at most
LOADED, NICE = 16, -5


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prompt_tokens(tokenizer, n: int, salt: int, text: str | None = None) -> list[int]:
    """Exactly n tokens of policy text (`text`, if given: long_system_prompt(tokenizer, n + 16)),
    distinct per salt from the first token on."""
    text = f"Request {salt}. " + (text or long_system_prompt(tokenizer, n + 16))
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])[:n]


def llmos_ttft(k, model: str, tokens: list[int], prefill_budget: int | None = None) -> float:
    """Seconds from spawn to the first token of one process alone on kernel k (at a prefill
    budget of its own, if given)."""
    from llmos.kernel import ROOT, SpawnSpec, StopRules

    sched = k.models[model].scheduler.config
    kept = sched.prefill_budget
    sched.prefill_budget = prefill_budget or kept
    try:
        p = k.spawn(ROOT, SpawnSpec(model, tokens=tokens, stop=StopRules(max_tokens=1, ignore_eos=True)))
        k.run_until_idle()
        k.reap(ROOT, p.pid)
        return p.usage.ttft_s
    finally:
        sched.prefill_budget = kept


@torch.inference_mode()
def hf_forward(hf, tokens: list[int], last_only: bool) -> float:
    ids = torch.tensor([tokens])
    t = time.perf_counter()
    hf(input_ids=ids, logits_to_keep=1 if last_only else 0)
    return time.perf_counter() - t


def run_long(k, models: dict[str, str], hf, tokenizer, lengths: list[int], repeat: int,
             small_budget: int | None, on_length=lambda rows: None) -> list[dict]:
    """Per prompt length: HF forward (all logits, last row) and every llmos mode, interleaved run
    by run; with small_budget, fp32 once more with every chunk at that budget (as before the
    prefill budget). Each cell is the median of `repeat` runs, each on a prompt of its own."""
    rows, salt = [], 0
    cells = {"hf_forward": lambda t: hf_forward(hf, t, False), "hf_last_row": lambda t: hf_forward(hf, t, True)}
    for mode, name in models.items():
        cells[f"llmos_{mode}"] = lambda t, name=name: llmos_ttft(k, name, t)
    if small_budget and "fp32" in models:
        cells[f"llmos_fp32_chunks_{small_budget}"] = lambda t: llmos_ttft(k, models["fp32"], t, small_budget)
    for n in lengths:
        log(f"long prompt: {n} tokens")
        text = long_system_prompt(tokenizer, n + 16)
        runs: dict[str, list[float]] = {c: [] for c in cells}
        for _ in range(repeat):
            for c, fn in cells.items():
                salt += 1
                runs[c].append(fn(prompt_tokens(tokenizer, n, salt, text)))
        med = {c: statistics.median(xs) for c, xs in runs.items()}
        full, last = med.pop("hf_forward"), med.pop("hf_last_row")
        rows.append({"system": "hf_forward", "tokens": n, "ttft_s": full, "runs_s": runs["hf_forward"],
                     "last_row_s": last, "last_row_runs_s": runs["hf_last_row"]})
        rows += [{"system": c, "tokens": n, "ttft_s": t, "runs_s": runs[c], "vs_hf_forward": t / full,
                  "vs_hf_last_row": t / last} for c, t in med.items()]
        for r in rows[-len(med) - 1:]:
            r["prefill_tok_s"] = n / r["ttft_s"]
            log(f"  {r['system']}: TTFT {r['ttft_s']:.3f} s (runs {', '.join(f'{x:.2f}' for x in r['runs_s'])})"
                + (f", {r['vs_hf_forward']:.2f}x HF forward" if "vs_hf_forward" in r else ""))
        on_length(rows)
    return rows


def run_latency(k, model: str, arrivals: int, tokenizer, decoders: int = LOADED, long_prompt: int = 0) -> dict:
    """TTFT of nice -5 chat requests arriving while `decoders` decode (and, with long_prompt,
    while a prompt of that many tokens at nice 0 is being prefilled), each next to the same
    request on an idle engine (everyone else stopped with STOP), so that both see the machine
    as it is at that moment."""
    from llmos.kernel import ROOT, SpawnSpec, StopRules

    def spawn(i: int, max_tokens: int = 1, nice: int = NICE, tag: str = ""):
        # The tag leads the question, so that twins share only the chat template's system page.
        question = f"[{tag} {long_prompt}] {QUESTIONS[i % len(QUESTIONS)]}" if tag else QUESTIONS[i % len(QUESTIONS)]
        return k.spawn(ROOT, SpawnSpec(model, messages=chat(question), priority=nice,
                                       stop=StopRules(max_tokens=max_tokens, ignore_eos=True)))

    text = long_system_prompt(tokenizer, long_prompt + 16) if long_prompt else ""

    def prompt(i: int):  # a fresh long prompt at nice 0: never a prefix-cache hit
        return k.spawn(ROOT, SpawnSpec(model, tokens=prompt_tokens(tokenizer, long_prompt, 10_000 + i, text),
                                       stop=StopRules(max_tokens=1, ignore_eos=True)))

    def first_token(i: int, tag: str) -> tuple[float, int]:
        p, steps = spawn(i, tag=tag), 0
        while p.usage.ttft_s is None and steps < 1000:
            k.step()
            steps += 1
        while not p.state.done:
            k.step()
        k.reap(ROOT, p.pid)
        return p.usage.ttft_s, steps

    def signal(procs: list, sig: str) -> None:
        for p in procs:
            if not p.state.done:
                k.signal(ROOT, p.pid, sig)

    log(f"interactive: {arrivals} arrivals, each on an idle engine and while {decoders} decode"
        + (f" and a {long_prompt}-token prompt prefills" if long_prompt else ""))
    load = [spawn(i + 7, max_tokens=100_000, nice=0) for i in range(decoders)]
    background = []  # the long prompts, one per arrival
    idle, loaded, with_wait, steps_to_first = [], [], [], []
    try:
        while min(p.usage.generated_tokens for p in load) < 1:
            k.step()
        for i in range(arrivals):
            signal(background, "KILL")  # a stopped prompt would age while it waits: a fresh one each time
            signal(load, "STOP")
            idle.append(first_token(i, "idle")[0])
            signal(load, "CONT")
            if long_prompt:
                background.append(prompt(i))
            for _ in range(1 + i % 3):  # arrivals land after 1-3 steady steps
                t = time.perf_counter()
                k.step()
                before = time.perf_counter() - t
            ttft, steps = first_token(i, "busy")
            loaded.append(ttft)
            with_wait.append(ttft + before)
            steps_to_first.append(steps)
    finally:
        signal(load + background, "KILL")
        k.run_until_idle()
        for p in load + background:
            k.reap(ROOT, p.pid)
    sched = k.models[model].scheduler.config
    out = {"model": model, "arrivals": arrivals, "decoders": decoders, "long_prompt": long_prompt, "nice": NICE,
           "policy": sched.policy, "token_budget": sched.token_budget, "steps_to_first_token": steps_to_first}
    for name, xs in (("idle", idle), ("loaded", loaded), ("loaded_in_flight", with_wait)):
        out[f"{name}_p50_ms"], out[f"{name}_p99_ms"] = percentile_ms(xs, 50), percentile_ms(xs, 99)
    out["p99_ratio"] = out["loaded_p99_ms"] / out["idle_p99_ms"]
    out["p99_ratio_in_flight"] = out["loaded_in_flight_p99_ms"] / out["idle_p99_ms"]
    return out


def targets(long: list[dict], latency: list[dict]) -> list[dict]:
    out = []
    for r in long:
        if r["tokens"] == LONG_AT and r["system"].startswith("llmos") and "chunks" not in r["system"]:
            out.append({"target": f"{r['system']}: TTFT at {LONG_AT} tokens ≤ {LONG_TARGET}× HF forward (fp32)",
                        "value": r["vs_hf_forward"], "met": r["vs_hf_forward"] <= LONG_TARGET})
    for lat in latency:
        extra = f" + a {lat['long_prompt']}-token prompt" if lat["long_prompt"] else ""
        under = f"{lat['decoders']} decoders{extra}"
        for key, what in (("p99_ratio", "between steps"), ("p99_ratio_in_flight", "+ step in flight")):
            out.append({"target": f"nice {NICE} p99 TTFT under {under} ≤ {LATENCY_TARGET}× idle ({what})",
                        "value": lat[key], "met": lat[key] <= LATENCY_TARGET})
    return out


def print_all(console: Console, mach, long: list[dict], latency: list[dict], tg: list[dict]) -> None:
    console.print(f"machine: {mach.line()}")
    t = Table(title="Long prompt: one process alone, time to first token (median)")
    for col in ("system", "prompt tokens", "TTFT s", "prefill tok/s", "TTFT / HF forward", "TTFT / HF last row"):
        t.add_column(col, justify="left" if col == "system" else "right")
    for r in long:
        hf = r["system"] == "hf_forward"
        t.add_row(r["system"], f"{r['tokens']:,}", f"{r['ttft_s']:.3f}",
                  f"{r['prefill_tok_s']:,.0f}", "1.00" if hf else f"{r['vs_hf_forward']:.2f}",
                  f"{r['ttft_s'] / r['last_row_s']:.2f}" if hf else f"{r['vs_hf_last_row']:.2f}")
    console.print(t)
    console.print("HF forward: transformers fp32 `model(ids)` over the whole prompt, logits of every row; "
                  "HF last row: the same with logits_to_keep=1 (what generate() computes for its first token). "
                  "llmos_fp32_chunks_N: every chunk at N tokens, as before the prefill budget.")
    for lat in latency:
        extra = f" + a {lat['long_prompt']:,}-token prompt" if lat["long_prompt"] else ""
        under = f"{lat['decoders']} decoding{extra}"
        t = Table(title=f"Interactive latency: nice {NICE} chat requests, TTFT ({lat['arrivals']} arrivals, "
                        f"policy {lat['policy']}, budget {lat['token_budget']})")
        for col in ("engine", "p50 ms", "p99 ms", "p99 / idle p99"):
            t.add_column(col, justify="left" if col == "engine" else "right")
        t.add_row("idle", f"{lat['idle_p50_ms']:.1f}", f"{lat['idle_p99_ms']:.1f}", "1.00")
        t.add_row(under, f"{lat['loaded_p50_ms']:.1f}", f"{lat['loaded_p99_ms']:.1f}", f"{lat['p99_ratio']:.2f}")
        t.add_row(f"{under} + step in flight", f"{lat['loaded_in_flight_p50_ms']:.1f}",
                  f"{lat['loaded_in_flight_p99_ms']:.1f}", f"{lat['p99_ratio_in_flight']:.2f}")
        console.print(t)
        console.print(f"steps from arrival to first token: {lat['steps_to_first_token']}")
    for x in tg:
        console.print(f"{'[green]met[/]' if x['met'] else '[red]not met[/]'}  {x['target']}: {x['value']:.2f}")


def merged(kept: dict, long: list[dict], lengths: list[int]) -> list[dict]:
    """This run's long-prompt rows, after those of a kept run at the other lengths."""
    old = [r for r in kept.get("long_prompt", []) if r["tokens"] not in lengths]
    return sorted(old + long, key=lambda r: r["tokens"])


def plot(path: Path, long: list[dict], title: str) -> None:
    """Time to first token against prompt length, one line per system (log-log)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system in dict.fromkeys(r["system"] for r in long):
        rs = sorted((r for r in long if r["system"] == system), key=lambda r: r["tokens"])
        ax.plot([r["tokens"] for r in rs], [r["ttft_s"] for r in rs], marker="o", label=system)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.minorticks_off()
    ns = sorted({r["tokens"] for r in long})
    ax.set_xticks(ns, [f"{n:,}" for n in ns])
    ax.set_xlabel("prompt tokens (one process alone)")
    ax.set_ylabel("time to first token (s)")
    report.save_plot(fig, ax, path, title)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="500,2000,8000", help="comma-separated prompt lengths (tokens)")
    ap.add_argument("--modes", default="fp32,int8", help="llmos weight modes: fp32, int8, int4")
    ap.add_argument("--repeat", type=int, default=3, help="runs per long-prompt cell; the median is reported")
    ap.add_argument("--small-budget", type=int, default=256,
                    help="also run fp32 with every chunk at this many tokens (0: don't)")
    ap.add_argument("--arrivals", type=int, default=20)
    ap.add_argument("--long-prompt", type=int, default=2000,
                    help="second latency scenario: a prompt this long prefilling beside the decoders (0: skip)")
    ap.add_argument("--policy", default=None, help="scheduler policy (default: the kernel's)")
    ap.add_argument("--token-budget", type=int, default=None, help="tokens per step (default: the kernel's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--store", type=Path, default=default_store())
    ap.add_argument("--quick", action="store_true", help="smoke run: 500 tokens, one run, 4 arrivals")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--merge", action="store_true",
                    help="keep what --json already holds for other prompt lengths (and its latency, unless measured now)")
    ap.add_argument("--plot", type=Path, help="draw time to first token against prompt length here (matplotlib)")
    args = ap.parse_args(argv)
    report.check_plot(ap, args.plot)
    if args.quick:
        args.lengths, args.repeat, args.arrivals, args.long_prompt = "500", 1, 4, 600
    torch.set_num_threads(args.threads)
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    from llmos.drivers import open_driver
    from llmos.kernel import ROOT, Kernel, KernelConfig
    from llmos.kernel.models import ModelStore
    from llmos.kernel.sched import SchedConfig

    mach = machine.probe(args.threads)
    store = ModelStore(args.store)
    path = store.resolve(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    sched = SchedConfig()
    if args.policy:
        sched.policy = args.policy
    if args.token_budget:
        sched.token_budget = args.token_budget
    k = Kernel(open_driver("cpu", threads=args.threads), KernelConfig(sched=sched), store)
    models = {}
    for mode in [m for m in args.modes.split(",") if m]:
        log(f"loading {MODEL} ({mode})")
        models[mode] = k.load_model(ROOT, MODEL, quantize=None if mode == "fp32" else mode).name
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="sdpa").eval()
    lengths = [int(x) for x in args.lengths.split(",") if x]
    for name in models.values():  # warm-up
        llmos_ttft(k, name, prompt_tokens(tokenizer, 64, -1))
    hf_forward(hf, prompt_tokens(tokenizer, 64, -1), False)
    settings = {"lengths": lengths, "modes": list(models), "repeat": args.repeat, "arrivals": args.arrivals,
                "threads": args.threads, "small_budget": args.small_budget, "long_prompt": args.long_prompt,
                "prefill_budget": sched.prefill_budget, "token_budget": sched.token_budget,
                "policy": sched.policy}
    latency: list[dict] = []
    kept = json.loads(args.json.read_text()) if args.merge and args.json and args.json.exists() else {}
    if kept:
        settings["merged_with"] = kept.get("args", {})  # the settings of the cells kept from it
        settings["lengths"] = sorted(set(lengths) | set(settings["merged_with"].get("lengths", [])))

    def save(long: list[dict], done: bool) -> None:  # after every part, so an interrupted run keeps what it has
        if args.json:
            long = merged(kept, long, lengths)
            lat = latency or kept.get("latency", [])
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"machine": machine.as_json(mach), "args": settings, "complete": done,
                                             "long_prompt": long, "latency": lat,
                                             "targets": targets(long, lat)}, indent=2) + "\n")

    if not args.no_latency:  # first: the long prompts' longest runs take the most time
        model = models.get("fp32", next(iter(models.values())))
        latency.append(run_latency(k, model, args.arrivals, tokenizer))
        save([], False)
        if args.long_prompt:
            latency.append(run_latency(k, model, args.arrivals, tokenizer, long_prompt=args.long_prompt))
            save([], False)
    long = run_long(k, models, hf, tokenizer, lengths, args.repeat, args.small_budget, lambda rows: save(rows, False))
    save(long, True)
    console = Console(width=None if sys.stdout.isatty() else 150)
    print_all(console, mach, long, latency, targets(long, latency))
    if args.plot:
        plot(args.plot, merged(kept, long, lengths), f"{MODEL} on {mach.cpu}, {args.threads} threads")
        console.print(f"wrote {args.plot}")
    if args.json:
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
