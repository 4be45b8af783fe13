"""What every syscall handler shares: kernel errors as gRPC statuses (`syscall`), and slow
work off the kernel thread (`off_thread`)."""
from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError

from llmos.kernel.errors import KernelError
from llmos.kernel.thread import in_fresh_thread

T = TypeVar("T")
log = logging.getLogger("llmos.syscalls")

STATUS = {"invalid_argument": grpc.StatusCode.INVALID_ARGUMENT, "not_found": grpc.StatusCode.NOT_FOUND,
          "resource_exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
          "failed_precondition": grpc.StatusCode.FAILED_PRECONDITION, "unavailable": grpc.StatusCode.UNAVAILABLE,
          "permission_denied": grpc.StatusCode.PERMISSION_DENIED, "unauthenticated": grpc.StatusCode.UNAUTHENTICATED}


def _status(e: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(e, KernelError):
        return STATUS.get(e.code, grpc.StatusCode.INTERNAL), str(e)
    if isinstance(e, DecodeError):  # a later message of a client stream (the interceptor checks the first)
        return grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {e}"
    if isinstance(e, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(e)
    log.exception("syscall failed")
    return grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}"


def syscall(fn: Callable) -> Callable:
    """Turn kernel errors raised by a handler (unary or streaming) into gRPC statuses."""
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def stream(self, request, context):
            try:
                async for item in fn(self, request, context):
                    yield item
            except Exception as e:  # noqa: BLE001 - every failure becomes a status, never a crash
                await context.abort(*_status(e))
        return stream

    @functools.wraps(fn)
    async def unary(self, request, context):
        try:
            return await fn(self, request, context)
        except Exception as e:  # noqa: BLE001 - every failure becomes a status, never a crash
            await context.abort(*_status(e))
    return unary


async def off_thread(fn: Callable[[], T]) -> T:
    """Slow work that needs no process state (reading weights or a dataset), on a thread of its own."""
    return await asyncio.wrap_future(in_fresh_thread(fn))
