"""NVML telemetry of one CUDA device, found by its PCI bus id.

torch numbers devices after CUDA_VISIBLE_DEVICES (and in CUDA's own order), NVML numbers
every GPU of the machine in its own: under `CUDA_VISIBLE_DEVICES=2,3`, torch's cuda:0 is
NVML's device 2. The PCI bus id names the same board for both, so the handle is looked up by
it. A failure is kept and reported (DeviceInfo.telemetry_error, and the log once), never
swallowed: an operator must be able to tell "0% busy" from "unknown".
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("llmos.drivers")


def pci_bus_id(domain: int, bus: int, device: int) -> str:
    """NVML's form of a PCI address: "0000:3b:00.0"."""
    return f"{domain:04x}:{bus:02x}:{device:02x}.0"


class Telemetry:
    """Utilization and temperature of one GPU from NVML, or why they are unknown."""

    def __init__(self, bus_id: str, nvml: Any = None) -> None:
        self.bus_id = bus_id
        self.error = ""
        self._nvml = nvml
        self._handle = None
        try:
            if self._nvml is None:
                import pynvml  # provided by nvidia-ml-py (the `cuda` extra)
                self._nvml = pynvml
            self._nvml.nvmlInit()
            self._handle = self._nvml.nvmlDeviceGetHandleByPciBusId(bus_id)
        except Exception as e:  # noqa: BLE001 - NVML absent, no driver, or no such board: all reported
            self._fail(f"NVML has no device at PCI {bus_id}: {type(e).__name__}: {e}")

    def read(self) -> tuple[float | None, float | None]:
        """(utilization %, temperature °C); None for what NVML could not say (see .error)."""
        if self._handle is None:
            return None, None
        try:
            util = float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
            temp = float(self._nvml.nvmlDeviceGetTemperature(self._handle, self._nvml.NVML_TEMPERATURE_GPU))
        except Exception as e:  # noqa: BLE001
            self._fail(f"NVML read of PCI {self.bus_id} failed: {type(e).__name__}: {e}")
            return None, None
        self.error = ""
        return util, temp

    def _fail(self, why: str) -> None:
        if why != self.error:
            log.warning("%s", why)
        self.error = why
