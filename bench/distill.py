"""Pruning, then distillation: how much of the perplexity the default model loses to pruning a
short distillation from the unpruned model wins back.

    python bench/distill.py                       # prune 0.25, 40 steps of LoRA distillation
    python bench/distill.py --full --steps 60     # train every weight of the pruned copy instead
    python bench/distill.py --json bench/results/distill.json

The teacher is the default model; the student its copy pruned by drivers/prune.py (calibrated
on drivers/probe.py's CALIBRATION_TEXT) and saved to a temporary folder. Both are loaded into
one in-process kernel with a temporary model store. The data set is the teacher's own: it
answers bench/common.py's questions (sampled, seeded) and every chat, prompt and answer, is a
text record; the student learns the teacher's distributions on all of it
(`train.start(..., TrainSpec(distill=TEACHER))`, the same task units a fine-tune runs in).
Perplexity is measured on bench/data/quality.txt, which nothing trains or calibrates on,
through the driver's `score` in windows of 512 tokens, for the teacher, the pruned student
and the distilled student (its LoRA adapter served over it, or the full model it became).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
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
TEACHER, STUDENT = "teacher", "student"


def perplexity(k, name: str, ids: list[int], window: int = 512) -> float:
    from llmos.drivers.driver import score_windows

    nll = count = 0
    for chunk in score_windows(ids, window):
        n, c = k.driver.score(name, chunk)
        nll, count = nll + n, count + c
    return math.exp(nll / count)


def make_student(path: Path, out: Path, fraction: float, heads: float) -> dict:
    """Prune a copy of the model at `path` and save it (weights, config, tokenizer) to `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmos.drivers import probe, prune

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="sdpa").eval()
    r = prune.prune_model(model, fraction, tok(probe.CALIBRATION_TEXT)["input_ids"], heads=heads)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return {"summary": r.summary(), "params_before_m": r.params_before / 1e6, "params_after_m": r.params_after / 1e6}


def teacher_data(k, samples: int, new_tokens: int, seed: int, tick) -> tuple[bytes, int]:
    """JSONL text records of the teacher's sampled answers to the benchmark questions, each with
    its prompt in the chat template; and the tokens they hold."""
    from llmos.kernel import ROOT, SamplingParams, SpawnSpec, StopRules

    procs = [k.spawn(ROOT, SpawnSpec(TEACHER, messages=chat(QUESTIONS[i % len(QUESTIONS)]),
                                     sampling=SamplingParams(temperature=0.8, top_p=0.95, seed=seed + i),
                                     stop=StopRules(max_tokens=new_tokens))) for i in range(samples)]
    drive(k, procs, tick)
    tok = k.models[TEACHER].codec.tokenizer
    lines, tokens = [], 0
    for p in procs:
        ids = list(p.tokens)
        tokens += len(ids)
        lines.append(json.dumps({"text": tok.decode(ids)}))
        k.reap(ROOT, p.pid)
    return "\n".join(lines).encode(), tokens


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prune", type=float, default=0.25, help="fraction of MLP channels to remove")
    ap.add_argument("--heads", type=float, default=0.0, help="fraction of attention heads to remove")
    ap.add_argument("--full", action="store_true", help="train every weight, not a LoRA adapter")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.0, help="default: 2e-3 LoRA, 1e-4 full")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--alpha", type=float, default=0.0, help="weight of the data's cross-entropy")
    ap.add_argument("--samples", type=int, default=64, help="teacher answers in the data set")
    ap.add_argument("--new-tokens", type=int, default=160, help="tokens per teacher answer")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--store", type=Path, default=default_store())
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    args.lr = args.lr or (1e-4 if args.full else 2e-3)
    torch.set_num_threads(args.threads)
    import transformers

    from llmos.drivers import open_driver
    from llmos.kernel import ROOT, Kernel, KernelConfig
    from llmos.kernel.models import ModelStore
    from llmos.kernel.workloads import train

    transformers.logging.set_verbosity_error()
    console = Console(width=None if sys.stdout.isatty() else 160)
    t_start = time.perf_counter()
    path = ModelStore(args.store).resolve(MODEL)
    with tempfile.TemporaryDirectory(prefix="llmos-distill-") as tmp:
        student_dir = Path(tmp) / "pruned"
        pruned = make_student(path, student_dir, args.prune, args.heads)
        console.print(f"[bold]distilling {MODEL}[/] into its pruned copy: {pruned['summary']}")
        # One user and no decode streams to keep waiting: a slow unit on a busy machine is no fault.
        k = Kernel(open_driver("cpu", threads=args.threads), KernelConfig(kv_pages=2048, max_unit_s=600),
                   ModelStore(Path(tmp) / "store"))
        k.load_model(ROOT, str(path), name=TEACHER)
        k.load_model(ROOT, str(student_dir), name=STUDENT)
        ids = k.models[TEACHER].codec.encode(TEXT.read_text())
        cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*cols, console=console, refresh_per_second=2) as bar:
            job = bar.add_task("teacher writes the data set (tokens)", total=args.samples * args.new_tokens)
            note(console, "teacher writes the data set (tokens)")
            data, data_tokens = teacher_data(k, args.samples, args.new_tokens, args.seed,
                                             lambda n: bar.advance(job, n))
            job = bar.add_task("perplexity: teacher, pruned student", total=2)
            note(console, "perplexity: teacher, pruned student")
            ppl = {"unpruned": perplexity(k, TEACHER, ids)}
            bar.advance(job)
            ppl["pruned"] = perplexity(k, STUDENT, ids)
            bar.advance(job)
            name = "student-distilled"
            spec = train.TrainSpec("teacher.jsonl", steps=args.steps, lr=args.lr, rank=args.rank, batch=args.batch,
                                   micro_batch=1, checkpoint_every=0, name=name, seed=args.seed,
                                   max_len=512, distill=TEACHER, temperature=args.temperature, alpha=args.alpha,
                                   full=args.full)
            job = bar.add_task("distilling (optimizer steps)", total=args.steps)
            note(console, "distilling (optimizer steps)")
            t0 = time.perf_counter()
            p = train.start(k, ROOT, STUDENT, spec, data)
            while not p.state.done:
                k.step()
                if p.task.step != bar.tasks[job].completed:
                    loss = f", loss {p.task.losses[-1]:.3f}" if p.task.losses else ""
                    note(console, f"step {p.task.step}/{args.steps}{loss}")
                bar.update(job, completed=p.task.step)
            train_s = time.perf_counter() - t0
            if p.state.name != "EXITED":
                console.print(f"[red]distillation ended: {p.reason}[/]\n{p.stdout}")
                return 1
            ppl["distilled"] = perplexity(k, name, ids)
    lost, won = ppl["pruned"] - ppl["unpruned"], ppl["pruned"] - ppl["distilled"]
    log_lost = math.log(ppl["pruned"] / ppl["unpruned"])
    figures = {
        "ppl": ppl, "recovered": won / lost if lost else None,
        "recovered_log": math.log(ppl["pruned"] / ppl["distilled"]) / log_lost if log_lost else None,
        "losses": p.task.losses, "train_s": train_s, "total_s": time.perf_counter() - t_start,
        "data_records": args.samples, "data_tokens": data_tokens, "quality_tokens": len(ids), "pruned": pruned,
        "args": {k_: str(v) if isinstance(v, Path) else v for k_, v in vars(args).items()},
        "date": date.today().isoformat(),
    }
    show(console, figures, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))
        console.print(f"wrote {args.json}")
    return 0


def note(console: Console, text: str) -> None:
    """Off a terminal, where the progress bars are not drawn, a line for each phase."""
    if not console.is_terminal:
        console.print(f"{time.strftime('%H:%M:%S')} {text}")


def show(console: Console, f: dict, args: argparse.Namespace) -> None:
    ppl = f["ppl"]
    how = "all weights" if args.full else f"LoRA rank {args.rank}"
    t = Table(title=f"{MODEL}: perplexity on bench/data/quality.txt ({f['quality_tokens']} tokens, held out)")
    for col in ("model", "parameters", "perplexity", "× unpruned"):
        t.add_column(col, justify="left" if col == "model" else "right")
    t.add_row("unpruned (teacher)", f"{f['pruned']['params_before_m']:.1f}M", f"{ppl['unpruned']:.2f}", "1.000")
    t.add_row(f"pruned {args.prune:g}" + (f", heads {args.heads:g}" if args.heads else ""),
              f"{f['pruned']['params_after_m']:.1f}M", f"{ppl['pruned']:.2f}", f"{ppl['pruned'] / ppl['unpruned']:.3f}")
    t.add_row(f"pruned + distilled ({how}, {args.steps} steps)", f"{f['pruned']['params_after_m']:.1f}M",
              f"{ppl['distilled']:.2f}", f"{ppl['distilled'] / ppl['unpruned']:.3f}")
    console.print(t)
    console.print(f"distillation won back {f['recovered']:.0%} of the perplexity pruning lost "
                  f"({f['recovered_log']:.0%} in log-perplexity); {args.steps} steps of {args.batch} sequences in "
                  f"{f['train_s']:.0f} s on {f['data_records']} teacher answers ({f['data_tokens']} tokens), "
                  f"T={args.temperature:g}, alpha={args.alpha:g}, lr {args.lr:g}; loss {f['losses'][0]:.3f} → "
                  f"{f['losses'][-1]:.3f}; whole run {f['total_s']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
