"""The load generator behind bench/load.py: many asyncio clients making mixed syscalls for a
bounded time, each call timed by kind, and every process they spawn followed to its end.

A process is *completed* once a client has seen it in a final state (exited or killed);
*lost* if it never got there, or could no longer be read, by the end of the run. A call that
answers an error status is *failed*: under this load none is expected.
"""
from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from llmos.syscalls.sdk import AsyncClient, SyscallError

FINAL = ("exited", "killed")
CALL_TIMEOUT = 120.0  # a call slower than this counts as failed (deadline_exceeded), never hangs the run
OPS = {"spawn_read": 3, "spawn_wait": 3, "ps": 2, "stat": 2, "meminfo": 2, "kill": 1, "fork": 1, "write": 1}
PROMPTS = ["Hello world", "The quick brown fox", "Once upon a time", "An operating system for language models",
           "Why is the sky blue?", "Tell me about kernels and pages."]


@dataclass
class Stats:
    """What the clients saw: latency per syscall kind, error statuses, and each process's fate."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    errors: collections.Counter = field(default_factory=collections.Counter)  # "kind: code" -> count
    spawned: set[int] = field(default_factory=set)
    finished: set[int] = field(default_factory=set)
    lost: set[int] = field(default_factory=set)
    preemptions: int = 0
    swaps: int = 0
    wall_s: float = 0.0

    @property
    def calls(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def figures(self) -> dict:
        """The run's numbers, as bench/load.py prints them and writes them to --json."""
        ms = lambda xs, q: float(np.percentile(xs, q) * 1000)  # noqa: E731
        lat = {k: {"n": len(v), "p50_ms": ms(v, 50), "p99_ms": ms(v, 99)} for k, v in sorted(self.latencies.items())}
        return {"wall_s": self.wall_s, "syscalls": self.calls, "syscalls_per_s": self.calls / max(self.wall_s, 1e-9),
                "spawned": len(self.spawned), "completed": len(self.finished), "lost": len(self.lost),
                "failed": sum(self.errors.values()), "errors": dict(self.errors), "preemptions": self.preemptions,
                "swaps": self.swaps, "latency": lat}


class LoadClient:
    """One client: a connection of its own, picking its next operation at random."""

    def __init__(self, client: AsyncClient, model: str, stats: Stats, rng: random.Random, max_tokens: int) -> None:
        self.c, self.model, self.stats, self.rng, self.max_tokens = client, model, stats, rng, max_tokens
        self.last_pid: int | None = None

    async def timed(self, kind: str, aw):
        t0 = time.perf_counter()
        try:
            return await asyncio.wait_for(aw, CALL_TIMEOUT)
        except SyscallError as e:
            self.stats.errors[f"{kind}: {e.code}"] += 1
            raise
        except asyncio.TimeoutError:
            self.stats.errors[f"{kind}: deadline_exceeded"] += 1
            raise
        finally:
            self.stats.latencies[kind].append(time.perf_counter() - t0)

    async def step(self) -> None:
        op = self.rng.choices(list(OPS), weights=list(OPS.values()))[0]
        try:
            await getattr(self, op)()
        except (SyscallError, asyncio.TimeoutError):
            pass  # counted by timed(); its processes are swept at the end

    # --- helpers -------------------------------------------------------------------------------
    async def _spawn(self, interactive: bool = False, max_tokens: int | None = None) -> int:
        text = self.rng.choice(PROMPTS)
        kw = dict(max_tokens=max_tokens or self.max_tokens, ignore_eos=True, interactive=interactive)
        if interactive:
            kw["messages"] = [{"role": "user", "content": text}]
        else:
            kw["prompt"] = text
        pid = await self.timed("spawn", self.c.spawn(self.model, **kw))
        self.stats.spawned.add(pid)
        self.last_pid = pid
        return pid

    async def _wait(self, pid: int, until: str = "exit", reap: bool = False):
        r = await self.timed("wait", self.c.wait(pid, until=until, reap=reap))
        if r.state in FINAL:
            self.stats.finished.add(pid)
            self.stats.preemptions += r.usage.preemptions
            self.stats.swaps += r.usage.swaps
        return r

    async def _end(self, *pids: int) -> None:
        for pid in pids:
            await self.timed("kill", self.c.kill(pid))
        for pid in pids:
            await self._wait(pid)

    # --- operations ----------------------------------------------------------------------------
    async def spawn_read(self) -> None:
        pid = await self._spawn()

        async def stream():
            return [ch async for ch in self.c.read(pid)]
        chunks = await self.timed("read", stream())
        if chunks and chunks[-1].state in FINAL:
            self.stats.finished.add(pid)

    async def spawn_wait(self) -> None:
        await self._wait(await self._spawn(), reap=True)
        self.last_pid = None

    async def ps(self) -> None:
        await self.timed("ps", self.c.ps(live_only=True))

    async def stat(self) -> None:
        if self.last_pid is None:
            return await self.ps()
        await self.timed("stat", self.c.stat(self.last_pid))

    async def meminfo(self) -> None:
        await self.timed("meminfo", self.c.meminfo())

    async def kill(self) -> None:
        pid = await self._spawn(max_tokens=4 * self.max_tokens)
        await self._end(pid)

    async def fork(self) -> None:
        pid = await self._spawn(interactive=True)
        await self._wait(pid, until="turn")
        child = await self.timed("fork", self.c.fork(pid, "And then?"))
        self.stats.spawned.add(child)
        await self._wait(child, until="turn")
        await self._end(pid, child)

    async def write(self) -> None:
        pid = await self._spawn(interactive=True)
        await self._wait(pid, until="turn")
        await self.timed("write", self.c.write(pid, "Tell me more."))
        await self._wait(pid, until="turn")
        await self._end(pid)


async def sweep(target: str, stats: Stats, timeout: float = 60.0) -> None:
    """Follow every process no client saw end (their op failed midway) to a final state; the rest are lost."""
    async with AsyncClient(target, timeout=timeout) as c:
        for pid in sorted(stats.spawned - stats.finished):
            try:
                r = await c.wait(pid)
            except SyscallError:
                stats.lost.add(pid)
                continue
            (stats.finished if r.state in FINAL else stats.lost).add(pid)


async def run_load(target: str, model: str, clients: int, seconds: float, max_tokens: int = 16, seed: int = 0,
                   on_call: Callable[[Stats], None] | None = None) -> Stats:
    """`clients` concurrent clients for `seconds`; each finishes the operation it is in, then the rest is swept."""
    stats = Stats()
    deadline = time.monotonic() + seconds

    async def client(i: int) -> None:
        async with AsyncClient(target) as c:
            lc = LoadClient(c, model, stats, random.Random(seed * 100_003 + i), max_tokens)
            while time.monotonic() < deadline:
                await lc.step()
                if on_call is not None:
                    on_call(stats)
    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    stats.wall_s = time.perf_counter() - t0
    await sweep(target, stats)
    return stats
