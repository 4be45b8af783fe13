"""Signals: TERM and KILL end a process, STOP pauses it, CONT resumes it. A task process
passes STOP and CONT on to the processes it runs (an eval's children)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from llmos.kernel import tasks
from llmos.kernel.errors import InvalidArgument
from llmos.kernel.events import StateChanged
from llmos.kernel.proc import Process, Signal, State

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
    if sig in (Signal.TERM, Signal.KILL):
        return k.exit(p, State.KILLED, f"signal {sig.value}")
    if sig == Signal.STOP and p.state != State.STOPPED:
        p.resume_state = p.state if p.state != State.RUNNING else State.READY
        p.state = State.STOPPED
    elif sig == Signal.CONT and p.state == State.STOPPED:
        p.state = p.resume_state
    if p.task is not None:
        tasks.forward_signal(p.task, k, sig.value)
    k.emit(StateChanged(p.pid))
