"""The process table: a pid and a slot for each new process, exit, reap and eviction of the
finished, and the listing a caller may see (xv6's allocproc, exit and wait in proc.c)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from llmos.kernel import devices
from llmos.kernel.errors import FailedPrecondition, InvalidArgument, Overloaded
from llmos.kernel.events import Reaped, Spawned, StateChanged
from llmos.kernel.proc import Process, State

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.users.cred import Cred


def admit(k: "Kernel", p: Process, state: State = State.NEW) -> Process:
    """Give a new process a pid and a place in the table."""
    live = k.live()
    if live >= k.config.max_procs:
        raise Overloaded(f"process table full: {live} live processes (max_procs={k.config.max_procs})")
    p.pid = k.next_pid
    k.next_pid += 1
    p.usage.prompt_tokens = len(p.tokens)
    p.state = state  # NEW until the scheduler first gives it tokens
    if state == State.BLOCKED:
        p.reason = "waiting for input"
    k.procs[p.pid] = p
    k.emit(Spawned(p.pid, tuple(p.tokens)))
    return p


def exit(k: "Kernel", p: Process, state: State, reason: str) -> None:  # noqa: A001 - xv6's name
    """End a process: its pages go back, its task closes, it stays readable until reaped or
    evicted (only the newest keep_exited finished ones stay)."""
    p.exit(state, reason)
    if p.task is not None:
        try:
            p.task.close(k, p, reason)
        except Exception as e:  # noqa: BLE001 - the process is ending anyway
            k.log(f"pid {p.pid}: closing its task failed: {type(e).__name__}: {e}", "error")
    m = k.models.get(p.model)
    if m is not None:
        m.memory.free(p.pid)
    if p.device:
        devices.forward(k, p, "kill", reason)
        k.held.discard(p.pid)
    p.usage.pages_held = 0
    p.detok = None
    k.log(f"pid {p.pid} {state.value}: {reason}")
    k.emit(StateChanged(p.pid))
    if p.detached:
        del k.procs[p.pid]
        return k.emit(Reaped(p.pid))
    k.exited.append(p.pid)
    while len(k.exited) > k.config.keep_exited:
        old = k.exited.popleft()
        if old in k.procs and k.procs[old].state.done:
            del k.procs[old]
            k.emit(Reaped(old))


def reap(k: "Kernel", cred: "Cred", pid: int) -> Process:
    """Forget a finished process (its output stays readable until then)."""
    p = k.lookup(cred, pid)
    if not p.state.done:
        raise FailedPrecondition(f"pid {pid} is still {p.state.value}")
    del k.procs[pid]
    k.emit(Reaped(pid))
    return p


def detach(k: "Kernel", cred: "Cred", pid: int) -> Process:
    """Nobody will wait for pid: it is reaped as soon as it ends (now, if it has)."""
    p = k.lookup(cred, pid)
    if p.state.done:
        return reap(k, cred, pid)
    p.detached = True
    return p


def ps(k: "Kernel", cred: "Cred", model: str = "", states: Sequence[str] = (), owner: str = "",
       live_only: bool = False) -> list[Process]:
    """The processes the caller may see, filtered."""
    bad = sorted(set(states) - {s.value for s in State})
    if bad:
        raise InvalidArgument(f"unknown state {bad[0]!r}; states are {', '.join(s.value for s in State)}")
    return [p for p in k.procs.values() if cred.sees(p.owner) and (not model or p.model == model)
            and (not states or p.state.value in states) and (not owner or p.owner == owner)
            and not (live_only and p.state.done)]


def restore(k: "Kernel", p: Process) -> None:
    """Put a journaled process back under its own pid; new pids continue above it."""
    if p.pid in k.procs:
        raise FailedPrecondition(f"pid {p.pid} is already in the process table")
    k.procs[p.pid] = p
    k.reserve_pids(p.pid + 1)
    m = k.models.get(p.model)
    p.kv_salt, p.adapter = (m.kv_salt, m.adapter) if m is not None else (0, "")
