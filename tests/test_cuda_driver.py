"""The CUDA driver's device handling that can be checked without a GPU, and (marked cuda) on one."""
import pytest
import torch

from llmos.drivers.nvml import Telemetry, pci_bus_id


class FakeNVML:
    """NVML's API surface for two boards, the second one at 0000:3b:00.0."""

    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    def __init__(self, broken_reads: bool = False):
        self.boards = {"0000:1a:00.0": (11, 40), "0000:3b:00.0": (77, 65)}
        self.broken_reads = broken_reads

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, i):  # what the old code used: the wrong board under CUDA_VISIBLE_DEVICES
        return list(self.boards)[i]

    def nvmlDeviceGetHandleByPciBusId(self, bus_id):
        if bus_id not in self.boards:
            raise self.NVMLError("Not Found")
        return bus_id

    def nvmlDeviceGetUtilizationRates(self, h):
        if self.broken_reads:
            raise self.NVMLError("GPU is lost")
        return type("U", (), {"gpu": self.boards[h][0]})()

    def nvmlDeviceGetTemperature(self, h, sensor):
        return self.boards[h][1]


def test_the_pci_address_is_nvmls_form():
    assert pci_bus_id(0, 0x3B, 0) == "0000:3b:00.0"
    assert pci_bus_id(1, 0xDC, 0x1F) == "0001:dc:1f.0"


def test_telemetry_reads_the_board_at_the_bus_id_not_the_index():
    t = Telemetry("0000:3b:00.0", FakeNVML())
    assert t.read() == (77.0, 65.0) and t.error == ""


def test_a_missing_board_or_a_failed_read_is_reported(caplog):
    t = Telemetry("0000:99:00.0", FakeNVML())
    assert t.read() == (None, None) and "NVML has no device at PCI 0000:99:00.0" in t.error
    assert "0000:99:00.0" in caplog.text
    t = Telemetry("0000:1a:00.0", FakeNVML(broken_reads=True))
    assert t.read() == (None, None) and "GPU is lost" in t.error


def test_without_an_nvidia_driver_the_reason_is_kept():
    t = Telemetry("0000:3b:00.0")  # the real pynvml: on a machine with no NVIDIA driver it cannot init
    if t.error == "":
        pytest.skip("this machine has NVML and a board at that address")
    assert t.read() == (None, None) and "NVML" in t.error


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_cuda_telemetry_names_the_same_board_as_torch():
    import pynvml

    from llmos.drivers.cuda import CUDADriver

    d = CUDADriver(0)
    info = d.describe()
    assert info.telemetry_error == "" and info.utilization is not None, info.telemetry_error
    h = pynvml.nvmlDeviceGetHandleByPciBusId(d.telemetry.bus_id)
    assert pynvml.nvmlDeviceGetName(h) in (torch.cuda.get_device_name(0), torch.cuda.get_device_name(0).encode())
