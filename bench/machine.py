"""The machine in every figure: which CPU ran it, and two limits measured on it.

Machines of one kind are not one CPU (an AMD EPYC and an Intel Xeon, both "2 cores", differ 3x
on the same GEMM), so every benchmark says which it ran on and how fast that machine is:

- memory read bandwidth: the sum of a 512 MB fp32 tensor, median of 5;
- GEMM peak: fp32 [16x576]x[576x1536] (a decode step's projection at 16 processes) and 2048^3,
  each the better of MKL (torch.mm) and oneDNN on prepacked weights, median of repeats.

From those and the model, `roofline` gives the least time a decode step can take at N
processes: every weight is read once per step (bytes / bandwidth), and every token costs
2 FLOPs a weight (FLOPs x N / the 2048^3 peak; int8 weights: torch._int_mm's). Attention and the KV cache are left out, so the
bound is optimistic: a system at 1.0 of it would be as fast as this machine allows.

    python bench/machine.py            # print the probe
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

ISA = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")


@dataclass
class Machine:
    """A CPU and its measured limits (all JSON-plain)."""

    cpu: str
    vendor: str
    cores: int
    threads: int  # torch's intra-op threads the figures were measured with
    isa: list[str]
    l3: str
    torch: str
    read_gb_s: float
    gemm_16_gflops: float
    gemm_2048_gflops: float
    int8_2048_gops: float  # torch._int_mm at 2048^3: the compute roof of int8 weights
    gemm_kernels: dict  # "<shape> <kernel>" -> GFLOP/s

    def line(self) -> str:
        return (f"{self.cpu} · {self.cores} cores ({self.threads} threads) · {', '.join(self.isa) or 'no AVX'}"
                f"{f' · L3 {self.l3}' if self.l3 else ''} · read {self.read_gb_s:.1f} GB/s · fp32 GEMM "
                f"{self.gemm_16_gflops:.0f} GFLOP/s at [16x576]x[576x1536], {self.gemm_2048_gflops:.0f} at 2048³ · "
                f"int8 {self.int8_2048_gops:.0f} GOP/s at 2048³")


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                if not line.strip():
                    break
                info.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return info


def _l3() -> str:
    try:
        for idx in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
            if (idx / "level").read_text().strip() == "3":
                return (idx / "size").read_text().strip()
    except OSError:
        pass
    return ""


def _median_s(fn, repeat: int, inner: int = 1) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t) / inner)
    return statistics.median(times)


@torch.inference_mode()
def read_bandwidth(mb: int = 512, repeat: int = 5) -> float:
    """GB/s of reading a `mb` MB fp32 tensor (its sum), median of `repeat`."""
    x = torch.ones(mb * (1 << 20) // 4)
    s = _median_s(lambda: x.sum(), repeat)
    return x.numel() * 4 / s / 1e9


@torch.inference_mode()
def gemm(m: int, k: int, n: int, repeat: int = 7) -> dict[str, float]:
    """GFLOP/s of an fp32 [m x k] x [k x n] product by MKL (F.linear) and by oneDNN (prepacked)."""
    x, w = torch.randn(m, k), torch.randn(n, k)
    flops = 2 * m * k * n
    inner = max(1, int(2e8 // flops))  # small products: enough calls for the clock
    out = {"mkl": flops / _median_s(lambda: torch.nn.functional.linear(x, w), repeat, inner) / 1e9}
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        packed = torch.ops.mkldnn._reorder_linear_weight(w)
        run = lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")  # noqa: E731
        out["packed"] = flops / _median_s(run, repeat, inner) / 1e9
    return out


@torch.inference_mode()
def int8_gemm(n: int = 2048, repeat: int = 3) -> float:
    """GOP/s of torch._int_mm on [n x n] int8 operands (0.0 where this torch lacks it)."""
    if not hasattr(torch, "_int_mm"):
        return 0.0
    a = torch.randint(-127, 128, (n, n), dtype=torch.int8)
    b = torch.randint(-127, 128, (n, n), dtype=torch.int8)
    return 2 * n ** 3 / _median_s(lambda: torch._int_mm(a, b), repeat) / 1e9


def probe(threads: int | None = None) -> Machine:
    """Name this machine and measure its limits (about 3 s)."""
    from llmos.drivers.choice_cache import cpu_model

    if threads:
        torch.set_num_threads(threads)
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    small, big = gemm(16, 576, 1536), gemm(2048, 2048, 2048, repeat=3)
    kernels = {f"16x576x1536 {k}": round(v, 1) for k, v in small.items()}
    kernels.update({f"2048^3 {k}": round(v, 1) for k, v in big.items()})
    return Machine(cpu=cpu_model(), vendor=info.get("vendor_id", ""), cores=os.cpu_count() or 1,
                   threads=torch.get_num_threads(), isa=[f for f in ISA if f in flags], l3=_l3(),
                   torch=torch.__version__, read_gb_s=round(read_bandwidth(), 2),
                   gemm_16_gflops=round(max(small.values()), 1), gemm_2048_gflops=round(max(big.values()), 1),
                   int8_2048_gops=round(int8_gemm(), 1),
                   gemm_kernels=kernels)


def linear_params(config) -> int:
    """Weights of every Linear layer a decode step reads (the LM head included), from a
    transformers config of the Llama shape."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    hd = getattr(config, "head_dim", None) or h // heads
    per_layer = h * heads * hd * 2 + h * kv * hd * 2 + 3 * h * inter
    return layers * per_layer + config.vocab_size * h


@dataclass
class Roofline:
    """The least time a decode step of n processes can take on a machine, and its tok/s."""

    n: int
    weight_bytes: int
    memory_ms: float  # weights / read bandwidth
    compute_ms: float  # 2 x weights x n FLOPs / the 2048^3 GEMM peak (int8's for int8 weights)
    bound_tok_s: float

    @property
    def bound(self) -> str:
        return "memory" if self.memory_ms >= self.compute_ms else "compute"


def roofline(m: Machine, params: int, bytes_per_weight: float, n: int, integer: bool | None = None) -> Roofline:
    """The bound for n processes on weights of `bytes_per_weight` (4: fp32; 1: int8), multiplied
    in integers (int8's peak) or in floats (fp32's; by default where a weight has 4 bytes)."""
    weight_bytes = int(params * bytes_per_weight)
    memory_ms = weight_bytes / (m.read_gb_s * 1e9) * 1e3
    integer = bytes_per_weight <= 1 if integer is None else integer
    peak = m.int8_2048_gops if integer and m.int8_2048_gops else m.gemm_2048_gflops
    compute_ms = 2 * params * n / (peak * 1e9) * 1e3
    return Roofline(n, weight_bytes, round(memory_ms, 3), round(compute_ms, 3),
                    round(n / max(memory_ms, compute_ms) * 1e3, 1))


def as_json(m: Machine) -> dict:
    return asdict(m)


if __name__ == "__main__":
    mach = probe(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    print(mach.line())
    print(json.dumps(as_json(mach), indent=2))
