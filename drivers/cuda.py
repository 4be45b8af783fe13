"""CUDADriver: torch on an NVIDIA GPU, with NVML telemetry (drivers/nvml.py)."""
from __future__ import annotations

import torch

from llmos.drivers import quant
from llmos.drivers.driver import DeviceInfo, KVBudget
from llmos.drivers.nvml import Telemetry, pci_bus_id
from llmos.drivers.torch_driver import TorchDriver

KV_FREE_SHARE = 0.9  # an unsized KV pool takes 90% of the memory free once its weights are loaded,
ACTIVATION_RESERVE = 256 << 20  # less this much, left for the steps' activations and logits


def pool_budget(free: int) -> int:
    """Bytes an unsized KV pool takes when the device has `free` bytes free (0: none fits)."""
    return max(0, int(free * KV_FREE_SHARE) - ACTIVATION_RESERVE)


class CUDADriver(TorchDriver):
    """Runs models on one CUDA device; telemetry (memory, utilisation, temperature) from NVML."""

    kind = "cuda"

    def __init__(self, index: int = 0) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA was asked for, but torch sees no CUDA device (this torch build or machine has none)")
        if index >= torch.cuda.device_count():
            raise RuntimeError(f"cuda:{index} does not exist: torch sees {torch.cuda.device_count()} CUDA device(s)")
        super().__init__(torch.device("cuda", index))
        self.index = index
        props = torch.cuda.get_device_properties(index)
        self.telemetry = Telemetry(pci_bus_id(props.pci_domain_id, props.pci_bus_id, props.pci_device_id))

    def describe(self) -> DeviceInfo:
        free, total = torch.cuda.mem_get_info(self.index)
        util, temp = self.telemetry.read()
        return DeviceInfo(name=torch.cuda.get_device_name(self.index), kind="cuda", index=self.index,
                          total_memory=total, free_memory=free, utilization=util, temperature=temp,
                          telemetry_error=self.telemetry.error)

    def free_memory(self) -> int:
        """Bytes the device has free now (what a KV pool may be sized from), counting what
        torch's caching allocator holds unused as free: torch allocates from it first."""
        cached = torch.cuda.memory_reserved(self.index) - torch.cuda.memory_allocated(self.index)
        return torch.cuda.mem_get_info(self.index)[0] + cached

    def kv_budget(self) -> KVBudget:
        """An unsized pool: pool_budget of the memory free; its pinned swap as TorchDriver's."""
        return KVBudget(pool=pool_budget(self.free_memory()), swap=self.swap_budget())

    def prepare(self, model: torch.nn.Module, cache_dir: str | None = None) -> str:
        """int8 weights zero-padded to the widths cuBLASLt's `_int_mm` takes (drivers/quant.py:
        pad_int8, exact); returns which kernels serve them ("" for no int8 weights)."""
        padded, groups = quant.pad_int8(model, quant.CUDA_INT_MM_MULTIPLE)
        if not groups:
            return ""
        return (f"int8: torch._int_mm (cuBLASLt) for {groups} groups, {padded} zero-padded to multiples of "
                f"{quant.CUDA_INT_MM_MULTIPLE}")

    def _empty_cache(self) -> None:
        torch.cuda.empty_cache()
