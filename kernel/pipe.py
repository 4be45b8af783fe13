"""Pipes: one process's output into an interactive process's stdin (as xv6's pipe.c joins
two processes, here with one write of the whole output).

When src ends, its whole output becomes dst's next user turn, written as soon as dst is
blocked waiting for input. The pipe is a kernel object: it lives until it has written or
failed, whatever happens to the caller that opened it. Its end is announced to listeners
as a PipeClosed event with the offset in dst's output where the answer begins.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmos.kernel import stdio
from llmos.kernel.errors import FailedPrecondition, InvalidArgument, KernelError
from llmos.kernel.events import PipeClosed
from llmos.kernel.proc import State

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.users.cred import Cred

MAX_OPEN = 1024


@dataclass
class Pipe:
    """src's output, once it ends, written to dst's stdin."""

    id: int
    src: int
    dst: int
    data: str | None = None  # src's output, taken when src ends


def open_pipe(k: "Kernel", cred: "Cred", src: int, dst: int) -> Pipe:
    """A pipe from src to interactive dst; it may deliver at once."""
    if src == dst:
        raise InvalidArgument("a process cannot be piped into itself")
    k.lookup(cred, src)
    d = k.lookup(cred, dst)
    if not d.interactive:
        raise FailedPrecondition(f"pid {dst} is not interactive; only an interactive process reads stdin")
    if d.state.done:
        raise FailedPrecondition(f"pid {dst} has already {d.state.value}")
    if len(k.pipes) >= MAX_OPEN:
        raise FailedPrecondition(f"{MAX_OPEN} pipes are open, the most llmosd keeps; wait for one to deliver")
    pipe = Pipe(k.new_pipe_id(), src, dst)
    k.pipes[pipe.id] = pipe
    return pipe


def pump(k: "Kernel") -> None:
    """Move what can move: called after every kernel operation and step."""
    for pipe in list(k.pipes.values()):
        s, d = k.procs.get(pipe.src), k.procs.get(pipe.dst)
        if pipe.data is None and s is not None and s.state.done:
            pipe.data = s.stdout
        if d is None or d.state.done:
            state = "was reaped" if d is None else f"{d.state.value}"
            _close(k, pipe, None, f"pid {pipe.dst} {state} before pid {pipe.src}'s output reached it")
        elif pipe.data is None and s is None:
            _close(k, pipe, None, f"pid {pipe.src} was reaped before its output could be piped")
        elif pipe.data is not None and d.state == State.BLOCKED:
            try:
                offset = stdio.write_turn(k, d, pipe.data)
            except KernelError as e:
                _close(k, pipe, None, str(e))
            else:
                _close(k, pipe, offset, None)


def _close(k: "Kernel", pipe: Pipe, offset: int | None, error: str | None) -> None:
    del k.pipes[pipe.id]
    k.emit(PipeClosed(pipe.id, offset, error))
