"""ProcMirror: what readers and waiters see of each process, kept on the event loop.

The kernel calls its listeners on the kernel thread with each batch of events. The
mirror's listener snapshots the processes they name there (cheap: strings are immutable,
so a snapshot holds references) and posts the snapshots to the event loop with
call_soon_threadsafe. Readers then stream from the snapshots without ever waiting for the
kernel thread, so output reaches them token by token. Who may read what is the kernel's
rule (Cred.check_visible), applied here to the owner each snapshot carries.
"""
from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llmos.kernel.errors import FailedPrecondition, InvalidArgument, NotFound
from llmos.kernel.events import Event, PipeClosed, pids
from llmos.kernel.proc import Process, State

if TYPE_CHECKING:
    from llmos.kernel.thread import KernelThread
    from llmos.kernel.users.cred import Cred

MAX_PIPE_RESULTS = 1024  # results of pipes whose caller went away are kept this long, at most


@dataclass(frozen=True)
class Snap:
    """A process's output and state at one moment."""

    pid: int
    stdout: str
    stable: int  # output before this offset will never change
    state: State
    reason: str
    owner: str = ""  # who may see it (kernel/users/cred.py)
    logprobs: list = field(default_factory=list, compare=False)  # the process's own, append-only list
    n_logprobs: int = 0  # how many of them this snapshot covers

    def ended(self, turn: bool) -> bool:
        """Whether a reader or waiter stops here: at exit, or also at a turn's end."""
        return self.state.done or (turn and self.state == State.BLOCKED)


def snapshot(p: Process) -> Snap:
    """Take a snapshot on the kernel thread."""
    stable = len(p.stdout)
    if p.stop.stop and not p.state.done and p.state != State.BLOCKED:
        # The kernel cuts a stop string out of the output once it is complete, and its start
        # may already be in the text: hold back what a stop string could still begin with.
        hold = max(len(s) for s in p.stop.stop) - 1
        stable = max(p.turn_text_start, stable - hold)
    return Snap(p.pid, p.stdout, stable, p.state, p.reason, p.owner, p.logprobs, len(p.logprobs))


class ProcMirror:
    """Snapshots of every process, updated from the kernel thread, read on the event loop."""

    def __init__(self, kthread: "KernelThread", loop: asyncio.AbstractEventLoop) -> None:
        self.kt = kthread
        self.loop = loop
        self.snaps: dict[int, Snap] = {}
        self.pipes: collections.OrderedDict[int, PipeClosed] = collections.OrderedDict()
        self._waiters: dict[object, list[asyncio.Future]] = collections.defaultdict(list)

    def listener(self, events: list[Event]) -> None:
        """Kernel listener: runs on the kernel thread."""
        procs = self.kt.kernel.procs
        snaps = {pid: snapshot(procs[pid]) if pid in procs else None for pid in pids(events)}
        closed = [e for e in events if isinstance(e, PipeClosed)]
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.apply, snaps, closed)

    def apply(self, snaps: dict[int, Snap | None], closed: list[PipeClosed] = ()) -> None:
        for pid, snap in snaps.items():
            if snap is None:
                self.snaps.pop(pid, None)
            else:
                self.snaps[pid] = snap
            self._wake(pid)
        for e in closed:
            self.pipes[e.pipe] = e
            while len(self.pipes) > MAX_PIPE_RESULTS:
                self.pipes.popitem(last=False)
            self._wake(("pipe", e.pipe))

    def _wake(self, key: object) -> None:
        for fut in self._waiters.pop(key, []):
            if not fut.done():
                fut.set_result(None)

    def forget(self, pid: int) -> None:
        self.apply({pid: None})

    async def track(self, cred: "Cred", pid: int) -> Snap:
        """pid's snapshot, for a caller the kernel lets see it (NotFound, as for no such
        pid, otherwise); fetched from the kernel when the mirror has none yet."""
        if pid not in self.snaps:
            snap = await self.kt.run(lambda k: snapshot(k.lookup(cred, pid)))
            self.snaps.setdefault(pid, snap)
        snap = self.snaps[pid]
        cred.check_visible(pid, snap.owner)
        return snap

    def get(self, pid: int) -> Snap:
        if pid not in self.snaps:
            raise NotFound(f"no process with pid {pid}")
        return self.snaps[pid]

    async def _changed(self, key: object) -> None:
        fut = self.loop.create_future()
        self._waiters[key].append(fut)
        try:
            await fut
        finally:
            waiting = self._waiters.get(key)
            if waiting and fut in waiting:
                waiting.remove(fut)

    async def until(self, pid: int, pred: Callable[[Snap], bool]) -> Snap:
        """Sleep until pid's snapshot satisfies pred; NotFound if it is reaped meanwhile."""
        while True:
            snap = self.get(pid)
            if pred(snap):
                return snap
            await self._changed(pid)

    async def wait(self, cred: "Cred", pid: int, turn: bool = False) -> Snap:
        """Sleep until pid ends (or, with turn, blocks for input)."""
        await self.track(cred, pid)
        return await self.until(pid, lambda s: s.ended(turn))

    async def pipe_closed(self, pipe: int) -> int:
        """Sleep until a pipe delivers; the offset where its reader's answer begins."""
        while pipe not in self.pipes:
            await self._changed(("pipe", pipe))
        e = self.pipes.pop(pipe)
        if e.error is not None:
            raise FailedPrecondition(e.error)
        return e.offset

    async def read(self, cred: "Cred", pid: int, offset: int = 0, turn: bool = False,
                   now: bool = False) -> AsyncIterator[tuple[str, int, Snap, list]]:
        """Stream pid's output from offset as (new text, its end offset, snapshot, the logprobs
        of the tokens whose text it carries), until the process ends (or, with turn, its turn
        ends; with now, at once). The last item always carries the ending snapshot, with or
        without text, and every logprob not yet handed out."""
        if offset < 0:
            raise InvalidArgument(f"offset must be 0 or more, got {offset}")
        snap = await self.track(cred, pid)
        if offset > len(snap.stdout) and snap.state.done:
            raise InvalidArgument(f"offset {offset} is past the end of pid {pid}'s output "
                                  f"({len(snap.stdout)} characters)")
        seen, sent = None, _upto(snap, offset)
        while True:
            # Updates land while the consumer is suspended at `yield`: compare with the last
            # snapshot handled, not with the last wake-up, so none is missed.
            snap = await self.until(pid, lambda s: s is not seen)
            seen = snap
            end = max(offset, snap.stable)
            done = now or snap.ended(turn)
            if done or end > offset:
                upto = snap.n_logprobs if done else _upto(snap, end, sent)
                yield snap.stdout[offset:end], end, snap, snap.logprobs[sent:upto]
                offset, sent = end, upto
            if done:
                return


def _upto(snap: Snap, end: int, start: int = 0) -> int:
    """How many of snap's logprobs are of tokens whose text ends at or before `end`."""
    i, lps = start, snap.logprobs
    while i < snap.n_logprobs and lps[i].text_end <= end:
        i += 1
    return i
