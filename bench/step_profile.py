"""A per-op profile of one steady decode step through the llmos kernel: GEMM time against the rest.

N processes are spawned on the default model and stepped until every one of them decodes (its
prompt done); after a few warm steps, STEPS steps are timed bare and then under torch.profiler.
A step is split into the Linear layers' GEMMs (the ops in GEMM_OPS, by self time) and
everything else: attention, norms, activations, sampling, Python and kernel bookkeeping. The
"else" is the bare step time less the GEMMs' (the profiler inflates small ops, not GEMMs), and
the issue's target is else <= 25% of a step.

    python bench/step_profile.py                          # fp32, int8 and int4, at 1 and 16 processes
    python bench/step_profile.py --procs 1,4 --modes none --json bench/results/profile.json
    python bench/step_profile.py --modes int8 --compile   # the compiled decode steps
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

from bench.common import MODEL, QUESTIONS, chat, default_store, end_all  # noqa: E402

GEMM_OPS = ("aten::mm", "aten::addmm", "aten::_int_mm", "mkldnn::_linear_pointwise", "onednn::qlinear_pointwise",
            "llmos::linear_dot", "llmos::block_dot", "llmos::int8_dot",
            "aten::_weight_int4pack_mm_for_cpu", "aten::_weight_int8pack_mm")
NON_GEMM_TARGET = 0.25
STEPS, WARM, TOP = 8, 3, 12


def profile_step(k, model: str, n: int, steps: int = STEPS, top: int = TOP) -> dict:
    """Profile steady decode steps of n processes of `model` on kernel k (then killed and reaped)."""
    from torch.profiler import ProfilerActivity, profile

    from llmos.kernel import ROOT, SpawnSpec, StopRules

    procs = [k.spawn(ROOT, SpawnSpec(model, messages=chat(QUESTIONS[i % len(QUESTIONS)]),
                                     stop=StopRules(max_tokens=10_000, ignore_eos=True))) for i in range(n)]
    try:
        while min(p.usage.generated_tokens for p in procs) < 1:  # every prompt done: only decodes left
            k.step()
        for _ in range(WARM):
            k.step()
        bare = []
        for _ in range(steps):
            t = time.perf_counter()
            k.step()
            bare.append(time.perf_counter() - t)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            for _ in range(steps):
                k.step()
            profiled = (time.perf_counter() - t) / steps
    finally:
        end_all(k, procs)
    ops = sorted(((e.key, e.self_cpu_time_total / 1e3 / steps, e.count / steps) for e in prof.key_averages()),
                 key=lambda x: -x[1])
    step_ms = statistics.median(bare) * 1e3
    gemm_ms = sum(ms for name, ms, _ in ops if name in GEMM_OPS)
    ops_ms = sum(ms for name, ms, _ in ops if name not in GEMM_OPS)
    other_ms = max(step_ms - gemm_ms, 0.0)
    return {"model": model, "processes": n, "steps": steps, "step_ms": round(step_ms, 3),
            "profiled_step_ms": round(profiled * 1e3, 3), "gemm_ms": round(gemm_ms, 3),
            "gemm_calls": round(sum(c for name, _, c in ops if name in GEMM_OPS), 1),
            "other_ops_ms": round(ops_ms, 3),  # profiled self time of every other op
            "outside_ops_ms": round(max(profiled * 1e3 - gemm_ms - ops_ms, 0.0), 3),  # Python, bookkeeping
            "non_gemm_ms": round(other_ms, 3), "non_gemm_share": round(other_ms / step_ms, 4) if step_ms else None,
            "target_met": other_ms <= NON_GEMM_TARGET * step_ms,
            "top_ops": [{"op": name, "ms": round(ms, 3), "calls": round(c, 1), "gemm": name in GEMM_OPS}
                        for name, ms, c in ops[:top]]}


def print_profiles(console: Console, profiles: list[dict]) -> None:
    t = Table(title=f"One steady decode step through the kernel (median of {STEPS}; GEMM by torch.profiler self time)")
    for col in ("model", "N", "step ms", "GEMM ms", "GEMM calls", "else ms", "else share", f"≤ {NON_GEMM_TARGET:.0%}",
                "other ops ms*", "outside ops ms*"):
        t.add_column(col, justify="right" if col != "model" else "left")
    for p in profiles:
        t.add_row(p["model"], str(p["processes"]), f"{p['step_ms']:.1f}", f"{p['gemm_ms']:.1f}", f"{p['gemm_calls']:.0f}",
                  f"{p['non_gemm_ms']:.1f}", f"{p['non_gemm_share']:.0%}", "[green]yes[/]" if p["target_met"] else "[red]no[/]",
                  f"{p['other_ops_ms']:.1f}", f"{p['outside_ops_ms']:.1f}")
    console.print(t)
    console.print("else = the bare step less its GEMMs. *Under the profiler, which inflates small ops: the other "
                  "ops' self time, and the step's time outside any op (Python, the kernel's bookkeeping).")
    for p in profiles:
        t = Table(title=f"Top ops by self time: {p['model']} × {p['processes']} (profiled step {p['profiled_step_ms']:.1f} ms)")
        for col in ("op", "ms / step", "calls / step", "share of step"):
            t.add_column(col, justify="left" if col == "op" else "right")
        for op in p["top_ops"]:
            name = f"[bold]{op['op']}[/]" if op["gemm"] else op["op"]
            t.add_row(name, f"{op['ms']:.2f}", f"{op['calls']:.0f}", f"{op['ms'] / p['profiled_step_ms']:.0%}")
        console.print(t)


def run(k, procs: list[int], modes: list[str]) -> list[dict]:
    """Profile every (mode, N) on kernel k, loading the model's copies it lacks."""
    from llmos.kernel import ROOT

    out = []
    for mode in modes:
        m = k.load_model(ROOT, MODEL, quantize=None if mode == "none" else mode)
        for n in procs:
            out.append(profile_step(k, m.name, n))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", default="1,16", help="comma-separated process counts")
    ap.add_argument("--modes", default="none,int8,int4", help="quantization modes of the model's copies")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="decode steps through torch.compile (llmosd --compile)")
    ap.add_argument("--store", type=Path, default=default_store())
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers
    transformers.logging.set_verbosity_error()
    from llmos.drivers import open_driver
    from llmos.kernel import Kernel, KernelConfig
    from llmos.kernel.models import ModelStore

    k = Kernel(open_driver("cpu", threads=args.threads, compile=args.compile), KernelConfig(), ModelStore(args.store))
    profiles = run(k, [int(n) for n in args.procs.split(",") if n], [m for m in args.modes.split(",") if m])
    console = Console(width=None if sys.stdout.isatty() else 150)
    print_profiles(console, profiles)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"profile": profiles}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
