"""Device drivers: every difference between devices stays behind the Driver interface."""
from __future__ import annotations

from llmos.drivers.driver import DeviceInfo, Driver, ModelInfo, SamplingParams, SeqSlice, StepInput, TrainingDriver


def open_driver(device: str = "auto", threads: int | None = None, compile: bool = False) -> "Driver":
    """Open a driver for "auto", "cpu" or "cuda:N". `compile`: the CPU driver runs the decode steps
    of the models it can through torch.compile, with the same bits (drivers/compiled.py)."""
    import torch

    if device == "auto":
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        from llmos.drivers.cpu import CPUDriver
        return CPUDriver(threads, compile=compile)
    if device == "cuda" or device.startswith("cuda:"):
        from llmos.drivers.cuda import CUDADriver
        idx = device.partition(":")[2]
        if idx and not idx.isdigit():
            raise ValueError(f"bad device {device!r}: expected auto, cpu or cuda:N")
        return CUDADriver(int(idx or 0))
    raise ValueError(f"unknown device {device!r}: expected auto, cpu or cuda:N")


__all__ = ["DeviceInfo", "Driver", "ModelInfo", "SamplingParams", "SeqSlice", "StepInput", "TrainingDriver", "open_driver"]
