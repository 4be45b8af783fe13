"""Non-token work: processes that run a Task (training, evaluation) instead of sampling tokens.

A task process is an ordinary Process (pid, priority, stdout, signals, exit status) whose
`task` is set. The kernel's step loop runs at most one unit of task work per step, after the
decode iterations, so processes streaming tokens keep streaming. A unit must have bounded
cost (one micro-batch, one optimizer step): the decode streams wait for it.

How much device time tasks take while token processes are busy depends on their nice value
(`share`: half at nice 0); with no token work anywhere, a task runs every step. Stopped tasks do not run;
TERM/KILL end them through Task.close. All of this is plain Python, testable with no model.

To write a task: implement `run_unit(kernel, proc) -> bool` (True when finished; write progress
lines to `proc.stdout`; set `proc.reason` for the exit status) and `close(kernel, proc, reason)`
(release driver state; called once when the process ends for any reason). Spawn it with
`kernel.spawn_task(cred, model, task, priority=...)`. An exception from run_unit kills the
process with the error as its reason; the kernel goes on. Optional: `unit_tokens` (the tokens
the last unit computed, charged to the owner's tokens-per-minute quota), `terminate(kernel,
proc)` (TERM: end cleanly within one more unit: a checkpoint, partial results), `waiting` and
`signal` (below). A unit that takes longer than the kernel's max_unit_s ends its process.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from llmos.kernel import accounting
from llmos.kernel.errors import KernelError
from llmos.kernel.events import StateChanged
from llmos.kernel.proc import State

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.proc import Process

MAX_SHARE, MIN_SHARE = 0.9, 0.02


class Task(Protocol):
    """Work a process does in bounded units on the kernel thread."""

    kind: str  # "train", "eval", ...: shown by ps

    def run_unit(self, kernel: "Kernel", proc: "Process") -> bool:
        """Do one bounded unit of work; return True when the task is finished."""
        ...

    def close(self, kernel: "Kernel", proc: "Process", reason: str) -> None:
        """The process ended (finished, killed, failed): release what the task holds."""
        ...


def waiting(task: object, kernel: "Kernel") -> bool:
    """Whether a task has nothing to do until other processes move (an eval whose children are
    all still generating): such a task is not picked, so it neither spins nor takes device time.
    Tasks opt in with a `waiting(kernel) -> bool` method."""
    check = getattr(task, "waiting", None)
    return bool(check and check(kernel))


def forward_signal(task: object, kernel: "Kernel", sig: str) -> None:
    """Pass STOP/CONT on to the processes a task runs (its children), if it has a
    `signal(kernel, sig)` method: stopping an eval stops its generation too."""
    handler = getattr(task, "signal", None)
    if handler:
        handler(kernel, sig)


@dataclass
class DeviceShare:
    """Recent device time, split between token steps and task units. Both decay with the
    device time that passes, not per event: one long unit then weighs as much as the many
    short decode steps that fill the same time. The half-life is at least `min_halflife_s`
    and `units_per_halflife` of the last unit's length, so a unit is a small part of the
    window and the split holds to about a point of the share (tests/test_train.py)."""

    task_s: float = 0.0
    token_s: float = 0.0
    last_unit_s: float = 0.0
    min_halflife_s: float = 8.0
    units_per_halflife: float = 32.0

    def add(self, task: bool, seconds: float) -> None:
        if task:
            self.last_unit_s = seconds
        halflife = max(self.min_halflife_s, self.units_per_halflife * self.last_unit_s)
        decay = 0.5 ** (seconds / halflife)
        self.task_s *= decay
        self.token_s *= decay
        if task:
            self.task_s += seconds
        else:
            self.token_s += seconds

    def task_fraction(self) -> float:
        total = self.task_s + self.token_s
        return self.task_s / total if total else 0.0


def share(nice: int) -> float:
    """The fraction of device time tasks may take while token work runs: half at nice 0,
    halving every 5 nice levels (nice 19: ~4%), at most 90%. A unit costs far more than a
    decode step, so counting steps instead of time would starve the streams."""
    return min(MAX_SHARE, max(MIN_SHARE, 0.5 * 2 ** (-nice / 5)))


def pick(procs: list["Process"], token_work: bool, used: float, kernel: "Kernel | None" = None,
         now: float | None = None) -> "Process | None":
    """The task process that gets this step's unit, if any: one ending on TERM first; else the
    runnable one with the lowest nice (then the one that ran longest ago), if tasks have used
    less than its share of the device lately (`used`); on an idle device, every step. Tasks
    waiting on others, and those whose owner is at their tokens-per-minute quota, are skipped."""
    runnable = [p for p in procs if p.task is not None and p.runnable]
    ending = [p for p in runnable if p.term_at is not None]
    if ending:
        return ending[0]
    ready = [p for p in runnable if not waiting(p.task, kernel)]
    if kernel is not None:
        at = time.monotonic() if now is None else now
        ready = [p for p in ready if not kernel.quota.throttled(p.owner, at)]
    if not ready:
        return None
    best = min(ready, key=lambda p: (p.priority, p.last_run, p.pid))
    return best if not token_work or used < share(best.priority) else None


def run_unit(k: "Kernel", now: float, token_work: bool) -> None:
    """One unit of non-token work, if a task process is due; the kernel calls this once a step."""
    p = pick(list(k.procs.values()), token_work, k.device_share.task_fraction(), k, now)
    if p is None:
        return
    p.admitted = p.admitted or now
    p.last_run = now
    t0 = time.monotonic()
    try:
        if p.term_at is not None:
            return _terminate(k, p)
        done = p.task.run_unit(k, p)
    except KernelError as e:
        return k.exit(p, State.KILLED, str(e))
    except Exception as e:  # noqa: BLE001 - a failed task ends its own process, nothing more
        return k.exit(p, State.KILLED, f"task error: {type(e).__name__}: {e}")
    finally:
        took = time.monotonic() - t0
        k.device_share.add(task=True, seconds=took)
        accounting.charge_unit(k, p, took)
    tokens = getattr(p.task, "unit_tokens", 0)
    if tokens:
        k.quota.charge(p.owner, tokens, now)
    k.emit(StateChanged(p.pid))  # its stdout (progress) moved
    if took > k.config.max_unit_s and not p.state.done:
        k.exit(p, State.KILLED, f"limit: a unit of its work took {took:.1f} s, over max_unit_s="
                                f"{k.config.max_unit_s:g} (decode streams wait for every unit)")
    elif done and not p.state.done:
        k.exit(p, State.EXITED, p.reason or "done")


def _terminate(k: "Kernel", p: "Process") -> None:
    """TERM reached a task: let it end cleanly (its `terminate`), then end the process."""
    end = getattr(p.task, "terminate", None)
    p.reason = ""
    if end is not None:
        end(k, p)
    k.exit(p, State.KILLED, f"terminated{': ' + p.reason if p.reason else ''}")
