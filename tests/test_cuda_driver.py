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


# --- int8 on CUDA: cuBLASLt's _int_mm takes K and N in multiples of 8 only -----------------------------
def strict_int_mm(calls):
    """torch._int_mm with the shape checks of its CUDA kernel (at::native::_int_mm_out_cuda)."""
    real = torch._int_mm

    def int_mm(a, b):
        k, n = b.shape
        assert a.shape[1] == k and k % 8 == 0 and n % 8 == 0, f"_int_mm on CUDA refuses {tuple(a.shape)} x {(k, n)}"
        calls.append((k, n))
        return real(a, b)
    return int_mm


def test_padded_weights_give_the_same_integers():
    from llmos.drivers.quant import pad_weight

    torch.manual_seed(0)
    w = torch.randint(-127, 128, (13, 7), dtype=torch.int8)
    p = pad_weight(w, 8)
    assert p.shape == (16, 8) and torch.equal(p[:13, :7], w) and p[13:].abs().sum() == 0 and p[:, 7:].abs().sum() == 0
    x = torch.randint(-127, 128, (5, 13), dtype=torch.int8)
    padded = torch._int_mm(torch.nn.functional.pad(x, (0, 3)), p)[:, :7]
    assert torch.equal(padded, x.int() @ w.int())  # the int32 reference
    assert pad_weight(p, 8) is p  # already a multiple: left as it is


def odd_int8_model():
    """A quantized tiny llama whose widths are not multiples of 8: o_proj and down_proj take 36
    and 50 inputs, gate/up give 100 outputs, the LM head 389 (as a vocabulary of 32001 would)."""
    from tiny import tiny_model

    from llmos.drivers.quant import quantize_model

    model = tiny_model("llama", hidden_size=36, intermediate_size=50, num_attention_heads=2, num_key_value_heads=1,
                       vocab_size=389)
    quantize_model(model, "int8", calibration=list(range(3, 200)))
    return model


def test_the_cuda_drivers_padding_keeps_every_logit(monkeypatch):
    import copy

    from llmos.drivers.cuda import CUDADriver
    from llmos.drivers.quant import Int8Group

    model = odd_int8_model()
    shapes = [tuple(g.weight_t.shape) for g in model.modules() if isinstance(g, Int8Group)]
    assert (389 in {n for _, n in shapes}) and any(k % 8 for k, _ in shapes)
    padded = copy.deepcopy(model)
    line = CUDADriver.prepare(None, padded)  # the driver's own rewriting (it reads nothing of the device)
    odd = sum(bool(k % 8 or n % 8) for k, n in shapes)
    assert line == f"int8: torch._int_mm (cuBLASLt) for {len(shapes)} groups, {odd} zero-padded to multiples of 8"
    ids = torch.tensor([[5, 17, 300, 42, 7, 99, 250]])
    with torch.no_grad():
        want = model(ids).logits
        calls = []
        monkeypatch.setattr(torch, "_int_mm", strict_int_mm(calls))
        got = padded(ids).logits
    assert len(calls) == 2 * 4 + 1 and torch.equal(got, want)  # per layer qkv, o, gate/up, down; the head


def test_a_vocabulary_of_32001_serves_exactly_through_the_kernel(monkeypatch, tokenizer):
    """The kernel on the CPU, int8 served the CUDA driver's way: greedy output equals
    generate() on the unpadded model, and every product has cuBLASLt's shapes."""
    from conftest import Reference

    from llmos.drivers.cpu import CPUDriver
    from llmos.drivers.cuda import CUDADriver
    from llmos.kernel import ROOT, Kernel, KernelConfig, SchedConfig, SpawnSpec, StopRules

    class PaddingCPU(CPUDriver):
        prepare = CUDADriver.prepare

    model = odd_int8_model()
    ref = Reference(model)
    prompts = [[5, 17, 300, 42], list(range(3, 30)), [250, 7]]
    want = [ref.greedy(t, 8) for t in prompts]
    k = Kernel(PaddingCPU(), KernelConfig(page_size=4, kv_pages=64, sched=SchedConfig(token_budget=16)))
    calls = []
    monkeypatch.setattr(torch, "_int_mm", strict_int_mm(calls))
    m = k.adopt_model("tiny", model, tokenizer)
    assert "9 groups, 9 zero-padded" in m.info.kernels
    procs = [k.spawn(ROOT, SpawnSpec("tiny", tokens=t, stop=StopRules(max_tokens=8, ignore_eos=True))) for t in prompts]
    k.run_until_idle()
    assert [p.out_tokens for p in procs] == want and calls


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_on_a_gpu_odd_int8_widths_serve_and_the_pool_is_sized_from_free_memory(tokenizer):
    """On a real GPU: the odd-width int8 model serves through the kernel (before the padding,
    _int_mm refused its first step), equal to generate() on the same padded weights; its pool
    is what cuda.pool_budget makes of the memory free."""
    import copy

    from conftest import Reference

    from llmos.drivers.cuda import CUDADriver, pool_budget
    from llmos.drivers.quant import pad_int8
    from llmos.kernel import ROOT, Kernel, KernelConfig, SchedConfig, SpawnSpec, StopRules

    model = odd_int8_model()
    ref_model = copy.deepcopy(model).to("cuda")
    pad_int8(ref_model)
    ref = Reference(ref_model)
    d = CUDADriver(0)
    k = Kernel(d, KernelConfig(page_size=16, sched=SchedConfig(token_budget=64)))
    m = k.adopt_model("tiny", model, tokenizer)
    page = m.kv_bytes // m.memory.pool.num_pages
    assert m.pool_source == "the device's free memory" and m.memory.pool.num_pages > 1000
    assert abs(m.kv_bytes - pool_budget(d.free_memory() + m.kv_bytes)) < 2 * page + (64 << 20)
    prompts = [[5, 17, 300, 42], list(range(3, 30)), [250, 7]]
    procs = [k.spawn(ROOT, SpawnSpec("tiny", tokens=t, stop=StopRules(max_tokens=8, ignore_eos=True))) for t in prompts]
    k.run_until_idle()
    assert [p.out_tokens for p in procs] == [ref.greedy(t, 8) for t in prompts]
