"""CUDADriver: torch on an NVIDIA GPU, with NVML telemetry (drivers/nvml.py)."""
from __future__ import annotations

import torch

from llmos.drivers.driver import DeviceInfo
from llmos.drivers.nvml import Telemetry, pci_bus_id
from llmos.drivers.torch_driver import TorchDriver


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
        """Bytes the device has free now (what a KV pool may be sized from)."""
        return torch.cuda.mem_get_info(self.index)[0]

    def _empty_cache(self) -> None:
        torch.cuda.empty_cache()
