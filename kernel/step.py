"""The token step of one KV pool: what happens around a forward pass.

Kernel.step asks each pool's scheduler for a Schedule (its slices: decode tokens and prefill
chunks under the token budget, and the driver's StepInput for them), then `run`s it through
the driver and `apply`s what came back: every slice's tokens are now computed, its pages
published to the prefix cache, its owner charged, and each sampled token goes to its
process's stdout (kernel/stdio.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from llmos.kernel import signals, stdio
from llmos.kernel.proc import State
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
        if p.pid in out.tokens:
            stdio.emit(k, m, p, out.tokens[p.pid], out.logprobs.get(p.pid))
        if not p.state.done:
            p.usage.pages_held = m.memory.pages_held(p.pid)
    return plan.num_tokens


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
