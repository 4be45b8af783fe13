"""How a model's KV pool and swap are sized (kernel/models/pool_size.py, Driver.kv_budget), and
what a pool that cannot be had leaves behind: nothing, and a daemon that serves on."""
import math

import psutil
import pytest
import torch

from llmos.drivers.cpu import CPUDriver
from llmos.drivers.cuda import ACTIVATION_RESERVE, CUDADriver, pool_budget
from llmos.drivers.driver import SWAP_HOST_SHARE, KVBudget
from llmos.kernel import ROOT, Kernel, KernelConfig, SpawnSpec, StopRules
from llmos.kernel.errors import ResourceExhausted
from llmos.kernel.models.pool_size import DEFAULT_KV_MEMORY, pool_size
from llmos.syscalls.sdk import SyscallError

from daemon import start_daemon
from tiny import tiny_model

PAGE = 4096  # bytes of a page in the arithmetic tests
GIB = 1 << 30


def test_the_most_specific_setting_sizes_the_pool():
    budget = KVBudget(pool=10 * GIB, swap=GIB)
    assert pool_size(PAGE, budget, kv_pages=7, kv_memory=GIB).pages == 7
    assert pool_size(PAGE, budget, kv_memory=GIB).pages == GIB // PAGE
    auto = pool_size(PAGE, budget)
    assert (auto.pages, auto.source) == (10 * GIB // PAGE, "the device's free memory")
    cpu = pool_size(PAGE, KVBudget(pool=None, swap=GIB))  # a device with no default: today's 1GiB
    assert (cpu.pages, cpu.source) == (DEFAULT_KV_MEMORY // PAGE, "the default 1GiB") and DEFAULT_KV_MEMORY == GIB
    assert pool_size(PAGE, budget, kv_memory=100).pages == 1  # an explicit size below a page: one page, as before


def test_a_device_with_less_than_a_page_free_refuses_by_name():
    with pytest.raises(ResourceExhausted, match=r"the device has 4095 bytes for a KV pool .* less than one page "
                                                r"\(4096 bytes\)"):
        pool_size(PAGE, KVBudget(pool=PAGE - 1, swap=GIB))


def test_swap_is_the_pool_within_the_hosts_bound_unless_set():
    budget = KVBudget(pool=None, swap=100 * PAGE)
    assert pool_size(PAGE, budget, kv_pages=40).swap_pages == 40       # as many as the pool
    assert pool_size(PAGE, budget, kv_pages=400).swap_pages == 100     # bounded by the host's budget
    assert pool_size(PAGE, KVBudget(None, 0), kv_pages=40).swap_pages == 0
    assert pool_size(PAGE, budget, kv_pages=400, swap_memory=300 * PAGE + 5).swap_pages == 300  # --swap-memory
    assert pool_size(PAGE, budget, kv_pages=400, swap_pages=1000, swap_memory=PAGE).swap_pages == 1000  # --swap-pages
    assert pool_size(PAGE, budget, kv_pages=400, swap_memory=0).swap_pages == 0


def test_cuda_takes_nine_tenths_of_the_free_memory_less_the_activation_reserve():
    assert ACTIVATION_RESERVE == 256 << 20
    assert pool_budget(100 * GIB) == int(100 * GIB * 0.9) - ACTIVATION_RESERVE
    assert pool_budget(200 << 20) == 0  # less than the reserve: nothing (the kernel then refuses by name)


class FakeGPU(CPUDriver):
    """The CPU driver with the CUDA driver's sizing, on a device that reports `free` bytes free."""

    kv_budget = CUDADriver.kv_budget

    def __init__(self, free: int) -> None:
        super().__init__()
        self.free = free

    def free_memory(self) -> int:
        return self.free


def page_bytes(model, page_size=4):
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * page_size * cfg.num_key_value_heads * head_dim * 4


def test_an_unsized_pool_takes_what_the_device_has_free(tokenizer):
    model = tiny_model()
    free = 300 << 20
    k = Kernel(FakeGPU(free), KernelConfig(page_size=4))
    m = k.adopt_model("tiny", model, tokenizer)
    assert m.memory.pool.num_pages == pool_budget(free) // page_bytes(model) > 1000
    assert m.kv_bytes == m.memory.pool.num_pages * page_bytes(model) and m.pool_source == "the device's free memory"


def test_the_cpu_keeps_1gib_and_bounds_swap_by_the_pools_already_held(tokenizer):
    d = CPUDriver()
    bound = int(psutil.virtual_memory().total * SWAP_HOST_SHARE)
    assert d.kv_budget() == KVBudget(pool=None, swap=bound)
    k = Kernel(d, KernelConfig(page_size=4, kv_pages=64, swap_pages=1000))
    model = tiny_model()
    k.adopt_model("tiny", model, tokenizer)
    assert d.kv_budget().swap == bound - 1000 * page_bytes(model)  # what a second model's swap may still take


class FailingAlloc(CPUDriver):
    """A CPU driver whose tensors for `name`'s pool cannot be allocated, as on a GPU out of memory."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.failing = name

    def alloc_kv(self, name, num_pages, page_size, swap_pages):
        if name == self.failing:
            def oom(*_):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            self.runners[name].alloc_kv = oom
        return super().alloc_kv(name, num_pages, page_size, swap_pages)


def test_a_pool_that_cannot_be_allocated_unloads_the_weights(tokenizer):
    d = FailingAlloc("big")
    k = Kernel(d, KernelConfig(page_size=4, kv_pages=64))
    k.adopt_model("tiny", tiny_model(), tokenizer)
    with pytest.raises(ResourceExhausted, match=r"cannot serve model 'big': a KV pool of 64 pages \(131072 bytes\) "
                                                r"with 64 swap pages \(131072 bytes\) could not be allocated on cpu "
                                                r"\(\d+ bytes free\): CUDA out of memory.*its weights are unloaded"):
        k.adopt_model("big", tiny_model(seed=1), tokenizer)
    assert "big" not in k.models and set(d.runners) == {"tiny"}
    p = k.spawn(ROOT, SpawnSpec("tiny", tokens=[5, 6, 7], stop=StopRules(max_tokens=4, ignore_eos=True)))
    k.run_until_idle()
    assert p.state.value == "exited" and len(p.out_tokens) == 4


def test_any_other_failure_unloads_the_weights_too(tokenizer):
    class Broken(CPUDriver):
        def kv_budget(self):
            raise RuntimeError("telemetry gone")
    d = Broken()
    k = Kernel(d, KernelConfig(page_size=4, kv_pages=8))
    with pytest.raises(RuntimeError, match="telemetry gone"):
        k.adopt_model("tiny", tiny_model(), tokenizer)
    assert d.runners == {} and k.models == {}


# --- through a real daemon: a pool larger than the memory free -------------------------------------------
POOL_PAGES = 16384  # the daemon's --kv-pages: 128 MiB for the tiny model, pages of 16 tokens


@pytest.fixture(scope="module")
def wide_dir(tmp_path_factory, tokenizer):
    """A one-layer model whose KV is so wide that POOL_PAGES of it need twice the host's free memory."""
    heads = 8
    head_dim = 2 * math.ceil(2 * psutil.virtual_memory().available / (POOL_PAGES * 2 * 16 * heads * 4) / 2)
    path = tmp_path_factory.mktemp("models") / "wide"
    tiny_model("llama", num_hidden_layers=1, num_attention_heads=heads, num_key_value_heads=heads,
               head_dim=head_dim).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_the_daemon_refuses_a_pool_past_free_memory_and_serves_on(tmp_path, tiny_model_dir, wide_dir):
    d = start_daemon(tmp_path / "state", str(tiny_model_dir), "--kv-pages", str(POOL_PAGES), "--page-size", "16")
    try:
        with d.client(timeout=120) as c:
            with pytest.raises(SyscallError) as e:
                c.load(str(wide_dir))
            assert e.value.code == "resource_exhausted"
            assert (f"cannot serve model 'wide': a KV pool of {POOL_PAGES} pages (" in e.value.message
                    and "bytes of host memory available; its weights are unloaded" in e.value.message), e.value.message
            assert [m.name for m in c.models().loaded] == ["tiny-llama"]
            assert any(f"{POOL_PAGES} KV pages sized by kv_pages" in ln.msg for ln in c.dmesg())
            assert c.generate("tiny-llama", "Hello", max_tokens=4, ignore_eos=True)
            assert c.load(str(tiny_model_dir), name="second").kv_pages == POOL_PAGES  # loads go on
    finally:
        d.stop_cleanly()
