"""int4 weights on the default model: its Linear layers, whole decode steps, and quality.

    python bench/int4.py                              # Linear layers and decode steps
    python bench/int4.py --quality --json bench/results/int4.json

Linear layers (every group once per pass, as the model calls them; median of --repeat):
- `fp32`: F.linear on the weights as stored (MKL). `packed`: oneDNN's prepacked product
  (drivers/packed.py). `int8`: llmos int8, prepacked (drivers/quant.py).
- `int4`: llmos int4 (drivers/int4.py): Q4_1 blocks multiplied in fp32 by llmos::block_dot, the
  LM head Q8_0. For the default model these are its own weights, which its fp32 model is served
  from too wherever the measured choice picks the blocks (drivers/choice.py).
Decode steps: the kernel with N processes decoding (N rows a step), per weight mode.
--quality adds bench/quantizers.py's table (perplexity on bench/data/quality.txt, decode
speed in transformers, batch drift) for fp32, llmos_int8 and llmos_int4.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.common import MODEL, default_store  # noqa: E402

ROWS = (1, 2, 4, 8, 16)


def _quantized(mode: str):
    def make(model: torch.nn.Module) -> torch.nn.Module:
        from llmos.drivers import packed, quant

        quant.quantize_model(model, mode)
        packed.pack_model(model)  # the CPU driver's prepacking (int8 groups, any Linear left)
        return model
    return make


WAYS = {"fp32": lambda m: m, "packed": _quantized("none"), "int8": _quantized("int8"), "int4": _quantized("int4")}


@torch.inference_mode()
def linear_ms(models: dict[str, torch.nn.Module], rows: list[int], repeat: int) -> dict[tuple[str, int], float]:
    """Median ms of one pass over every Linear-like layer (fused members share one product), per
    way and row count. The ways take turns in every round, so load from other processes on a
    shared machine falls on all of them alike."""
    from bench.linear import layer_calls

    calls = {way: layer_calls(m) for way, m in models.items()}
    widths = {w for layers in calls.values() for _, w in layers}
    inputs = {r: {w: torch.randn(1, r, w) for w in widths} for r in rows}
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(repeat + 1):  # the first round warms up
        for way, layers in calls.items():
            for r in rows:
                t = time.perf_counter()
                for layer, width in layers:
                    layer(inputs[r][width])
                times.setdefault((way, r), []).append(time.perf_counter() - t)
    return {key: 1e3 * statistics.median(ts[1:]) for key, ts in times.items()}


def step_ms(k, name: str, procs: int, steps: int) -> float:
    """Median ms of a kernel step with `procs` processes all decoding (one row each)."""
    from llmos.kernel import ROOT, SpawnSpec, StopRules

    ps = [k.spawn(ROOT, SpawnSpec(name, tokens=list(range(1000 + 40 * i, 1032 + 40 * i)),
                                  stop=StopRules(max_tokens=steps + 2, ignore_eos=True))) for i in range(procs)]
    while any(p.usage.generated_tokens == 0 for p in ps):
        k.step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        k.step()
        times.append(time.perf_counter() - t)
    k.run_until_idle()
    return 1e3 * statistics.median(times)


def run_steps(store: Path, threads: int, rows: list[int], steps: int) -> list[dict]:
    from llmos.drivers.cpu import CPUDriver
    from llmos.drivers.quant import model_bytes
    from llmos.kernel import ROOT, Kernel, KernelConfig
    from llmos.kernel.models import ModelStore

    out = []
    for mode in ("none", "int8", "int4"):
        k = Kernel(CPUDriver(threads), KernelConfig(page_size=16, kv_pages=512), ModelStore(store))
        name = k.load_model(ROOT, MODEL, quantize=mode).name
        nbytes = model_bytes(k.driver.runners[name].model)
        for n in rows:
            out.append({"mode": mode, "procs": n, "ms": step_ms(k, name, n, steps), "weight_bytes": nbytes})
        del k
    return out


def quality(store: Path, threads: int) -> list[dict]:
    from bench import quantizers

    def int4(model, tok):
        from llmos.drivers import probe, quant

        quant.quantize_model(model, "int4", calibration=tok(probe.CALIBRATION_TEXT)["input_ids"])
        return model
    quantizers.METHODS["llmos_int4"] = (int4, "llmos: Q4_1 blocks in fp32 (llmos::block_dot), Q8_0 LM head")
    return quantizers.run(["fp32", "llmos_int8", "llmos_int4"], threads, store)


def text_tokens(store: Path) -> int:
    from transformers import AutoTokenizer

    from bench.quantizers import TEXT
    from llmos.kernel.models import ModelStore

    return len(AutoTokenizer.from_pretrained(ModelStore(store).resolve(MODEL))(TEXT.read_text())["input_ids"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(map(str, ROWS)))
    ap.add_argument("--ways", default=",".join(WAYS), help=f"subset of {','.join(WAYS)}")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--steps", type=int, default=12, help="decode steps timed per process count (0: none)")
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--store", type=Path, default=default_store())
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from llmos.drivers.quant import model_bytes
    from llmos.kernel.models import ModelStore

    console = Console(width=max(Console().width, 120))
    rows = [int(r) for r in args.rows.split(",")]
    base = AutoModelForCausalLM.from_pretrained(str(ModelStore(args.store).resolve(MODEL)), dtype=torch.float32)
    models = {way: WAYS[way](copy.deepcopy(base)) for way in args.ways.split(",") if way}
    layers = [{"way": way, "rows": r, "ms": ms, "weight_bytes": model_bytes(models[way])}
              for (way, r), ms in linear_ms(models, rows, args.repeat).items()]
    del models
    t = Table(title=f"{MODEL}: every Linear layer once, ms per pass (median of {args.repeat}, {args.threads} threads)")
    t.add_column("way")
    for r in rows:
        t.add_column(f"{r} rows", justify="right")
    t.add_column("MB", justify="right")
    for way in dict.fromkeys(f["way"] for f in layers):
        got = {f["rows"]: f for f in layers if f["way"] == way}
        t.add_row(way, *[f"{got[r]['ms']:.1f}" if r in got else "—" for r in rows],
                  f"{next(iter(got.values()))['weight_bytes'] / 1e6:.0f}")
    console.print(t)
    result = {"model": MODEL, "threads": args.threads, "torch": torch.__version__, "linear": layers}
    ms = {(f["way"], f["rows"]): f["ms"] for f in layers}
    if all((w, r) in ms for w in ("int4", "packed", "int8") for r in rows):
        wins = [r for r in rows if ms[("int4", r)] <= min(ms[("packed", r)], ms[("int8", r)])]
        result["R"] = max((r for r in rows if all(w in wins for w in rows if w <= r)), default=0)
        console.print(f"int4 is the fastest Linear form up to R = {result['R']} rows on this CPU")
    if args.steps:
        result["steps"] = run_steps(args.store, args.threads, rows, args.steps)
        s = Table(title=f"decode step through the kernel, ms (median of {args.steps})")
        s.add_column("mode")
        for r in rows:
            s.add_column(f"{r} procs", justify="right")
        s.add_column("MB", justify="right")
        for mode in dict.fromkeys(f["mode"] for f in result["steps"]):
            got = {f["procs"]: f for f in result["steps"] if f["mode"] == mode}
            s.add_row(mode, *[f"{got[r]['ms']:.1f}" for r in rows], f"{got[rows[0]]['weight_bytes'] / 1e6:.0f}")
        console.print(s)
    if args.quality:
        from bench.quantizers import print_rows
        result["quality"] = quality(args.store, args.threads)
        print_rows(console, result["quality"], text_tokens(args.store))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
