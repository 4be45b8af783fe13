"""The page allocator, page tables, prefix cache, fork and swap, as plain Python: no model."""
from hypothesis import given, settings, strategies as st

from llmos.kernel.memory import MemoryManager, PagePool
from llmos.kernel.memory.pages import OutOfPages
import pytest


def test_pool_alloc_free_refcount():
    pool = PagePool(4, 16)
    a, b = pool.alloc(), pool.alloc()
    assert pool.num_free == 2 and a != b
    pool.incref(a)
    pool.decref(a)
    assert pool.num_free == 2
    pool.decref(a)
    assert pool.num_free == 3
    with pytest.raises(RuntimeError, match="freed twice"):
        pool.decref(a)
    pool.alloc(), pool.alloc(), pool.alloc()
    with pytest.raises(OutOfPages):
        pool.alloc()


def test_free_pages_keep_their_prefix_until_reused_lru():
    pool = PagePool(2, 4)
    a = pool.alloc()
    pool.publish(a, 111)
    pool.decref(a)
    assert pool.num_cached == 1
    assert pool.lookup(111) == a and pool.ref_count[a] == 1  # revived from the free list
    pool.decref(a)
    b = pool.alloc()  # LRU: the never-used page goes first
    assert b != a and pool.num_cached == 1
    c = pool.alloc()  # now the cached page is evicted
    assert c == a and pool.lookup(111) is None


def test_prefix_sharing_maps_the_same_pages():
    mm = MemoryManager(16, page_size=4)
    prompt = list(range(18))
    assert mm.match_prefix(1, prompt) == 0
    assert mm.allocate(1, 0, 18)
    mm.publish(1, prompt, 18)
    assert mm.match_prefix(2, prompt + [99]) == 16  # four full pages shared
    assert mm.tables[2] == mm.tables[1][:4]
    assert mm.meminfo().shared == 4
    # a prompt that is exactly page-aligned leaves its last page to compute, for logits
    assert mm.match_prefix(3, prompt[:16]) == 12


def test_fork_shares_pages_and_copies_partial_page_on_first_write():
    mm = MemoryManager(16, page_size=4)
    assert mm.allocate(1, 0, 6)  # pages: full + partial
    mm.fork(1, 2)
    assert mm.tables[1] == mm.tables[2]
    assert mm.meminfo().shared == 2
    assert mm.allocate(2, 6, 7)  # child writes into the shared partial page: copy-on-write
    moves = mm.ops.take()
    assert moves == [("copy", mm.tables[1][1], mm.tables[2][1])]
    assert mm.tables[1][0] == mm.tables[2][0] and mm.tables[1][1] != mm.tables[2][1]
    assert mm.allocate(1, 6, 7) and mm.ops.take() == []  # the parent's page is private again


def test_swap_out_and_in_round_trip():
    mm = MemoryManager(4, page_size=4, swap_pages=4)
    assert mm.allocate(1, 0, 10)
    pages = list(mm.tables[1])
    assert mm.swap_out(1)
    assert mm.is_swapped(1) and mm.meminfo().swapped == 3 and mm.pool.num_free == 4
    outs = mm.ops.take()
    assert [m[0] for m in outs] == ["out"] * 3 and [m[1] for m in outs] == pages
    assert mm.allocate(2, 0, 16)  # someone else takes the whole pool
    assert not mm.swap_in(1)  # all or nothing
    mm.free(2)
    assert mm.swap_in(1)
    ins = mm.ops.take()
    assert [m[0] for m in ins] == ["in"] * 3
    assert [m[1] for m in ins] == [m[2] for m in outs]  # the same host slots come back
    assert mm.meminfo().swapped == 0


def test_allocate_is_all_or_nothing():
    mm = MemoryManager(2, page_size=4)
    assert not mm.allocate(1, 0, 9)
    assert mm.pool.num_free == 2 and mm.tables[1] == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["grow", "fork", "free", "swap_out", "swap_in", "share"]),
                          st.integers(0, 5), st.integers(1, 9)), max_size=60))
def test_random_operations_keep_reference_counts_exact(ops):
    """No page leaks or is freed twice, whatever the order of operations."""
    mm = MemoryManager(12, page_size=4, swap_pages=8)
    tokens: dict[int, list[int]] = {}
    for op, pid, n in ops:
        if op == "grow" and pid in mm.tables:
            have = len(tokens[pid])
            if mm.allocate(pid, have, have + n):
                tokens[pid] += [pid * 100 + have + i for i in range(n)]
                mm.publish(pid, tokens[pid], len(tokens[pid]))
        elif op == "share" and pid not in mm.tables and not mm.is_swapped(pid):
            tokens[pid] = [7] * (n * 3)
            tokens[pid] = tokens[pid][:mm.match_prefix(pid, tokens[pid])]
        elif op == "fork" and pid in mm.tables:
            child = 10 + pid
            if child not in mm.tables and not mm.is_swapped(child):
                mm.fork(pid, child)
                tokens[child] = list(tokens[pid])
        elif op == "free":
            mm.free(pid)
            tokens.pop(pid, None)
        elif op == "swap_out" and pid in mm.tables:
            mm.swap_out(pid)
        elif op == "swap_in" and mm.is_swapped(pid):
            mm.swap_in(pid)
        refs = [0] * mm.pool.num_pages
        for table in mm.tables.values():
            for page in table:
                refs[page] += 1
        assert refs == mm.pool.ref_count
        assert mm.pool.num_free == sum(1 for r in refs if r == 0)
        assert mm.swap.num_used == sum(len(s) for s in mm.swapped.values())
