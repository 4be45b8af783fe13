"""KV memory: pages, page tables, the prefix cache and swap (no model needed)."""
from llmos.kernel.memory.pages import PagePool, OutOfPages
from llmos.kernel.memory.prefix import page_hashes
from llmos.kernel.memory.swap import SwapSpace
from llmos.kernel.memory.vm import MemoryManager, MemInfo, PageOps

__all__ = ["PagePool", "OutOfPages", "page_hashes", "SwapSpace", "MemoryManager", "MemInfo", "PageOps"]
