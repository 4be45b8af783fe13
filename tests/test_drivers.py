"""Drivers: device selection, telemetry, the wire format, and CUDA where a GPU exists."""
import pytest
import torch

from llmos.drivers import open_driver
from llmos.drivers.driver import DeviceInfo, SamplingParams, SeqSlice, StepInput
from llmos.drivers.wire import pack_info, pack_step, unpack_info, unpack_step
from llmos.kernel import Kernel, KernelConfig, StopRules


def test_cpu_driver_describes_the_host():
    d = open_driver("cpu", threads=2)
    info = d.describe()
    assert info.kind == "cpu" and info.threads == 2 and 0 < info.free_memory <= info.total_memory
    assert unpack_info(DeviceInfo, pack_info(info)) == info


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "tpu:0", ""])
def test_bad_device_names_are_refused(bad):
    with pytest.raises(ValueError, match="auto, cpu or cuda:N"):
        open_driver(bad)


def test_auto_picks_cpu_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert open_driver("auto").kind == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA device"):
        open_driver("cuda:0")


def test_a_step_survives_the_wire_unchanged():
    step = StepInput([SeqSlice(3, [1, 2, 3], 0, [4, 5], True, SamplingParams(0.7, 40, 0.9, 11)),
                      SeqSlice(9, [7], 33, [1, 2, 8], False)], [("copy", 1, 2), ("out", 3, 0)])
    assert unpack_step(pack_step(step)) == step


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_cuda_driver_matches_transformers(tokenizer):
    from conftest import Reference
    from tiny import tiny_model

    d = open_driver("cuda:0")
    info = d.describe()
    assert info.kind == "cuda" and info.total_memory > 0
    model = tiny_model("llama")
    ref = Reference(model)
    ref.model.to("cuda:0")  # the bar is transformers on the same device
    k = Kernel(d, KernelConfig(page_size=4, kv_pages=64))
    k.adopt_model("tiny", model, tokenizer)
    batch = [[5, 6, 7], list(range(10, 40)), [9] * 9]
    procs = [k.spawn("tiny", tokens=t, stop=StopRules(max_tokens=10, ignore_eos=True)) for t in batch]
    k.run_until_idle()
    for t, p in zip(batch, procs):
        assert p.out_tokens == ref.greedy(t, 10)
