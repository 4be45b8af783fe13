"""Placement: which device a new process runs on, by the cost of running it there.

Plain data in, a choice out, so the rule is testable with no model and no device. The cost
of a device counts what the process would make it do (as NVIDIA Dynamo's router weighs new
prefill against decode load, and SGLang's router prefix overlap):
- the prompt tokens it must compute there: all of them, less what that device's prefix
  cache already holds;
- the decode load: every live process on a device slows each of its steps;
- free pages: a device that cannot hold the process now would preempt others for it.
A device that does not serve the model is no candidate (loading one is an admin's act).
"""
from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass

DECODE_WEIGHT = 64   # prompt tokens one live process costs a device's every step, in the same unit
SHORT_PAGES = 4096   # a device short of free pages for it costs this many prompt tokens per page short


@dataclass(frozen=True)
class Candidate:
    """What placement knows of one device for one process."""

    device: str
    prompt_tokens: int   # what the process holds
    cached_tokens: int   # of them, what this device's prefix cache holds
    live: int            # live processes running there now
    free_pages: int      # free (or cached, reclaimable) KV pages there
    need_pages: int      # pages the prompt needs

    @property
    def cost(self) -> float:
        short = max(0, self.need_pages - self.free_pages)
        return (max(0, self.prompt_tokens - self.cached_tokens) + DECODE_WEIGHT * self.live
                + SHORT_PAGES * short)


def choose(candidates: Sequence[Candidate]) -> Candidate:
    """The cheapest device; ties go to the least loaded, then the first listed."""
    if not candidates:
        raise ValueError("no device serves the model")
    return min(enumerate(candidates), key=lambda ic: (ic[1].cost, ic[1].live, ic[0]))[1]


def cached_prefix(hashes: Sequence[int], held: "Container[int]") -> int:
    """How many of a prompt's chained page hashes, from the first, a device's summary holds."""
    n = 0
    while n < len(hashes) and hashes[n] in held:
        n += 1
    return n
