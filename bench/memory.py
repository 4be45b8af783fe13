"""KV memory check: n processes sharing one long system prompt against one such process.

The n processes run first, with nothing in the prefix cache: that is the headline figure.
One process runs next, then n again with the system prompt cached (the warm figure).
Pages used are sampled after every kernel step and, through PeekingDriver, right before every
forward pass (when a step's pages are all allocated, before processes finishing in it free
theirs). Next to the measured peaks it reports the least page granularity allows, so a target
can be judged against what is possible at all.
"""
from __future__ import annotations

import resource
from collections.abc import Callable

from bench.common import QUESTIONS, RssSampler, Tick, chat, encode_chat, long_system_prompt

MEMORY_TARGET = 1.3


class PeekingDriver:
    """A kernel driver wrapper that calls `peek` before each forward pass."""

    def __init__(self, inner, peek: Callable[[], None]) -> None:
        self.inner, self.peek = inner, peek

    def step(self, name: str, batch):
        self.peek()
        return self.inner.step(name, batch)

    def __getattr__(self, attr: str):
        return getattr(self.inner, attr)


def measure_pages(k, model: str, system_prompt: str, n: int, new_tokens: int, rss: RssSampler, tick: Tick) -> dict:
    """Peak KV pages used while n processes (spawned together) share one system prompt."""
    from llmos.kernel import ROOT, SpawnSpec, StopRules

    base = k.meminfo(ROOT, model).used
    peak = {"after_step": 0, "in_step": 0, "shared": 0}

    def sample(where: str) -> None:
        info = k.meminfo(ROOT, model)
        peak[where] = max(peak[where], info.used - base)
        peak["shared"] = max(peak["shared"], info.shared)

    procs = [k.spawn(ROOT, SpawnSpec(model, messages=chat(QUESTIONS[i % len(QUESTIONS)], system_prompt),
                     stop=StopRules(max_tokens=new_tokens, ignore_eos=True))) for i in range(n)]
    driver, k.driver = k.driver, PeekingDriver(k.driver, lambda: sample("in_step"))
    try:
        done = 0
        while k.has_work():
            k.step()
            sample("after_step")
            rss.sample()
            now = sum(p.usage.generated_tokens for p in procs)
            tick(now - done)
            done = now
    finally:
        k.driver = driver
    out = {"peak_pages": max(peak["after_step"], peak["in_step"]), "peak_pages_after_step": peak["after_step"],
           "peak_shared_pages": peak["shared"], "prompt_tokens": [p.usage.prompt_tokens for p in procs],
           "prefix_cached_tokens": sum(p.usage.cached_tokens for p in procs)}
    for p in procs:
        k.reap(ROOT, p.pid)
    return out


def run_memory(k, model: str, tokenizer, n: int, new_tokens: int, system_tokens: int, tick: Tick) -> dict:
    """n processes together with nothing cached (the headline), then 1 process, then n again
    with the system prompt already in the prefix cache. k's model must be loaded."""
    system_prompt = long_system_prompt(tokenizer, system_tokens)
    m = k.models[model]
    rss = RssSampler()  # from here: the kernel's resident size with its model loaded
    rss_loaded = rss.peak
    cold = measure_pages(k, model, system_prompt, n, new_tokens, rss, tick)
    one = measure_pages(k, model, system_prompt, 1, new_tokens, rss, tick)  # pages revived from the cache count
    warm = measure_pages(k, model, system_prompt, n, new_tokens, rss, tick)
    prompts = [encode_chat(tokenizer, chat(QUESTIONS[i % len(QUESTIONS)], system_prompt)) for i in range(n)]
    page_bytes = m.kv_bytes // m.memory.pool.num_pages
    summary = {
        "processes": n, "new_tokens": new_tokens,
        "system_prompt_tokens": len(tokenizer(system_prompt, add_special_tokens=False)["input_ids"]),
        "page_size": m.memory.page_size, "page_bytes": page_bytes, "pool_pages": m.memory.pool.num_pages,
        "pages_1": one["peak_pages"], f"pages_{n}": cold["peak_pages"], f"pages_{n}_warm": warm["peak_pages"],
        "ratio": cold["peak_pages"] / one["peak_pages"], "ratio_warm": warm["peak_pages"] / one["peak_pages"],
        "target_ratio": MEMORY_TARGET,
        "pages_after_step_1": one["peak_pages_after_step"], f"pages_after_step_{n}": cold["peak_pages_after_step"],
        f"peak_shared_pages_{n}": cold["peak_shared_pages"], f"prefix_cached_tokens_{n}": cold["prefix_cached_tokens"],
        f"prefix_cached_tokens_{n}_warm": warm["prefix_cached_tokens"],
        "prompt_tokens": cold["prompt_tokens"],
        "kv_bytes_1": one["peak_pages"] * page_bytes, f"kv_bytes_{n}": cold["peak_pages"] * page_bytes,
        "rss_loaded_bytes": rss_loaded, "peak_rss_bytes": rss.peak,
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    summary.update(least_pages(prompts, new_tokens, m.memory.page_size))
    summary["vs_least"] = summary[f"pages_{n}"] / summary[f"ideal_pages_{n}"]
    # The system prompt's own pages: held once however many processes read it.
    prefix_pages = summary["common_prefix_tokens"] // m.memory.page_size
    summary["prefix_pages_1"], summary[f"prefix_pages_{n}"] = prefix_pages, cold["peak_shared_pages"]
    summary["prefix_ratio"] = cold["peak_shared_pages"] / prefix_pages if prefix_pages else None
    return summary


def least_pages(prompts: list[list[int]], new_tokens: int, page_size: int) -> dict:
    """Pages with every process resident at once and every full page of the common prefix shared:
    what page granularity allows at best. The last sampled token never gets KV, hence - 1."""
    n = len(prompts)
    lcp = _common_prefix(prompts)
    shared = lcp // page_size
    need = [-(-(len(p) + new_tokens - 1) // page_size) for p in prompts]
    best = shared + sum(x - shared for x in need)
    return {"common_prefix_tokens": lcp, "ideal_pages_1": need[0], f"ideal_pages_{n}": best,
            "ideal_ratio": best / need[0], "unshared_pages": sum(need)}


def _common_prefix(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs):
            return i
    return n
