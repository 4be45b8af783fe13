"""A device kernel's side of kernel/devices.py: it runs processes of another kernel's table.

The operations here run on this kernel's thread, in the order the table's kernel posted them,
under the pids it gave. `Uplink` is a kernel listener that sends back, after each batch of
events, what changed: the tokens each process generated, its state and page counters, the
step charges, and (at most every SUMMARY_S) a summary of each KV pool for placement.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from llmos.kernel import migrate, recovery, stdio
from llmos.kernel.events import Charged, Event, Output, StateChanged
from llmos.kernel.proc import Signal, State
from llmos.kernel.users.cred import ROOT
from llmos.syscalls.abi.spec import SamplingParams

if TYPE_CHECKING:
    from llmos.drivers.driver import DeviceInfo
    from llmos.kernel.kernel import Kernel

SUMMARY_S = 0.2
MAX_HASHES = 65536  # of one pool's cached prefix pages, the newest this many go up


class Uplink:
    """Kernel listener: the news of each batch, to `send`."""

    def __init__(self, kernel: "Kernel", send: Callable[[tuple], None]) -> None:
        self.kernel = kernel
        self.send = send
        self.skip: dict[int, int] = {}   # pid -> replayed tokens the table's kernel already holds
        self.epoch: dict[int, int] = {}  # pid -> its migrations when it came here (news carries it)
        self.released: set[int] = set()  # moved away: their last events say nothing
        self.last_summary = 0.0
        self.sent: dict[str, int] = {}  # pool -> the generation of its prefix hashes last sent

    def listener(self, events: list[Event]) -> None:
        procs = self.kernel.procs
        tokens: dict[int, list[int]] = {}
        charges = []
        for e in events:
            if isinstance(e, Output):
                skip = self.skip.get(e.pid, 0)
                if skip:
                    self.skip[e.pid] = skip - len(e.tokens)
                    continue
                tokens.setdefault(e.pid, []).extend(e.tokens)
            elif isinstance(e, StateChanged):
                tokens.setdefault(e.pid, [])
            elif isinstance(e, Charged) and not e.prompt_tokens and not e.processes:
                charges.append(dataclasses.asdict(e))  # step charges: the rest is charged where it was asked
        deltas = []
        for pid, new in tokens.items():
            p = procs.get(pid)
            if p is None or pid in self.released:
                continue
            u = p.usage
            deltas.append((pid, self.epoch.get(pid, 0), new, p.state.value, p.reason,
                           (p.num_computed, u.pages_held, u.cached_tokens, u.swaps, u.preemptions)))
        now = time.monotonic()
        summary = None
        if now - self.last_summary >= SUMMARY_S or (deltas and not self.last_summary):
            summary, self.last_summary = self.summary(), now
        self.released.clear()
        if deltas or charges or summary:
            self.send(("news", deltas, charges, summary))

    def summary(self) -> tuple[dict[str, tuple[dict, list[int] | None]], "DeviceInfo"]:
        """Each pool's meminfo and its cached prefix hashes (None: unchanged since last sent), and
        the device's telemetry."""
        from llmos.kernel.devices import own

        pools = {}
        for m in self.kernel.pools():
            pool = m.memory.pool
            fresh = self.sent.get(m.name) != pool.generation
            self.sent[m.name] = pool.generation
            pools[m.name] = (dataclasses.asdict(m.memory.meminfo()), pool.cached_hashes()[-MAX_HASHES:] if fresh else None)
        return pools, own(self.kernel)


# --- the operations, posted by the table's kernel ------------------------------------------------------
def adopt(k: "Kernel", up: Uplink, rec: dict, kv: tuple[int, Any] | None = None) -> None:
    """A process placed here: its record as the journal keeps one (kernel/recovery.py), and the
    KV pages it brought (tokens covered, their KV), if it migrated by pages."""
    r = recovery.Record(rec["pid"], rec["spec"], rec["chunks"], recovery.Status(**rec["status"]))
    up.skip[r.pid] = sum(len(t) for generated, t in r.chunks if generated)
    up.epoch[r.pid] = rec.get("epoch", 0)
    problem = recovery.rebuild(k, r)
    if problem:
        raise RuntimeError(problem)
    p = k.procs[r.pid]
    if kv is not None and not p.state.done:
        migrate.install(k, k.model(p.model), p, *kv)


def export(k: "Kernel", up: Uplink, pid: int) -> None:
    """The process migrates by its pages: send them up, then drop it here."""
    p = k.procs.get(pid)
    got = migrate.export(k, k.model(p.model), p) if p is not None and not p.state.done else None
    release(k, up, pid)
    up.send(("pages", pid, *(got or (0, None))))


def fork(k: "Kernel", parent: int, child: int, text: str | None, sampling: dict | None,
         max_tokens: int | None) -> None:
    k.reserve_pids(child)
    p = k.fork(ROOT, parent, text, SamplingParams(**sampling) if sampling else None, max_tokens)
    if p.pid != child:
        raise RuntimeError(f"forked pid {p.pid}, expected {child}")


def feed(k: "Kernel", pid: int, tokens: list[int]) -> None:
    stdio.feed(k, k.procs[pid], list(tokens))


def signal(k: "Kernel", pid: int, sig: str) -> None:
    if pid in k.procs:
        k.signal(ROOT, pid, Signal(sig))


def renice(k: "Kernel", pid: int, nice: int) -> None:
    if pid in k.procs:
        k.procs[pid].priority = nice


def kill(k: "Kernel", pid: int, reason: str) -> None:
    p = k.procs.get(pid)
    if p is not None and not p.state.done:
        k.exit(p, State.KILLED, reason)


def reap(k: "Kernel", up: Uplink, pid: int) -> None:
    p = k.procs.get(pid)
    if p is not None and p.state.done:
        k.reap(ROOT, pid)
    up.skip.pop(pid, None)
    up.epoch.pop(pid, None)


def release(k: "Kernel", up: Uplink, pid: int) -> None:
    """The process moved to another device: drop it here, saying nothing more of it."""
    p = k.procs.get(pid)
    if p is None:
        return
    up.released.add(pid)
    if not p.state.done:
        k.exit(p, State.KILLED, "migrated")
    reap(k, up, pid)


OPS: dict[str, Callable[..., Any]] = {"fork": fork, "feed": feed, "signal": signal, "renice": renice,
                                      "kill": kill}
UPLINK_OPS: dict[str, Callable[..., Any]] = {"adopt": adopt, "reap": reap, "release": release, "export": export}
