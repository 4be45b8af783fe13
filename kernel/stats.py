"""Daemon-wide figures: generated tokens and their recent rate, queue depth, processes by
state, KV pages per model and device telemetry.

Everything here runs on the kernel thread: TokenMeter is a kernel listener, and `take` is
called through KernelThread.submit/call. What leaves the thread is a frozen Stats.
"""
from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmos.drivers.driver import DeviceInfo
from llmos.kernel import devices
from llmos.kernel.events import Event, Output
from llmos.kernel.memory import MemInfo
from llmos.kernel.proc import State

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel

RATE_WINDOW_S = 10.0


@dataclass(frozen=True)
class PoolStats:
    """One loaded model's KV pool."""

    model: str
    mem: MemInfo
    kv_bytes: int
    device: str = ""  # where the pool is (llmosd --device with several)


@dataclass(frozen=True)
class Stats:
    """A snapshot of the daemon-wide figures."""

    generated_tokens: int      # since the meter started
    tokens_per_s: float        # over the last rate_window_s seconds (less just after start)
    rate_window_s: float
    queue_depth: int           # runnable processes holding no KV pages: not yet admitted, or swapped out
    procs: dict[str, int]      # processes in the table by state, every state present
    pools: list[PoolStats]
    devices: list[DeviceInfo]
    uptime_s: float
    step_seconds: float = 0.0  # device seconds of token steps since the kernel booted (kernel/accounting.py)
    task_seconds: float = 0.0  # and of task units


class TokenMeter:
    """Counts generated tokens from the kernel's Output events.

    Append `listener` to Kernel.listeners before the kernel thread starts; the meter is then
    only ever touched on that thread. Tokens replayed from the journal are not counted.
    """

    def __init__(self, window_s: float = RATE_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self.started = clock()
        self.total = 0
        self._buckets: collections.deque[list[int]] = collections.deque()  # [second, tokens]

    def listener(self, events: list[Event]) -> None:
        new = sum(len(e.tokens) for e in events if isinstance(e, Output))
        if new:
            self.add(new)

    def add(self, n: int) -> None:
        now = int(self.clock())
        if self._buckets and self._buckets[-1][0] == now:
            self._buckets[-1][1] += n
        else:
            self._buckets.append([now, n])
        self.total += n
        self._prune(now)

    def rate(self, now: float | None = None) -> float:
        """Tokens per second over the last window_s seconds (or since the start, if sooner)."""
        now = self.clock() if now is None else now
        first = int(now) - int(self.window_s) + 1  # the oldest whole second in the window
        self._prune(int(now))
        span = min(now - first, now - self.started)
        return sum(n for _, n in self._buckets) / span if span > 0 else 0.0

    def _prune(self, now: int) -> None:
        while self._buckets and self._buckets[0][0] <= now - self.window_s:
            self._buckets.popleft()


def queue_depth(k: "Kernel") -> int:
    """Runnable processes that owe tokens but hold no KV pages: waiting for admission, or swapped out."""
    def waiting(pid: int, model: str) -> bool:
        m = k.models.get(model)
        return m is not None and pid not in m.memory.tables
    return sum(1 for p in k.procs.values() if p.runnable and p.owed > 0 and waiting(p.pid, p.model))


def take(k: "Kernel", meter: TokenMeter) -> Stats:
    """The figures now. Call it on the kernel thread."""
    counts = collections.Counter(p.state.value for p in k.procs.values())
    pools = [PoolStats(name, mem, devices.kv_bytes(k, name, mem), device) for name, device, mem in devices.pools(k)]
    now = meter.clock()
    return Stats(generated_tokens=meter.total, tokens_per_s=meter.rate(now), rate_window_s=meter.window_s,
                 queue_depth=queue_depth(k), procs={s.value: counts.get(s.value, 0) for s in State},
                 pools=pools, devices=devices.describe(k), uptime_s=now - meter.started,
                 step_seconds=k.device_time.step_seconds, task_seconds=k.device_time.task_seconds)
