"""Multi-LoRA serving: processes on K adapters of one base model batched together, against one
merged model per adapter (what llmos did before) and the base model alone (the ceiling).

N processes in all (process i runs on adapter i mod K), each a distinct chat request that
generates exactly --new-tokens tokens (greedy, EOS ignored), all spawned at once into a kernel
on the CPU. The adapters are random (rank --rank on q/k/v/o/gate/up/down, built with peft on
the base, no training) and saved in peft's format, as a finished fine-tune is.

- llmos_multilora: K LoRA models loaded over the base: all N processes share the base's
  KV pool and batches, one forward pass per step (drivers/lora.py).
- merged_models: K full models, each the base with one adapter merged in, in one kernel with
  N/K processes each: K forward passes per step, K copies of the weights.
- base_only: the base model alone serving all N processes.

    python bench/multilora.py                             # K=4, N=16, 64 new tokens
    python bench/multilora.py --procs 8 --new-tokens 16   # a quick run
    python bench/multilora.py --adapters 8 --json bench/results/multilora.json
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.common import MODEL, QUESTIONS, Tick, chat, default_store, drive  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SYSTEMS = {"llmos_multilora": "K LoRA models over the base, batched together",
           "merged_models": "K merged full models, one batch each",
           "base_only": "the base model alone (the ceiling)"}


@dataclass
class Row:
    """One system's timed run."""

    system: str
    models: int
    procs: int
    new_tokens: int
    tok_s: float
    wall_s: float
    generated_tokens: int
    forward_passes: int
    weight_bytes: int


def make_adapters(path: Path, k: int, rank: int, folder: Path) -> list[Path]:
    """K random LoRA adapters over the model at `path`, stored as llmos stores a fine-tune."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llmos.kernel.models import ModelStore

    store = ModelStore(folder)
    base = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    out = []
    for i in range(k):
        torch.manual_seed(1000 + i)
        model = get_peft_model(copy.deepcopy(base), LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                                target_modules=TARGETS))
        with torch.no_grad():  # peft starts B at zero: an adapter that changes nothing
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.02)
        name = f"{MODEL}+bench{i}"
        staged = store.staging(name)
        model.save_pretrained(str(staged))
        out.append(store.save_adapter(staged, name, {"base": MODEL, "base_source": MODEL}))
    return out


def merged(path: Path, adapter: Path) -> torch.nn.Module:
    """The base at `path` with the adapter merged into its weights (the old llmos export)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().eval()


def run(k, system: str, models: list[str], procs: int, new_tokens: int, tick: Tick) -> Row:
    """Spawn `procs` requests at once (process i on models[i mod K]), step until idle."""
    from llmos.kernel import ROOT, SpawnSpec, StopRules

    passes = 0
    real = k.driver.step

    def counted(name, batch):
        nonlocal passes
        passes += 1
        return real(name, batch)
    k.driver.step = counted
    t0 = time.perf_counter()
    ps = [k.spawn(ROOT, SpawnSpec(models[i % len(models)], messages=chat(QUESTIONS[i % len(QUESTIONS)]),
                  stop=StopRules(max_tokens=new_tokens, ignore_eos=True))) for i in range(procs)]
    done = drive(k, ps, tick)
    wall = time.perf_counter() - t0
    k.driver.step = real
    for p in ps:
        k.reap(ROOT, p.pid)
    weights = sum(k.model(m).info.weight_bytes for m in {*models, *(k.model(m).pool for m in models)})
    return Row(system, len(set(models)), procs, new_tokens, done / wall, wall, done, passes, weights)


def measure(args: argparse.Namespace, console: Console) -> list[Row]:
    from transformers import AutoTokenizer

    from llmos.drivers import open_driver
    from llmos.kernel import ROOT, Kernel, KernelConfig
    from llmos.kernel.models import ModelStore

    store = ModelStore(args.store)
    path = store.resolve(MODEL)
    pages = 2 * args.procs * -(-(128 + args.new_tokens) // 16)  # room for every process at once
    cfg = KernelConfig(page_size=16, kv_pages=pages)
    with tempfile.TemporaryDirectory(prefix="llmos-bench-multilora-") as tmp:
        console.print(f"building {args.adapters} random rank-{args.rank} adapters over {MODEL} with peft")
        adapters = make_adapters(path, args.adapters, args.rank, Path(tmp))
        rows: list[Row] = []
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, refresh_per_second=2) as bar:
            task = bar.add_task("starting", total=len(args.systems) * args.procs * args.new_tokens)
            tick: Tick = lambda n: bar.advance(task, n)  # noqa: E731

            def timed(k, system: str, models: list[str]) -> None:
                bar.update(task, description=f"warm-up {system}")
                run(k, system, models, min(args.procs, 2 * len(models)), 4, lambda _: None)
                bar.update(task, description=f"{system} × {args.procs}")
                rows.append(run(k, system, models, args.procs, args.new_tokens, tick))

            k = Kernel(open_driver("cpu", threads=args.threads), cfg, store)
            k.load_model(ROOT, MODEL)
            if "base_only" in args.systems:  # before any adapter is loaded: no hooks at all
                timed(k, "base_only", [MODEL])
            if "llmos_multilora" in args.systems:
                timed(k, "llmos_multilora", [k.load_model(ROOT, str(a)).name for a in adapters])
            del k
            if "merged_models" in args.systems:
                bar.update(task, description="merging the adapters into full models")
                k = Kernel(open_driver("cpu", threads=args.threads), cfg, store)
                tok = AutoTokenizer.from_pretrained(str(path))
                names = [k.adopt_model(f"{a.name}-merged", merged(path, a), tok).name for a in adapters]
                timed(k, "merged_models", names)
    return sorted(rows, key=lambda r: list(SYSTEMS).index(r.system))


def table(rows: list[Row], args: argparse.Namespace) -> Table:
    by = {r.system: r for r in rows}
    t = Table(title=f"multi-LoRA serving: {args.adapters} adapters (rank {args.rank}) × {args.procs} processes "
                    f"in all, {args.new_tokens} new tokens each, {MODEL} on the CPU ({args.threads} threads)")
    for col in ("system", "models", "tok/s", "×base", "×merged", "passes", "wall s", "weights"):
        t.add_column(col, justify="left" if col == "system" else "right", no_wrap=col == "system")
    for r in rows:
        ratio = {s: f"{r.tok_s / by[s].tok_s:.2f}x" if s in by and by[s].tok_s else "-"
                 for s in ("base_only", "merged_models")}
        t.add_row(r.system, str(r.models), f"{r.tok_s:.1f}", ratio["base_only"], ratio["merged_models"],
                  str(r.forward_passes), f"{r.wall_s:.1f}", f"{r.weight_bytes / 2**20:.0f} MiB")
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapters", type=int, default=4, help="K: adapters (and merged models)")
    ap.add_argument("--procs", type=int, default=16, help="N: processes in all, spread over the adapters")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"subset of {','.join(SYSTEMS)}")
    ap.add_argument("--store", type=Path, default=default_store(), help="model store dir (default: %(default)s)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown or args.adapters < 1 or args.procs < 1:
        ap.error(f"choose systems from {', '.join(SYSTEMS)}, and at least one adapter and one process")
    torch.set_num_threads(args.threads)
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    console = Console()
    rows = measure(args, console)
    console.print(table(rows, args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "store")}
        args.json.write_text(json.dumps({"model": MODEL, "settings": settings, "systems": SYSTEMS,
                                         "results": [asdict(r) for r in rows]}, indent=2))
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
