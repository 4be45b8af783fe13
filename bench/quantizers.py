"""Ways to shrink the default model's weights, side by side: perplexity, decode-step speed and
whether a row's result depends on its batch (which decides whether batching can stay exact).

    python bench/quantizers.py                    # every method
    python bench/quantizers.py --methods fp32,llmos_int8 --json bench/results/quant.json

Each method is applied to a fresh transformers copy of the model (sdpa attention, DynamicCache),
so the comparison is of the weights' arithmetic alone, not of the llmos engine.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import track  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.common import MODEL, default_store  # noqa: E402

TEXT = Path(__file__).resolve().parent / "data" / "quality.txt"
PPL_TOLERANCE = 1.03


def _llmos_int8(model, tok, smooth: bool = True):
    from llmos.drivers import probe, quant

    quant.quantize_model(model, "int8", calibration=tok(probe.CALIBRATION_TEXT)["input_ids"] if smooth else None)
    return model


def _ao_dynamic(model, tok):
    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def _torchao(model, tok):
    # Not a dependency: installed, transformers imports it on every model load (slow, noisy).
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        raise ImportError("torchao is not installed: pip install torchao==0.18.0 for this row") from None

    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return model


METHODS: dict[str, tuple[Callable, str]] = {
    "fp32": (lambda m, t: m, "the model as stored"),
    "bf16": (lambda m, t: m.to(torch.bfloat16), "bf16 weights and activations"),
    "llmos_int8": (_llmos_int8, "llmos: int8 per-channel weights, per-token activations, SmoothQuant, _int_mm"),
    "llmos_int8_plain": (lambda m, t: _llmos_int8(m, t, smooth=False), "llmos int8 without smoothing"),
    "ao_dynamic": (_ao_dynamic, "torch.ao quantize_dynamic (fbgemm): one activation scale per batch"),
    "torchao_int8": (_torchao, "torchao Int8DynamicActivationInt8WeightConfig, eager"),
}


@torch.no_grad()
def step_ms(model, batch: int, context: int = 100, steps: int = 8) -> float:
    """Mean time of one decode forward for `batch` rows over a `context`-token cache."""
    from transformers import DynamicCache

    ids = torch.randint(100, 20000, (batch, context))
    cache = DynamicCache()
    model(ids, past_key_values=cache, use_cache=True)
    nxt = torch.randint(100, 20000, (batch, 1))
    times = []
    for _ in range(steps + 2):  # two untimed warm-ups; the median of the rest
        t0 = time.perf_counter()
        model(nxt, past_key_values=cache, use_cache=True)
        times.append(time.perf_counter() - t0)
        cache.crop(-1)
    return sorted(times[2:])[steps // 2] * 1e3


@torch.no_grad()
def batch_drift(model, tok, rows: int = 8) -> float:
    """Largest |logit| difference for one prompt run alone and inside a batch of others."""
    ids = tok(TEXT.read_text())["input_ids"]
    batch = torch.tensor([ids[i * 24:(i + 1) * 24] for i in range(rows)])
    together = model(batch).logits[0].float()
    alone = model(batch[:1]).logits[0].float()
    return (together - alone).abs().max().item()


def run(methods: list[str], threads: int, store: Path) -> list[dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmos.drivers.probe import perplexity
    from llmos.kernel.models import ModelStore

    torch.set_num_threads(threads)
    path = ModelStore(store).resolve(MODEL)
    tok = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    ids = tok(TEXT.read_text())["input_ids"]
    rows = []
    for name in track(methods, description="quantizing and measuring"):
        make, about = METHODS[name]
        try:
            model = make(copy.deepcopy(base), tok)
        except Exception as e:  # noqa: BLE001 - a method that cannot run here is a row, not a crash
            rows.append({"method": name, "about": about, "error": f"{type(e).__name__}: {str(e)[:120]}"})
            continue
        rows.append({"method": name, "about": about, "ppl": perplexity(model, ids),
                     "step_ms_1": step_ms(model, 1), "step_ms_16": step_ms(model, 16),
                     "batch_drift": batch_drift(model, tok)})
    ref = next((r for r in rows if r["method"] == "fp32" and "ppl" in r), None)
    for r in rows:
        if ref and "ppl" in r:
            r["ppl_ratio"] = r["ppl"] / ref["ppl"]
            r["speedup_1"], r["speedup_16"] = ref["step_ms_1"] / r["step_ms_1"], ref["step_ms_16"] / r["step_ms_16"]
    return rows


def print_rows(console: Console, rows: list[dict], tokens: int) -> None:
    t = Table(title=f"{MODEL}: perplexity on bench/data/quality.txt ({tokens} tokens) and decode-step speed")
    for col in ("method", "perplexity", "× fp32", "step ms ×1", "speed-up ×1", "step ms ×16", "speed-up ×16",
                "batch drift"):
        t.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        if "error" in r:
            t.add_row(r["method"], f"[red]{r['error']}[/]", *[""] * 6)
            continue
        ok = r.get("ppl_ratio", 1) <= PPL_TOLERANCE
        t.add_row(r["method"], f"{r['ppl']:.3f}", f"[{'green' if ok else 'red'}]{r.get('ppl_ratio', 1):.4f}[/]",
                  f"{r['step_ms_1']:.1f}", f"{r.get('speedup_1', 1):.2f}×", f"{r['step_ms_16']:.1f}",
                  f"{r.get('speedup_16', 1):.2f}×", "0 (exact)" if r["batch_drift"] == 0 else f"{r['batch_drift']:.2g}")
    console.print(t)
    console.print("batch drift: the largest logit change of one prompt run inside a batch rather than alone; "
                  "0 means batching cannot change its tokens.")


def main(argv: list[str] | None = None, default_methods: str = ",".join(METHODS)) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default=default_methods, help=f"subset of {','.join(METHODS)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--store", type=Path, default=default_store())
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if "fp32" not in methods:
        methods.insert(0, "fp32")
    console = Console(width=max(Console().width, 130))
    rows = run(methods, args.threads, args.store)
    from transformers import AutoTokenizer
    from llmos.kernel.models import ModelStore
    tokens = len(AutoTokenizer.from_pretrained(ModelStore(args.store).resolve(MODEL))(TEXT.read_text())["input_ids"])
    print_rows(console, rows, tokens)
    int8 = next((r for r in rows if r["method"] == "llmos_int8" and "ppl_ratio" in r), None)
    if int8:
        met = int8["ppl_ratio"] <= PPL_TOLERANCE
        console.print(f"target: llmos_int8 perplexity within 3% of fp32: {int8['ppl_ratio']:.4f}× "
                      f"({'[green]met[/]' if met else '[red]not met[/]'})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": MODEL, "threads": args.threads, "text_tokens": tokens,
                                         "torch": torch.__version__, "rows": rows}, indent=2) + "\n")
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
