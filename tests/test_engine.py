"""Every greedy process must equal transformers' generate() on the same prompt alone,
whatever else shares its batches: other lengths, forks, prefix hits, swap, preemption."""
import random

import pytest

from llmos.kernel import ROOT, SpawnSpec, StopRules

FAMILIES = ["llama", "qwen2", "mistral"]


def prompts(n, seed=0, lo=1, hi=40):
    rng = random.Random(seed)
    return [[rng.randrange(3, 380) for _ in range(rng.randrange(lo, hi))] for _ in range(n)]


def spawn_all(k, batch, n):
    return [k.spawn(ROOT, SpawnSpec("tiny", tokens=t, stop=StopRules(max_tokens=n, ignore_eos=True))) for t in batch]


@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_lengths_with_chunked_prefill(make_kernel, family):
    k, ref = make_kernel(family, budget=16)  # small budget: long prompts are paid in chunks beside decodes
    batch = prompts(6, seed=1)
    procs = spawn_all(k, batch, 12)
    k.run_until_idle()
    for t, p in zip(batch, procs):
        assert p.out_tokens == ref.greedy(t, 12), f"pid {p.pid} ({len(t)} prompt tokens)"
        assert p.state.value == "exited" and p.reason == "length"


@pytest.mark.parametrize("family", FAMILIES)
def test_processes_arriving_while_others_decode(make_kernel, family):
    k, ref = make_kernel(family)
    batch = prompts(5, seed=2)
    procs = []
    for t in batch:
        procs += spawn_all(k, [t], 10)
        k.step(); k.step()
    k.run_until_idle()
    for t, p in zip(batch, procs):
        assert p.out_tokens == ref.greedy(t, 10)


def test_fork_child_continues_from_the_parent(make_kernel):
    k, ref = make_kernel(page_size=4)
    parent = spawn_all(k, [list(range(5, 19))], 16)[0]
    for _ in range(5):
        k.step()
    at_fork = list(parent.tokens)
    child = k.fork(ROOT, parent.pid, max_tokens=8)
    assert child.usage.cached_tokens == parent.num_computed > 0
    assert k.meminfo(ROOT, "tiny").shared >= 1
    k.run_until_idle()
    assert parent.out_tokens == ref.greedy(parent.tokens[:14], 16)
    assert child.out_tokens == ref.greedy(at_fork, 8)


def test_fork_with_input_and_many_children(make_kernel, tokenizer):
    k, ref = make_kernel()
    parent = spawn_all(k, [list(range(30, 50))], 4)[0]
    k.step()
    kids = [k.fork(ROOT, parent.pid, text=f" child {i}", max_tokens=6) for i in range(4)]
    seen = [list(c.tokens) for c in kids]
    k.run_until_idle()
    for c, toks in zip(kids, seen):
        assert c.out_tokens == ref.greedy(toks, 6)


def test_prefix_cache_hits_are_exact_and_counted(make_kernel):
    k, ref = make_kernel(page_size=4)
    system = list(range(100, 130))
    first = spawn_all(k, [system + [7, 8]], 6)[0]
    k.run_until_idle()
    batch = [system + [9 + i] * (i + 1) for i in range(4)]
    procs = spawn_all(k, batch, 6)
    k.run_until_idle()
    assert first.out_tokens == ref.greedy(system + [7, 8], 6)
    for t, p in zip(batch, procs):
        assert p.usage.cached_tokens == 28  # seven full pages of the shared system prompt
        assert p.out_tokens == ref.greedy(t, 6)


@pytest.mark.parametrize("mode", ["swap", "recompute"])
def test_preemption_under_page_pressure_is_exact(make_kernel, mode):
    k, ref = make_kernel(pages=12, page_size=4, swap=64, preempt=mode)
    batch = prompts(5, seed=3, lo=8, hi=20)
    procs = spawn_all(k, batch, 14)
    peak = 0
    while k.has_work():
        k.step()
        peak = max(peak, k.meminfo(ROOT, "tiny").used)
    assert peak <= 12
    assert sum(p.usage.preemptions for p in procs) > 0
    if mode == "swap":
        assert sum(p.usage.swaps for p in procs) > 0
    for t, p in zip(batch, procs):
        assert p.out_tokens == ref.greedy(t, 14)
    assert k.meminfo(ROOT, "tiny").used == 0 and k.meminfo(ROOT, "tiny").swapped == 0


def test_everything_at_once(make_kernel):
    """Mixed lengths, a shared prefix, forks and swapping in one run."""
    k, ref = make_kernel("qwen2", pages=20, page_size=4, swap=64, budget=24)
    system = list(range(200, 224))
    batch = [system + t for t in prompts(6, seed=4, lo=1, hi=12)]
    procs = spawn_all(k, batch, 12)
    k.step(); k.step(); k.step()
    forks = [(k.fork(ROOT, p.pid, max_tokens=7), list(p.tokens)) for p in procs[:2] if not p.state.done]
    k.run_until_idle()
    for t, p in zip(batch, procs):
        assert p.out_tokens == ref.greedy(t, 12)
    for c, toks in forks:
        assert c.out_tokens == ref.greedy(toks, 7)
    assert sum(p.usage.preemptions for p in procs) > 0


def test_sliding_window_attention(make_kernel):
    k, ref = make_kernel("mistral", sliding_window=8, page_size=4)
    batch = prompts(3, seed=5, lo=10, hi=30)
    procs = spawn_all(k, batch, 16)
    k.run_until_idle()
    for t, p in zip(batch, procs):
        assert p.out_tokens == ref.greedy(t, 16)


def test_processes_spawned_together_compute_a_shared_prefix_once(make_kernel):
    k, ref = make_kernel(page_size=4, budget=64)
    system = list(range(100, 132))
    batch = [system + [9 + i] * (i + 2) for i in range(4)]
    procs = spawn_all(k, batch, 6)
    k.run_until_idle()
    for t, p in zip(batch, procs):
        assert p.out_tokens == ref.greedy(t, 6)
    assert [p.usage.cached_tokens for p in procs] == [0, 32, 32, 32]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_lean_forward_and_transformers_forward_give_the_same_tokens(make_kernel, family):
    """Llama-shaped models run through drivers/lean.py; any other model through transformers'
    own forward. Both paths must meet the same bar."""
    for lean in (True, False):
        k, ref = make_kernel(family, budget=16)
        runner = k.driver.runners["tiny"]
        assert runner.lean is not None  # every family here has the Llama shape
        if not lean:
            runner.lean = None
        batch = prompts(4, seed=7)
        procs = spawn_all(k, batch, 10)
        k.run_until_idle()
        for t, p in zip(batch, procs):
            assert p.out_tokens == ref.greedy(t, 10), f"lean={lean}"
