"""The default model's Linear layers alone, computed four ways: time per pass over all of them.

    python bench/linear.py                        # batch 1, 16 and 32
    python bench/linear.py --rows 1,16 --json bench/results/linear.json

- `mkl`: F.linear on the weights as stored, as transformers runs them (MKL sgemm).
- `mkl_fused`: the same with q/k/v and gate/up concatenated into one product each.
- `packed`: what the CPU driver serves fp32 models with (drivers/packed.py): fused, and
  reordered once into oneDNN's blocked layout.
- `int8`: llmos int8 (drivers/quant.py): fused int8 weights, activations quantized per row.

Ratios are against `mkl` in the same run.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import track  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.common import MODEL, default_store  # noqa: E402


def _fused_plain(model: torch.nn.Module) -> torch.nn.Module:
    from llmos.drivers.fuse import FusedGroup, linear_parents, replace_linears

    class MklGroup(FusedGroup):
        def __init__(self, linears: list[torch.nn.Linear]) -> None:
            super().__init__(len(linears))
            self.weight = torch.cat([lin.weight.detach() for lin in linears])
            has_bias = any(lin.bias is not None for lin in linears)
            self.bias = torch.cat([lin.bias if lin.bias is not None else torch.zeros(lin.out_features)
                                   for lin in linears]) if has_bias else None

        def compute(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.linear(x, self.weight, self.bias)

    replace_linears(linear_parents(model), MklGroup)
    return model


def _packed(model: torch.nn.Module) -> torch.nn.Module:
    from llmos.drivers import packed

    packed.pack_model(model)
    return model


def _int8(model: torch.nn.Module) -> torch.nn.Module:
    from llmos.drivers import quant

    quant.quantize_model(model, "int8")
    return model


WAYS = {"mkl": lambda m: m, "mkl_fused": _fused_plain, "packed": _packed, "int8": _int8}


def layer_calls(model: torch.nn.Module) -> list[tuple[torch.nn.Module, int]]:
    """Each Linear-like layer and its input width, in forward order."""
    return [(m, m.in_features) for name, m in model.named_modules()
            if hasattr(m, "in_features") and not name.endswith("group")]


@torch.inference_mode()
def time_pass(layers: list[tuple[torch.nn.Module, int]], rows: int, repeat: int) -> float:
    """Best-of-`repeat` seconds for one pass over every layer with `rows` input rows."""
    inputs = {w: torch.randn(1, rows, w) for w in {w for _, w in layers}}
    best = float("inf")
    for _ in range(repeat + 1):
        t = time.perf_counter()
        for layer, width in layers:
            layer(inputs[width])
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1,16,32", help="comma-separated batch sizes (tokens per pass)")
    ap.add_argument("--ways", default=",".join(WAYS), help=f"subset of {','.join(WAYS)}")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--store", default=str(default_store()))
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from llmos.kernel.models import ModelStore

    base = AutoModelForCausalLM.from_pretrained(str(ModelStore(Path(args.store)).resolve(MODEL)), dtype=torch.float32)
    rows = [int(r) for r in args.rows.split(",")]
    ways = [w for w in args.ways.split(",") if w]
    unknown = set(ways) - set(WAYS)
    if unknown:
        ap.error(f"unknown ways {sorted(unknown)}; choose from {', '.join(WAYS)}")
    figures: list[dict] = []
    for way in track(ways, description="Linear layers"):
        model = WAYS[way](copy.deepcopy(base))
        layers = layer_calls(model)
        for r in rows:
            figures.append({"way": way, "rows": r, "layers": len(layers), "ms": 1e3 * time_pass(layers, r, args.repeat)})
    table = Table(title=f"{MODEL}: every Linear layer once (ms per pass, best of {args.repeat}; {args.threads} threads)")
    for col in ("way", "rows", "calls", "ms", "× mkl"):
        table.add_column(col, justify="left" if col == "way" else "right")
    for f in figures:
        ref = next(g["ms"] for g in figures if g["way"] == "mkl" and g["rows"] == f["rows"]) if "mkl" in ways else None
        table.add_row(f["way"], str(f["rows"]), str(f["layers"]), f"{f['ms']:.1f}", f"{ref / f['ms']:.2f}×" if ref else "—")
    Console().print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"threads": args.threads, "runs": figures}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
