"""CPUDriver: torch on the host CPU."""
from __future__ import annotations

import platform

import psutil
import torch

from llmos.drivers import choice, compiled, ext, stack
from llmos.drivers.driver import DeviceInfo
from llmos.drivers.int4 import Int4Group
from llmos.drivers.quant import Int8Group
from llmos.drivers.runner import ModelRunner
from llmos.drivers.torch_driver import TorchDriver


class CPUDriver(TorchDriver):
    """Runs models on the CPU with a configurable number of intra-op threads."""

    kind = "cpu"

    def __init__(self, threads: int | None = None, compile: bool = False) -> None:
        super().__init__(torch.device("cpu"))
        if threads:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        self.compile = compile

    def compile_decode(self, runner: ModelRunner, cache_dir: str | None = None) -> str:
        """How the model's decode steps run, for the kernels line: each step as one C++ call where
        DecodeStack serves it (drivers/stack.py; the same bits as the direct path), and with
        `compile`, the steps it does not serve through torch.compile where that keeps every bit
        (drivers/compiled.py)."""
        parts = []
        if stack.problem(runner.lean) is None:
            runner.stack = stack.StackedDecode(runner.lean)
            whole = runner.stack.serves_every_row_count()
            parts.append("decode steps in one C++ call (llmos.DecodeStack" + ("" if whole else ", at some row counts")
                         + "; the same bits as eager)")
            if whole and self.compile:
                return parts[0] + "; nothing left to compile"
        if not self.compile:
            return "; ".join(parts)
        why = compiled.problem(runner.lean)
        if why is not None:
            return "; ".join(parts + [f"decode steps eager: {why}"])
        runner.compiled = compiled.CompiledDecode(runner.lean, cache_dir)
        return "; ".join(parts + ["decode steps compiled (torch.compile; the same bits as eager)"])

    def prepare(self, model: torch.nn.Module, cache_dir: str | None = None) -> str:
        """Serve each Linear shape in the form measured fastest on this CPU (drivers/choice.py),
        the measurement cached in `cache_dir`; returns the one-line summary of the choice (with
        int4's blocks, and how int8 activations are quantized: the fused op of drivers/ext.py, or
        torch ops)."""
        line = choice.serve(model, cache_dir)
        groups = len({id(m) for m in model.modules() if isinstance(m, Int4Group)})
        if groups:
            int4 = f"{groups} groups of Q4_1 and Q8_0 blocks in fp32 (llmos::block_dot)"
            line = "; ".join(part for part in (line, int4) if part)
        if any(isinstance(m, Int8Group) for m in model.modules()):
            line += "; int8 activations: " + ("fused op" if ext.available() else "torch ops (fused op not built)")
        return line

    def free_memory(self) -> int:
        """Bytes of host memory available now."""
        return psutil.virtual_memory().available

    def describe(self) -> DeviceInfo:
        mem = psutil.virtual_memory()
        return DeviceInfo(name=_cpu_name(), kind="cpu", index=0, total_memory=mem.total, free_memory=mem.available,
                          utilization=psutil.cpu_percent(interval=None), threads=self.threads)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"
