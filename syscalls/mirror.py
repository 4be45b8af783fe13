"""ProcMirror: what readers and waiters see of each process, kept on the event loop.

The kernel calls its listeners on the kernel thread whenever a process's state or output
changes. The mirror's listener snapshots those processes there (cheap: strings are
immutable, so a snapshot holds references) and posts the snapshots to the event loop with
call_soon_threadsafe. Readers then stream from the snapshots without ever waiting for the
kernel thread, so output reaches them token by token.
"""
from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmos.kernel.errors import NotFound
from llmos.kernel.proc import Process, State

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel


@dataclass(frozen=True)
class Snap:
    """A process's output and state at one moment."""

    pid: int
    stdout: str
    stable: int  # output before this offset will never change
    state: State
    reason: str
    owner: str = ""  # who may see it (kernel/cred.py)

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
    return Snap(p.pid, p.stdout, stable, p.state, p.reason, p.owner)


class ProcMirror:
    """Snapshots of every process, updated from the kernel thread, read on the event loop."""

    def __init__(self, kernel: "Kernel", loop: asyncio.AbstractEventLoop) -> None:
        self.kernel = kernel
        self.loop = loop
        self.snaps: dict[int, Snap] = {}
        self._waiters: dict[int, list[asyncio.Future]] = collections.defaultdict(list)

    def listener(self, pids: set[int]) -> None:
        """Kernel listener: runs on the kernel thread."""
        procs = self.kernel.procs
        snaps = {pid: snapshot(procs[pid]) if pid in procs else None for pid in pids}
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.apply, snaps)

    def apply(self, snaps: dict[int, Snap | None]) -> None:
        for pid, snap in snaps.items():
            if snap is None:
                self.snaps.pop(pid, None)
            else:
                self.snaps[pid] = snap
            for fut in self._waiters.pop(pid, []):
                if not fut.done():
                    fut.set_result(None)

    def forget(self, pid: int) -> None:
        self.apply({pid: None})

    def get(self, pid: int) -> Snap:
        if pid not in self.snaps:
            raise NotFound(f"no process with pid {pid}")
        return self.snaps[pid]

    async def changed(self, pid: int) -> None:
        """Sleep until the next update of pid."""
        fut = self.loop.create_future()
        self._waiters[pid].append(fut)
        try:
            await fut
        finally:
            waiting = self._waiters.get(pid)
            if waiting and fut in waiting:
                waiting.remove(fut)

    async def until(self, pid: int, pred: Callable[[Snap], bool]) -> Snap:
        """Sleep until pid's snapshot satisfies pred; NotFound if it is reaped meanwhile."""
        while True:
            snap = self.get(pid)
            if pred(snap):
                return snap
            await self.changed(pid)

    async def follow(self, pid: int, offset: int = 0, turn: bool = False,
                     now: bool = False) -> AsyncIterator[tuple[str, int, Snap]]:
        """Stream pid's output from offset as (new text, its end offset, snapshot), until the
        process ends (or, with turn, its turn ends; with now, at once). The last item always
        carries the ending snapshot, with or without text."""
        seen = None
        while True:
            # Updates land while the consumer is suspended at `yield`: compare with the last
            # snapshot handled, not with the last wake-up, so none is missed.
            snap = await self.until(pid, lambda s: s is not seen)
            seen = snap
            end = max(offset, snap.stable)
            done = now or snap.ended(turn)
            if done or end > offset:
                yield snap.stdout[offset:end], end, snap
                offset = end
            if done:
                return
