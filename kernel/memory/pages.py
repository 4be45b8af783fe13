"""PagePool: fixed-size KV pages with an O(1) free list and reference counts (like xv6's kalloc).

A free page keeps its prefix hash until it is reused, so the free list in LRU order *is*
the prefix cache's eviction order: cached pages cost nothing until memory is needed.
"""
from __future__ import annotations

from collections import OrderedDict


class OutOfPages(Exception):
    """Raised when the pool has no free page to hand out."""


class PagePool:
    """Fixed-size pages of one device's KV pool, tracked by reference count."""

    def __init__(self, num_pages: int, page_size: int) -> None:
        if num_pages <= 0 or page_size <= 0:
            raise ValueError(f"a page pool needs num_pages > 0 and page_size > 0, got {num_pages} and {page_size}")
        self.num_pages = num_pages
        self.page_size = page_size
        self.ref_count = [0] * num_pages
        self.page_hash: list[int | None] = [None] * num_pages
        # Free pages in LRU order: alloc() takes from the front, free() appends at the back.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_pages))
        self._cached: dict[int, int] = {}  # prefix hash -> page id, for full pages only
        self.generation = 0  # changes whenever the set of cached prefix hashes does

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_cached(self) -> int:
        """Free pages that still hold a reusable prefix."""
        return sum(1 for p in self._free if self.page_hash[p] is not None)

    def alloc(self) -> int:
        if not self._free:
            raise OutOfPages("the KV page pool is exhausted")
        page, _ = self._free.popitem(last=False)
        self._forget(page)
        self.ref_count[page] = 1
        return page

    def incref(self, page: int) -> None:
        if self.ref_count[page] == 0:
            del self._free[page]  # revive a cached free page
        self.ref_count[page] += 1

    def decref(self, page: int) -> None:
        if self.ref_count[page] <= 0:
            raise RuntimeError(f"page {page} freed twice")
        self.ref_count[page] -= 1
        if self.ref_count[page] == 0:
            self._free[page] = None

    def cached_hashes(self) -> list[int]:
        """The prefix hashes of every full page the cache holds, oldest published first."""
        return list(self._cached)

    def holds(self, prefix_hash: int) -> bool:
        return prefix_hash in self._cached

    def lookup(self, prefix_hash: int) -> int | None:
        """Find a page holding this prefix and take a reference to it."""
        page = self._cached.get(prefix_hash)
        if page is not None:
            self.incref(page)
        return page

    def publish(self, page: int, prefix_hash: int) -> None:
        """Record that a full page holds the prefix named by this hash."""
        if self.page_hash[page] is not None or prefix_hash in self._cached:
            return  # already published, or another page holds the same prefix
        self.page_hash[page] = prefix_hash
        self._cached[prefix_hash] = page
        self.generation += 1

    def _forget(self, page: int) -> None:
        h = self.page_hash[page]
        if h is not None:
            self.page_hash[page] = None
            if self._cached.get(h) == page:
                del self._cached[h]
                self.generation += 1
