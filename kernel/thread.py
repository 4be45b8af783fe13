"""KernelThread: runs the kernel's step loop on a thread of its own.

The kernel is single-threaded. Other threads (the asyncio loop serving gRPC) never touch
it directly: they `submit(fn)` a call, which runs on this thread between two steps, and
get a concurrent.futures.Future back. When no process has work and no call is queued the
thread sleeps on a condition, so an idle daemon burns no CPU.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from llmos.kernel import devices
from llmos.kernel.errors import Unavailable
from llmos.kernel.proc import State

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel

T = TypeVar("T")
LogSink = Callable[[list[tuple[float, str, str]]], None]

# A blocked or stopped process with a wall-time limit is only checked inside step(); wake
# up this often while one exists so its limit still fires.
LIMIT_TICK_S = 0.25


class KernelThread:
    """Owns a Kernel and runs its step loop; the only thread that ever touches it."""

    def __init__(self, kernel: "Kernel", on_log: LogSink | None = None, name: str = "llmos-kernel") -> None:
        self.kernel = kernel
        self.on_log = on_log
        self._calls: collections.deque[tuple[Callable, concurrent.futures.Future]] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._last_log: tuple[float, str, str] | None = None  # lines logged before start are flushed too
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.steps_failed = 0

    def start(self) -> "KernelThread":
        self._thread.start()
        return self

    def submit(self, fn: Callable[["Kernel"], T]) -> "concurrent.futures.Future[T]":
        """Run fn(kernel) on the kernel thread between steps; its result or error lands in the future."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("the kernel thread has stopped")
            self._calls.append((fn, fut))
            self._cond.notify()
        return fut

    def call(self, fn: Callable[["Kernel"], T], timeout: float | None = None) -> T:
        """submit() and wait for the result (for threads that may block)."""
        return self.submit(fn).result(timeout)

    async def run(self, fn: Callable[["Kernel"], T]) -> T:
        """submit() from an event loop and await the result, never blocking the loop;
        Unavailable once the thread has stopped."""
        try:
            fut = self.submit(fn)
        except RuntimeError:
            raise Unavailable("llmosd is shutting down: its kernel has stopped") from None
        return await asyncio.wrap_future(fut)

    def stop(self, timeout: float | None = 10.0) -> None:
        """Finish the queued calls, then end the loop; steps in flight complete first."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Something outside the kernel has news for it (a device's kernel): step soon. Any thread."""
        with self._cond:
            self._cond.notify()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # --- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        k = self.kernel
        self._flush_log()
        while True:
            with self._cond:
                while not self._calls and not self._stopping and not k.has_work():
                    if not self._cond.wait(LIMIT_TICK_S if self._needs_tick() else None):
                        break  # timed out: run a step so wall-time limits are checked
                calls, self._calls = self._calls, collections.deque()
                stopping = self._stopping
            for fn, fut in calls:
                if fut.set_running_or_notify_cancel():
                    try:
                        with k.batch():  # its events reach the listeners together, after it
                            result = fn(k)
                        fut.set_result(result)
                    except BaseException as e:  # noqa: BLE001 - every error belongs to its caller
                        fut.set_exception(e)
            if stopping:
                self._flush_log()
                return
            self._step()
            self._flush_log()

    def _step(self) -> None:
        k = self.kernel
        try:
            k.step()
        except Exception as e:  # noqa: BLE001 - a driver failure must not kill the loop
            self.steps_failed += 1
            k.log(f"step failed: {type(e).__name__}: {e}; killing the processes that were running", "error")
            with k.batch():
                for p in list(k.procs.values()):
                    if p.runnable and p.owed > 0 and p.here:
                        k.exit(p, State.KILLED, f"step failed: {type(e).__name__}: {e}")

    def _needs_tick(self) -> bool:
        """Whether time alone can change something: a wall-time limit, or a tokens-per-minute quota."""
        k = self.kernel
        return (self._has_wall_limits() or k.quota.holds_back(k.procs.values(), time.monotonic())
                or devices.idle_replicas(k))

    def _has_wall_limits(self) -> bool:
        return any((p.limits.max_wall_s is not None or p.term_at is not None) and not p.state.done
                   for p in self.kernel.procs.values())

    def _flush_log(self) -> None:
        """Hand log lines written since the last flush to on_log."""
        ring = self.kernel.ring
        if self.on_log is None or not ring or ring[-1] is self._last_log:
            return
        new: list[tuple[float, str, str]] = []
        for entry in reversed(ring):
            if entry is self._last_log:
                break
            new.append(entry)
        self._last_log = ring[-1]
        new.reverse()
        try:
            self.on_log(new)
        except Exception:  # noqa: BLE001 - a broken log sink must not stop the kernel
            pass


def in_fresh_thread(fn: Callable[[], T]) -> "concurrent.futures.Future[T]":
    """Run fn on a new thread that ends with it.

    For torch work off the kernel thread (loading weights). A thread that runs torch ops keeps
    an OpenMP team as long as it lives; with two live teams on a small CPU, libgomp manages
    more threads than cores, throttles its spinning, and every step gets slower (measured:
    ~25% at 16 processes on 2 cores). A pool thread would live on; this one does not.
    """
    fut: concurrent.futures.Future[T] = concurrent.futures.Future()

    def target() -> None:
        if fut.set_running_or_notify_cancel():
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - the caller gets every error
                fut.set_exception(e)
    threading.Thread(target=target, name="llmos-load", daemon=True).start()
    return fut
