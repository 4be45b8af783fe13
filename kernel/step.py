"""The token step of one KV pool: what happens around a forward pass.

Kernel.step asks each pool's scheduler for a Schedule (its slices: decode tokens and prefill
chunks under the token budget, and the driver's StepInput for them), then `run`s it through
the driver and `apply`s what came back: every slice's tokens are now computed, its pages
published to the prefix cache, its owner charged, and each sampled token goes to its
process's stdout (kernel/stdio.py).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from llmos.kernel import accounting, signals, stdio
from llmos.kernel.proc import Process, State
from llmos.kernel.sched import Schedule

if TYPE_CHECKING:
    from llmos.drivers.driver import StepOutput
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.models.loading import LoadedModel


def enforce_time_limits(k: "Kernel", now: float) -> None:
    """Wall-time limits, and the grace period of processes asked to end (kernel/signals.py)."""
    for p in list(k.procs.values()):
        if p.limits.max_wall_s is not None and not p.state.done and now - p.created > p.limits.max_wall_s:
            k.exit(p, State.KILLED, f"limit: wall time over {p.limits.max_wall_s:g} s")
    signals.enforce_grace(k, now)


def pool_step(k: "Kernel", m: "LoadedModel", now: float) -> int:
    """One token step of m's KV pool: schedule, run, apply; returns the tokens it computed. Its
    time is charged to the processes in it (kernel/accounting.py)."""
    t0 = time.monotonic()
    live = k.pool_procs(m)
    plan = m.scheduler.schedule(live, now, k.quota.allowance(live, now))
    before = {p.pid: p.usage.generated_tokens for p, _ in plan.runs}
    t1 = time.monotonic()
    out = run(k, m, plan)
    if out is not None:
        m.scheduler.observe(plan, time.monotonic() - t1)
    n = apply(k, m, plan, out, now)
    if n:
        generated = {p.pid: p.usage.generated_tokens - before[p.pid] for p, _ in plan.runs}
        accounting.charge_step(k, plan, generated, time.monotonic() - t0)
    return n


def run(k: "Kernel", m: "LoadedModel", plan: Schedule) -> "StepOutput | None":
    """The forward pass of a schedule: what it sampled, or None if there was nothing to run or
    the driver failed (then the processes in it are killed)."""
    for p in plan.over_quota:
        k.exit(p, State.KILLED, f"limit: KV pages over max_pages={p.limits.max_pages}")
    if not plan.input.seqs and not plan.input.moves:
        return None
    try:
        return k.driver.step(m.name, plan.input)
    except Exception as e:  # noqa: BLE001 - a failed step ends its own batch, nothing more
        failed(k, m, plan, e)
        return None


def apply(k: "Kernel", m: "LoadedModel", plan: Schedule, out: "StepOutput | None", now: float) -> int:
    """Account for a step that ran; returns the tokens it computed."""
    if out is None:
        return 0
    for pid, why in out.grammar_ended.items():  # no token could continue its grammar: it ends now
        p = k.procs.get(pid)
        if p is not None and not p.state.done:
            k.exit(p, State.KILLED, f"grammar: {why}")
    for p, n in plan.runs:
        if p.state.done:
            continue
        p.num_computed += n
        p.last_run = now
        m.memory.publish(p.pid, p.tokens, p.num_computed)
        m.scheduler.account(p.owner, n)
        k.quota.charge(p.owner, n, now)
        if p.state == State.RUNNING:
            p.state = State.READY
        if p.pid in plan.drafts and p.pid in out.tokens:
            verified(k, m, p, plan.drafts[p.pid], out, now)
        elif p.pid in out.tokens:
            stdio.emit(k, m, p, out.tokens[p.pid], out.logprobs.get(p.pid))
        if not p.state.done:
            p.usage.pages_held = m.memory.pages_held(p.pid)
    return plan.num_tokens


def verified(k: "Kernel", m: "LoadedModel", p: Process, draft: list[int], out: "StepOutput", now: float) -> None:
    """Emit what a verify step kept: the accepted proposals, then the target's own token after
    them, each through the stop rules, until one ends the turn. The KV of every emitted token but
    the last was computed in this step; the rest (rejected rows, or rows past the end) is rolled back."""
    kept = out.accepted.get(p.pid, [])
    lps = out.accepted_logprobs.get(p.pid) or [None] * len(kept)
    state = p.state
    emitted = 0
    for token, lp in zip([*kept, out.tokens[p.pid]], [*lps, out.logprobs.get(p.pid)]):
        if emitted and p.state != state:
            break  # the turn ended (stop rule, end of sequence, max tokens, TERM): the rest is dropped
        stdio.emit(k, m, p, token, lp)
        emitted += 1
    p.lookup.record(len(draft), len(kept), len(p.tokens), m.scheduler.config.speculate)
    if emitted > 1:
        m.scheduler.account(p.owner, emitted - 1)
        k.quota.charge(p.owner, emitted - 1, now)
    if p.pid in m.memory.tables:  # still resident (an exit has freed its pages)
        p.num_computed = len(p.tokens) - 1
        m.memory.truncate(p.pid, p.num_computed)
        m.memory.publish(p.pid, p.tokens, p.num_computed)


def failed(k: "Kernel", m: "LoadedModel", plan: Schedule, error: Exception) -> None:
    """The driver failed a step: end the processes in it; those swapped out for it lost
    their pages' contents, so they start over by recompute."""
    k.log(f"model {m.name}: step failed: {type(error).__name__}: {error}", "error")
    for p, _ in plan.runs:
        k.exit(p, State.KILLED, f"driver error: {type(error).__name__}: {error}")
    for p in plan.preempted:
        if m.memory.is_swapped(p.pid):
            m.memory.free(p.pid)
            p.num_computed = 0
