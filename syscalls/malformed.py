"""Requests whose bytes are not a valid message of their syscall's type.

gRPC deserializes a request before any handler runs, and a DecodeError raised there reaches
the client as UNKNOWN ("Unexpected <class DecodeError>"). This interceptor makes the
deserializer hand such bytes on as a Malformed marker instead, and answers it with
INVALID_ARGUMENT naming the message type, before the syscall's handler sees it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from llmos.syscalls.guard import guarded


@dataclass(frozen=True)
class Malformed:
    """Request bytes that did not parse."""

    message: str


def _safe(deserialize: Callable[[bytes], object] | None) -> Callable[[bytes], object] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> object:
        try:
            return deserialize(data)
        except DecodeError as e:
            return Malformed(f"malformed request: {e}")
    return parse


async def _reject(request: object, context) -> None:
    if isinstance(request, Malformed):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)


class MalformedInterceptor(grpc.aio.ServerInterceptor):
    """INVALID_ARGUMENT, not UNKNOWN, for a unary request that is not a valid protobuf message."""

    async def intercept_service(self, continuation, details):
        h = await continuation(details)
        if h is None or h.request_streaming:  # every syscall takes one request message
            return h
        return guarded(h._replace(request_deserializer=_safe(h.request_deserializer)), _reject)
