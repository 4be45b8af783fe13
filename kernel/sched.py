"""The scheduler: each step, the tokens owed to each process under one budget.

There are no prefill and decode phases. A process is owed `len(tokens) - num_computed`
tokens; a long prompt is simply paid in chunks across steps while others decode beside
it. A step where no process decodes has the larger `prefill_budget`, so a prompt alone runs
through the GEMMs at full width. A prompt's chunk leaves room for the decodes after it, and
prompts go by aged nice under every policy: a higher-priority arrival gets its prefill into
the very next step, and the prompts at a higher nice after it give way, down to one token a
step if the budget has any left; aging lifts a prompt that waits ahead, so none starves.
When KV pages run out, the lowest-priority, newest process is preempted: its pages go to swap
(default) or are dropped and recomputed later.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from llmos.drivers.driver import SeqSlice, StepInput
from llmos.kernel import speculate
from llmos.kernel.memory import MemoryManager
from llmos.kernel.proc import Process, State
from llmos.kernel.speculate import SpecConfig

POLICIES = ("fcfs", "priority", "fair")


@dataclass
class SchedConfig:
    """Scheduler knobs."""

    policy: str = "fcfs"
    token_budget: int = 256  # tokens per step, all processes together, while any of them decodes
    prefill_budget: int = 2048  # tokens per step when none decodes (a long prompt alone)
    max_seqs: int = 64       # processes per step
    preempt: str = "swap"    # swap | recompute
    aging_s: float = 2.0     # waiting this long is worth one nice level
    fair_halflife_s: float = 10.0
    speculate: SpecConfig = field(default_factory=SpecConfig)  # proposals verified beside decodes (kernel/speculate.py)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; choose one of {', '.join(POLICIES)}")
        if self.preempt not in ("swap", "recompute"):
            raise ValueError(f"unknown preemption mode {self.preempt!r}; choose swap or recompute")
        if self.token_budget < 1 or self.max_seqs < 1 or self.prefill_budget < 1:
            raise ValueError("token_budget, prefill_budget and max_seqs must be at least 1")


@dataclass
class Schedule:
    """The scheduler's decision for one step, and the driver's input for it."""

    runs: list[tuple[Process, int]] = field(default_factory=list)  # process, tokens to compute
    preempted: list[Process] = field(default_factory=list)
    over_quota: list[Process] = field(default_factory=list)
    drafts: dict[int, list[int]] = field(default_factory=dict)  # pid -> proposals verified after its token
    input: StepInput = field(default_factory=lambda: StepInput([]))

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.runs) + sum(len(d) for d in self.drafts.values())


class Scheduler:
    """Orders processes by policy and hands out tokens and pages under the step budget."""

    def __init__(self, config: SchedConfig, memory: MemoryManager, max_context: int = 1 << 30) -> None:
        self.config = config
        self.memory = memory
        self.max_context = max_context  # the model's context window: no proposal reaches past it
        self.owner_usage: dict[str, float] = {}
        self._usage_at = time.monotonic()
        self.row_cost = speculate.RowCost()  # what a row costs here, learned from this pool's steps

    def observe(self, plan: Schedule, seconds: float) -> None:
        """A step of `plan` ran in `seconds`: a decode step (every slice one token, plus proposals,
        no swap) teaches the cost of rows."""
        if plan.runs and all(n == 1 for _, n in plan.runs) and not plan.input.moves:
            self.row_cost.record(plan.num_tokens, seconds)

    def account(self, owner: str, tokens: int) -> None:
        """Charge tokens to an owner, for fair share."""
        now = time.monotonic()
        decay = 0.5 ** ((now - self._usage_at) / self.config.fair_halflife_s)
        self._usage_at = now
        for k in self.owner_usage:
            self.owner_usage[k] *= decay
        self.owner_usage[owner] = self.owner_usage.get(owner, 0.0) + tokens

    def order(self, procs: list[Process], now: float) -> list[Process]:
        """Processes best-first under the policy. Aging lifts whoever has waited."""
        aged = lambda p: _aged(p, now, self.config.aging_s)  # noqa: E731
        if self.config.policy == "fcfs":
            key = lambda p: (p.created, p.pid)  # noqa: E731
        elif self.config.policy == "priority":
            key = lambda p: (aged(p), p.created, p.pid)  # noqa: E731
        else:
            key = lambda p: (self.owner_usage.get(p.owner, 0.0), aged(p), p.created, p.pid)  # noqa: E731
        return sorted(procs, key=key)

    def schedule(self, procs: list[Process], now: float | None = None,
                 allowance: dict[str, int] | None = None) -> Schedule:
        """Decide this step. `procs` is every live process; those that hold pages but
        cannot run (blocked, stopped) are the first to give pages back under pressure.
        `allowance` caps the tokens of rate-limited owners (kernel/users/quota.py); it is spent here."""
        now = time.monotonic() if now is None else now
        mem, out = self.memory, Schedule()
        ready = self.order([p for p in procs if p.runnable and p.owed > 0], now)
        level = {p.pid: math.floor(_aged(p, now, self.config.aging_s)) for p in ready}
        ready = _prompts_by_level(ready, level)
        # Victims under page pressure, worst first: blocked and stopped processes, then the
        # lowest-priority, newest of those that owe nothing this step.
        # A process waiting on a tool's result keeps its pages until its pin runs out (kernel/stdio.py).
        idle = [p for p in procs if not (p.runnable and p.owed > 0) and not p.state.done and p.pid in mem.tables
                and p.pinned_until <= now]
        idle = sorted(reversed(self.order(idle, now)), key=lambda p: p.runnable)
        decoding = any(p.owed == 1 for p in ready)
        budget = self.config.token_budget if decoding else max(self.config.token_budget, self.config.prefill_budget)
        decodes_after = _decodes_after(ready)
        best = math.inf  # the lowest nice of a prompt given tokens this step
        seats = self.config.max_seqs
        admitting = True
        inflight: set[int] = set()  # hashes of prefix pages that processes in this step are filling
        for i, p in enumerate(ready):
            if budget == 0 or seats == 0:
                break
            cap = budget if allowance is None else min(budget, allowance.get(p.owner, budget))
            if p.owed > 1:  # a prompt leaves room for the decodes after it, and gives way to a higher priority's
                cap = min(cap, 1 if p.priority > best else max(1, budget - decodes_after[i]))
            if cap <= 0:
                continue  # its owner has computed their tokens for this minute
            resident = p.pid in mem.tables
            fresh = not resident and not mem.is_swapped(p.pid)
            if not resident and not admitting:
                continue
            if fresh and self._prefix_in_flight(p, inflight):
                continue  # another process is computing this prefix now: share it next step
            victims = idle + [q for q in reversed(ready[i + 1:]) if q.pid in mem.tables]
            if not self._make_resident(p, victims, out):
                admitting = False  # head-of-line: later arrivals wait behind this one
                continue
            n = min(p.owed, cap)
            if p.limits.max_pages is not None:
                total = -(-(p.num_computed + n) // mem.page_size)
                if total > p.limits.max_pages:
                    out.over_quota.append(p)
                    continue
            n = self._fit(p, n, victims, out)
            if n == 0:
                if fresh:
                    self._unadmit(p)
                else:
                    self._preempt(p, out)  # not even one token fits: give way to those ahead
                admitting = admitting and resident
                continue
            out.runs.append((p, n))
            if p.owed > 1:
                best = min(best, p.priority)
            if allowance is not None and p.owner in allowance:
                allowance[p.owner] -= n
            if p.owed > 1:  # filling prompt pages that the prefix cache does not hold yet
                inflight.update(mem.unpublished_hashes(p.pid, p.tokens))
            budget -= n
            seats -= 1
        if self.config.speculate.enabled:  # only what the budget has left once everyone has their tokens
            learned = self.row_cost if self.config.speculate.learn_cost else None
            speculate.draft(out, mem, self.config.speculate, budget, self.max_context, allowance, learned)
        out.input = StepInput([self._slice(p, n, now, out.drafts.get(p.pid, [])) for p, n in out.runs],
                              mem.ops.take())
        return out

    def _slice(self, p: Process, n: int, now: float, draft: list[int]) -> SeqSlice:
        """p runs this step: its next n tokens (and any proposals after them), where their KV
        goes, whether it samples after them."""
        p.state = State.RUNNING
        p.admitted = p.admitted or now
        start = p.num_computed
        sample = start + n == len(p.tokens)
        return SeqSlice(p.pid, p.tokens[start:start + n] + draft, start, self.memory.page_table(p.pid), sample,
                        p.sampling, p.adapter, p.grammar if sample else None, list(draft))

    def _prefix_in_flight(self, p: Process, inflight: set[int]) -> bool:
        """Whether the next page p would compute is being filled by a process ahead of it."""
        if not inflight:
            return False
        hashes = self.memory.prefix_hashes(p.tokens, p.kv_salt)
        k = self.memory.cached_pages(hashes)
        return k < len(hashes) and hashes[k] in inflight

    def _make_resident(self, p: Process, victims: list[Process], out: Schedule) -> bool:
        mem = self.memory
        if p.pid in mem.tables:
            return True
        if mem.is_swapped(p.pid):
            while not mem.swap_in(p.pid):
                if not self._evict_one(victims, out):
                    return False
            p.usage.swaps += 1
            return True
        cached = mem.match_prefix(p.pid, p.tokens, p.kv_salt)
        if cached > p.num_computed:
            p.usage.cached_tokens += cached - p.num_computed
            p.num_computed = cached
        return True

    def _fit(self, p: Process, n: int, victims: list[Process], out: Schedule) -> int:
        """Allocate pages for n tokens, evicting victims or shrinking the chunk as needed."""
        mem = self.memory
        while not mem.allocate(p.pid, p.num_computed, p.num_computed + n):
            if self._evict_one(victims, out):
                continue
            n = min(n - 1, self._tokens_fitting(p))  # no one left to evict: a smaller chunk
            if n <= 0:
                return 0
        return n

    def _tokens_fitting(self, p: Process) -> int:
        mem = self.memory
        lo, hi = 0, p.owed
        while lo < hi:  # largest n whose pages fit
            mid = (lo + hi + 1) // 2
            if mem.pages_needed(p.pid, p.num_computed, p.num_computed + mid) <= mem.pool.num_free:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _unadmit(self, p: Process) -> None:
        """Undo a fresh admission that found no room (its prefix-cache hits included)."""
        p.usage.cached_tokens -= p.num_computed
        p.num_computed = 0
        self.memory.free(p.pid)

    def _evict_one(self, victims: list[Process], out: Schedule) -> bool:
        while victims:
            v = victims.pop(0)
            if v.pid in self.memory.tables:
                self._preempt(v, out)
                return True
        return False

    def _preempt(self, p: Process, out: Schedule) -> None:
        mem = self.memory
        if p.pid not in mem.tables:
            return
        if self.config.preempt == "swap" and mem.swap_out(p.pid):
            pass
        else:
            mem.free(p.pid)
            p.num_computed = 0  # recompute: the whole sequence is owed again
        p.usage.preemptions += 1
        if p.state == State.RUNNING:
            p.state = State.READY
        out.preempted.append(p)


def _aged(p: Process, now: float, aging_s: float) -> float:
    """p's nice, lowered by one for every aging_s it has waited since it last ran."""
    return p.priority - (now - max(p.last_run, p.created)) / aging_s


def _prompts_by_level(ready: list[Process], level: dict[int, int]) -> list[Process]:
    """The policy's order with the prompts (processes owing more than one token) re-sorted by
    aged nice level among the places prompts hold; decodes keep theirs."""
    slots = [i for i, p in enumerate(ready) if p.owed > 1]
    out = list(ready)
    for i, p in zip(slots, sorted((ready[i] for i in slots), key=lambda p: level[p.pid])):
        out[i] = p
    return out


def _decodes_after(ready: list[Process]) -> list[int]:
    """For each process in order, how many of those after it decode (owe one token)."""
    out, n = [0] * len(ready), 0
    for i in range(len(ready) - 1, -1, -1):
        out[i] = n
        n += ready[i].owed == 1
    return out
