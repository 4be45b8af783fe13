"""MemoryManager: per-process page tables over one PagePool, with copy-on-write, fork and swap.

The manager never touches KV data. Every move of data it decides on (a copy-on-write copy,
a swap out or in) is appended to `ops` in order; the kernel hands them to the driver before
the next forward pass, which must apply them in that order.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from llmos.kernel.memory.pages import PagePool
from llmos.kernel.memory.prefix import page_hashes
from llmos.kernel.memory.swap import SwapSpace

COPY, SWAP_OUT, SWAP_IN = "copy", "out", "in"


@dataclass
class PageOps:
    """Ordered data moves for the driver: (kind, src, dst) with kind copy | out | in."""

    moves: list[tuple[str, int, int]] = field(default_factory=list)

    def take(self) -> list[tuple[str, int, int]]:
        moves, self.moves = self.moves, []
        return moves


@dataclass
class MemInfo:
    """Page counters of one KV pool, like /proc/meminfo."""

    page_size: int
    total: int
    free: int
    used: int
    shared: int
    cached: int
    swapped: int
    swap_total: int
    waste_tokens: int  # unused slots in processes' last, partial pages


class MemoryManager:
    """Page tables of every process that holds KV in one pool."""

    def __init__(self, num_pages: int, page_size: int = 16, swap_pages: int = 0, salt: int = 0) -> None:
        self.pool = PagePool(num_pages, page_size)
        self.swap = SwapSpace(swap_pages)
        self.page_size = page_size
        self.salt = salt
        self.tables: dict[int, list[int]] = {}
        self.swapped: dict[int, list[int]] = {}
        self.tokens: dict[int, int] = {}  # pid -> tokens the table covers
        self._hashes: dict[int, list[int]] = {}  # pid -> chain hashes of its full pages, in order
        self._salts: dict[int, int] = {}  # pid -> its prefix-cache namespace, where not the pool's own
        self.ops = PageOps()

    # --- queries -------------------------------------------------------------------------
    def pages_held(self, pid: int) -> int:
        return len(self.tables.get(pid, ())) or len(self.swapped.get(pid, ()))

    def is_swapped(self, pid: int) -> bool:
        return pid in self.swapped

    def pages_needed(self, pid: int, num_computed: int, num_tokens: int) -> int:
        """Free pages that allocate(pid, num_computed, num_tokens) would take."""
        table = self.tables.get(pid, [])
        new = max(0, -(-num_tokens // self.page_size) - len(table))
        return new + (1 if self._needs_cow(table, num_computed, num_tokens) else 0)

    def page_table(self, pid: int) -> list[int]:
        return self.tables[pid]

    def meminfo(self) -> MemInfo:
        pool = self.pool
        waste = sum(len(t) * self.page_size - self.tokens.get(pid, 0) for pid, t in self.tables.items())
        return MemInfo(
            page_size=self.page_size, total=pool.num_pages, free=pool.num_free,
            used=pool.num_pages - pool.num_free, shared=sum(1 for r in pool.ref_count if r > 1),
            cached=pool.num_cached, swapped=self.swap.num_used, swap_total=self.swap.num_slots,
            waste_tokens=max(0, waste))

    def prefix_hashes(self, tokens: Sequence[int], salt: int = 0) -> list[int]:
        """Chain hashes of the full pages of `tokens` that a prefix match may use. A nonzero
        `salt` puts them in a namespace of their own (a LoRA adapter's KV differs from the base's)."""
        usable = (len(tokens) - 1) // self.page_size
        return page_hashes(tokens[:usable * self.page_size], self.page_size, salt=self._seed(salt))

    def unpublished_hashes(self, pid: int, tokens: Sequence[int]) -> list[int]:
        """Chain hashes of pid's prompt pages not yet offered to the prefix cache, continuing
        from its last published page rather than rehashing the whole prefix."""
        done = self._hashes.get(pid, [])
        usable = (len(tokens) - 1) // self.page_size
        return page_hashes(tokens[:usable * self.page_size], self.page_size, start=len(done),
                           parent=done[-1] if done else None, salt=self._seed(self._salts.get(pid, 0)))

    def cached_pages(self, hashes: Sequence[int]) -> int:
        """How many of these chained pages the prefix cache holds right now."""
        n = 0
        while n < len(hashes) and self.pool.holds(hashes[n]):
            n += 1
        return n

    # --- allocation ------------------------------------------------------------------------
    def match_prefix(self, pid: int, tokens: Sequence[int], salt: int = 0) -> int:
        """Map cached pages holding a prefix of `tokens`; return how many tokens they cover.
        `salt` is pid's namespace (prefix_hashes) for this match and the pages it publishes.

        At least one token is always left to compute, so the process still gets logits.
        """
        assert pid not in self.tables, f"pid {pid} already has a page table"
        if salt:
            self._salts[pid] = salt
        table: list[int] = []
        hashes = self.prefix_hashes(tokens, salt)
        for h in hashes:
            page = self.pool.lookup(h)
            if page is None:
                break
            table.append(page)
        self.tables[pid] = table
        self._hashes[pid] = hashes[:len(table)]
        self.tokens[pid] = len(table) * self.page_size
        return self.tokens[pid]

    def allocate(self, pid: int, num_computed: int, num_tokens: int) -> bool:
        """Back tokens [num_computed, num_tokens) of pid with private, writable pages.

        All or nothing: returns False, changing nothing, when the pool is too small.
        """
        table = self.tables.setdefault(pid, [])
        if self.pages_needed(pid, num_computed, num_tokens) > self.pool.num_free:
            return False
        if self._needs_cow(table, num_computed, num_tokens):
            i = num_computed // self.page_size
            old, new = table[i], self.pool.alloc()
            self.ops.moves.append((COPY, old, new))
            self.pool.decref(old)
            table[i] = new
        while len(table) * self.page_size < num_tokens:
            table.append(self.pool.alloc())
        self.tokens[pid] = max(self.tokens.get(pid, 0), num_tokens)
        return True

    def truncate(self, pid: int, num_tokens: int) -> None:
        """Forget pid's KV past its first num_tokens (rejected speculative tokens): pages only
        they used go back to the pool. Full pages are hashed by publish alone, from the tokens
        the process kept, so no rejected content ever reaches the prefix cache."""
        table = self.tables.get(pid)
        if table is None or num_tokens >= self.tokens.get(pid, 0):
            return
        keep = -(-num_tokens // self.page_size)
        assert keep >= len(self._hashes.get(pid, ())), "a published page cannot be rolled back"
        for page in table[keep:]:
            self.pool.decref(page)
        del table[keep:]
        self.tokens[pid] = num_tokens

    def publish(self, pid: int, tokens: Sequence[int], num_computed: int) -> None:
        """Offer pid's newly completed full pages to the prefix cache."""
        hashes = self._hashes.setdefault(pid, [])
        full = num_computed // self.page_size
        if full <= len(hashes):
            return
        parent = hashes[-1] if hashes else None
        new = page_hashes(tokens[:full * self.page_size], self.page_size, start=len(hashes),
                          parent=parent, salt=self._seed(self._salts.get(pid, 0)))
        table = self.tables[pid]
        for i, h in enumerate(new, start=len(hashes)):
            self.pool.publish(table[i], h)
        hashes.extend(new)

    def fork(self, parent: int, child: int) -> None:
        """Share every parent page with the child; the first write to a shared page copies it."""
        table = self.tables[parent]
        for page in table:
            self.pool.incref(page)
        self.tables[child] = list(table)
        self._hashes[child] = list(self._hashes.get(parent, []))
        if parent in self._salts:
            self._salts[child] = self._salts[parent]
        self.tokens[child] = self.tokens.get(parent, 0)

    def free(self, pid: int) -> None:
        for page in self.tables.pop(pid, []):
            self.pool.decref(page)
        self.swap.free(self.swapped.pop(pid, []))
        self._hashes.pop(pid, None)
        self._salts.pop(pid, None)
        self.tokens.pop(pid, None)

    # --- swap --------------------------------------------------------------------------------
    def swap_out(self, pid: int) -> bool:
        """Move pid's pages to host slots. False (changing nothing) if swap space is short."""
        table = self.tables.get(pid, [])
        slots = self.swap.alloc(len(table))
        if slots is None:
            return False
        for page, slot in zip(table, slots):
            self.ops.moves.append((SWAP_OUT, page, slot))
            self.pool.decref(page)
        del self.tables[pid]
        self.swapped[pid] = slots
        return True

    def swap_in(self, pid: int) -> bool:
        """Bring pid's pages back. False (changing nothing) if the pool is short."""
        slots = self.swapped[pid]
        if len(slots) > self.pool.num_free:
            return False
        table = [self.pool.alloc() for _ in slots]
        for slot, page in zip(slots, table):
            self.ops.moves.append((SWAP_IN, slot, page))
        del self.swapped[pid]
        self.swap.free(slots)
        self.tables[pid] = table
        for page, h in zip(table, self._hashes.get(pid, [])):
            self.pool.publish(page, h)
        return True

    def _seed(self, salt: int) -> int:
        return hash((self.salt, salt)) if salt else self.salt

    def _needs_cow(self, table: list[int], num_computed: int, num_tokens: int) -> bool:
        i = num_computed // self.page_size
        return (num_tokens > num_computed and num_computed % self.page_size != 0
                and i < len(table) and self.pool.ref_count[table[i]] > 1)
