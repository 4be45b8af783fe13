"""CUDADriver: torch on an NVIDIA GPU, with pynvml telemetry."""
from __future__ import annotations

import torch

from llmos.drivers.driver import DeviceInfo
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
        self._nvml = _nvml_handle(index)

    def describe(self) -> DeviceInfo:
        free, total = torch.cuda.mem_get_info(self.index)
        info = DeviceInfo(name=torch.cuda.get_device_name(self.index), kind="cuda", index=self.index,
                          total_memory=total, free_memory=free)
        if self._nvml is not None:
            import pynvml
            try:
                info.utilization = float(pynvml.nvmlDeviceGetUtilizationRates(self._nvml).gpu)
                info.temperature = float(pynvml.nvmlDeviceGetTemperature(self._nvml, pynvml.NVML_TEMPERATURE_GPU))
            except pynvml.NVMLError:
                pass
        return info

    def _empty_cache(self) -> None:
        torch.cuda.empty_cache()


def _nvml_handle(index: int):
    try:
        import pynvml
        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:  # NVML missing or unusable: telemetry degrades to torch's own figures
        return None
