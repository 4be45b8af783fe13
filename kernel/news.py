"""What other devices' kernels send up (kernel/devices.py), applied on this kernel's thread.

- news: each process's generated tokens, replayed through this kernel's stdout code, its state
  and page counters; the device's step charges; a summary of its pools and its telemetry;
- pages: the KV pages a process brought when it migrated (kernel/migrate.py);
- failed: an operation on a process failed there: it ends, with the reason;
- lost: the device is gone (kernel/migrate.py places its processes again).
News from a device a process has since left (an older epoch) is dropped.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from llmos.kernel import devices, migrate, stdio
from llmos.kernel.devices import Device, Replica
from llmos.kernel.events import Charged, StateChanged
from llmos.kernel.memory import MemInfo
from llmos.kernel.proc import State

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel


def poll(k: "Kernel") -> None:
    """Apply what the devices sent since the last poll, then hold or release processes there by
    their owners' tokens-per-minute quotas."""
    for d in k.devices:
        while d.inbox:
            apply(k, d, d.inbox.popleft())
    if k.devices:
        now = time.monotonic()
        hold(k, now)
        devices.expire(k, now)


def hold(k: "Kernel", now: float) -> None:
    """A process on another device whose owner has spent their tokens for this minute is stopped
    there (its state here does not change) until they have not; that device's scheduler knows no
    quotas, so this is enforced a step and a message late, not token by token."""
    if not k.quota.rated and not k.held:
        return
    for p in k.procs.values():
        if not p.device or p.state.done:
            continue
        over = k.quota.throttled(p.owner, now)
        if over and p.pid not in k.held and p.runnable:
            k.held.add(p.pid)
            devices.forward(k, p, "signal", "STOP")
        elif not over and p.pid in k.held:
            k.held.discard(p.pid)
            if p.state != State.STOPPED:  # a user's own STOP stands
                devices.forward(k, p, "signal", "CONT")


def apply(k: "Kernel", d: Device, msg: tuple) -> None:
    kind = msg[0]
    if kind == "news":
        _, deltas, charges, summary = msg
        now = time.monotonic()
        for delta in deltas:
            _update(k, d, now, *delta)
        for c in charges:
            k.emit(Charged(**c))
        if summary is not None:
            pools, d.info = summary
            for name, (mem, hashes) in pools.items():
                old = d.models.get(name)
                if old is not None:  # not one unloaded since; hashes None: as they were
                    held = old.hashes if hashes is None else frozenset(hashes)
                    d.models[name] = Replica(MemInfo(**mem), held, old.last_used)
    elif kind == "pages":
        migrate.arrived(k, d, *msg[1:])
    elif kind == "failed":
        _, pid, why = msg
        p = k.procs.get(pid)
        k.log(f"device {d.name}: pid {pid}: {why}", "error")
        if p is not None and p.incoming == d.name:
            migrate.arrived(k, d, pid, 0, None)  # its pages could not leave: it recomputes where it went
        elif p is not None and p.device == d.name and not p.state.done:
            k.exit(p, State.KILLED, f"device {d.name}: {why}")
    elif kind == "lost":
        migrate.lost(k, d, msg[1])


def _update(k: "Kernel", d: Device, now: float, pid: int, epoch: int, tokens: list[int], state: str, reason: str,
            stats: tuple[int, int, int, int, int]) -> None:
    """One process's news: replay its tokens through stdout, then take its counters and state."""
    p = k.procs.get(pid)
    there = State(state)
    if p is None or p.device != d.name or p.moves != epoch:
        if there.done:
            d.link.post("reap", pid)
        return
    m = k.models.get(p.model)
    if p.model in d.models:
        d.models[p.model].last_used = now
    before = p.num_computed
    p.num_computed, p.usage.pages_held, p.usage.cached_tokens, p.usage.swaps, p.usage.preemptions = stats
    if p.num_computed > before:
        k.quota.charge(p.owner, p.num_computed - before, now)
    for t in tokens:
        if p.state.done or m is None:
            break
        stdio.emit(k, m, p, t)
    if there.done:
        d.link.post("reap", pid)
        if not p.state.done:
            k.exit(p, there, reason)
    elif p.runnable and there in (State.READY, State.RUNNING) and p.state != there:
        p.state = there
        k.emit(StateChanged(pid))
