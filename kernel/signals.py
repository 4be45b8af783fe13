"""Signals: TERM asks a process to end cleanly, KILL ends it now, STOP pauses it, CONT resumes it.

TERM: a generation stops at its next token with reason "terminated" (at once if it is
waiting for input, stopped, or not yet started); a task process ends at its next unit
through its `terminate` (a fine-tune writes a checkpoint, an eval reports what it has). A
process still running `term_grace_s` after TERM is killed. A task process passes STOP and
CONT on to the processes it runs (an eval's children).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from llmos.kernel import devices, tasks
from llmos.kernel.errors import InvalidArgument
from llmos.kernel.events import StateChanged
from llmos.kernel.proc import Process, Signal, State
from llmos.syscalls.abi.spec import SpecError, check_nice

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.users.cred import Cred


def signal(k: "Kernel", cred: "Cred", pid: int, sig: Signal | str) -> Process:
    """Deliver `sig` to pid (a no-op on a process that has ended); returns the process."""
    p = k.lookup(cred, pid)
    try:
        sig = Signal(sig)
    except ValueError:
        raise InvalidArgument(f"unknown signal {sig!r}; use TERM, KILL, STOP or CONT") from None
    deliver(k, p, sig)
    return p


def deliver(k: "Kernel", p: Process, sig: Signal) -> None:
    """What a signal does to a process the caller may signal."""
    if p.state.done:
        return
    if p.device:
        devices.forward(k, p, "signal", sig.value)
        if sig == Signal.CONT:
            k.held.discard(p.pid)  # held for quota again at the next poll, if its owner still is over
    if sig == Signal.KILL:
        return k.exit(p, State.KILLED, "signal KILL")
    if sig == Signal.TERM:
        return terminate(k, p)
    if sig == Signal.STOP and p.state != State.STOPPED:
        p.resume_state = p.state if p.state != State.RUNNING else State.READY
        p.state = State.STOPPED
    elif sig == Signal.CONT and p.state == State.STOPPED:
        p.state = p.resume_state
    if p.task is not None:
        tasks.forward_signal(p.task, k, sig.value)
    k.emit(StateChanged(p.pid))


def terminate(k: "Kernel", p: Process) -> None:
    """TERM: end at the next token (or unit), or now if there is nothing to finish."""
    if p.term_at is not None:
        return
    if p.task is None and p.state in (State.BLOCKED, State.STOPPED, State.NEW):
        return k.exit(p, State.KILLED, "terminated")
    p.term_at = time.monotonic()
    if p.state == State.STOPPED:  # a stopped process could not end: continue it, as `kill` does
        p.state = p.resume_state
        if p.task is not None:
            tasks.forward_signal(p.task, k, Signal.CONT.value)
    k.emit(StateChanged(p.pid))


def enforce_grace(k: "Kernel", now: float) -> None:
    """Kill what TERM asked to end and has not ended within term_grace_s."""
    grace = k.config.term_grace_s
    for p in list(k.procs.values()):
        if p.term_at is not None and not p.state.done and now - p.term_at > grace:
            k.exit(p, State.KILLED, f"signal TERM, then KILL: it did not end within {grace:g} s")


def renice(k: "Kernel", cred: "Cred", pid: int, nice: int) -> Process:
    """A new nice value: anyone may raise theirs; only an admin may go below 0 or below what
    the process started with (Unix's rule for root)."""
    p = k.lookup(cred, pid)
    try:
        check_nice(nice)
    except SpecError as e:
        raise InvalidArgument(str(e), getattr(e, "field", None)) from None
    p.priority = cred.check_nice(nice, floor=p.spec.priority)
    if p.device:
        devices.forward(k, p, "renice", p.priority)
    k.emit(StateChanged(pid))
    return p
