"""Streams read on a thread of their own, so that Ctrl-C is raised in the shell's code and never
inside gRPC's: a KeyboardInterrupt raised within a blocking gRPC read can leave the call's lock
held, and the `kill` or the channel's close that follows then waits forever."""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


def interruptible(items: Iterable[T]) -> Iterator[T]:
    """The items of `items`, read by a daemon thread; the caller blocks on a queue, where Ctrl-C
    lands. Errors of the read are raised here. Left early, the thread ends when the stream does
    (the process ends, or the client's channel closes)."""
    out: queue.Queue = queue.Queue()

    def pump() -> None:
        try:
            for item in items:
                out.put(item)
            out.put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            out.put(e)

    threading.Thread(target=pump, name="llmos-read", daemon=True).start()
    while (item := out.get()) is not _END:
        if isinstance(item, BaseException):
            raise item
        yield item
