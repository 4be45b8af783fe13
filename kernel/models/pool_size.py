"""How big a model's KV pool and host swap are: from the settings, else from what the driver
says the device can give (Driver.kv_budget), as plain arithmetic.

The pool, most specific setting first: `kv_pages`; `kv_memory` bytes; else the device's
budget (CUDA: 90% of the memory free once the weights are loaded, less 256 MiB for
activations, drivers/cuda.py); else, on a device that sets none (the CPU), DEFAULT_KV_MEMORY.
The swap: `swap_pages`; `swap_memory` bytes; else as many pages as the pool, within the
driver's host budget (a quarter of host RAM for all pools together, drivers/driver.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from llmos.drivers.driver import KVBudget
from llmos.kernel.errors import ResourceExhausted

DEFAULT_KV_MEMORY = 1 << 30  # a pool's bytes where neither the settings nor the device size it


@dataclass
class PoolSize:
    """A model's KV pool and swap in pages, and what decided the pool (for the load's log line)."""

    pages: int
    swap_pages: int
    source: str


def pool_size(page_bytes: int, budget: KVBudget, kv_pages: int | None = None, kv_memory: int | None = None,
              swap_pages: int | None = None, swap_memory: int | None = None) -> PoolSize:
    """The pool and swap for pages of `page_bytes`; ResourceExhausted when the device's
    budget holds not even one page."""
    if kv_pages:
        pages, source = kv_pages, "kv_pages"
    elif kv_memory:
        pages, source = max(1, kv_memory // page_bytes), "kv_memory"
    elif budget.pool is not None:
        pages, source = budget.pool // page_bytes, "the device's free memory"
        if pages < 1:
            raise ResourceExhausted(f"the device has {budget.pool} bytes for a KV pool after the model's weights, "
                                    f"less than one page ({page_bytes} bytes); free device memory or set "
                                    "--kv-memory / --kv-pages")
    else:
        pages, source = max(1, DEFAULT_KV_MEMORY // page_bytes), "the default 1GiB"
    if swap_pages is not None:
        swap = swap_pages
    elif swap_memory is not None:
        swap = swap_memory // page_bytes
    else:
        swap = min(pages, max(0, budget.swap) // page_bytes)
    return PoolSize(pages, swap, source)
