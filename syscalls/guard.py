"""A gRPC handler with a check awaited before its behaviour: what the server's interceptors
(identity, malformed requests) share."""
from __future__ import annotations

import contextlib
import inspect
from collections.abc import Awaitable, Callable

Check = Callable[[object, object], Awaitable[None]]  # (request, context); aborts the call to refuse it


def guarded(h, check: Check):
    """The RpcMethodHandler `h`, awaiting `check(request, context)` before each call runs."""
    def unary(behavior):
        async def call(request, context):
            await check(request, context)
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
        return call

    def stream(behavior):
        async def call(request, context):
            await check(request, context)
            result = behavior(request, context)
            if inspect.isasyncgen(result):
                async with contextlib.aclosing(result) as items:
                    async for item in items:
                        yield item
            elif inspect.isawaitable(result):
                await result
        return call

    if h.unary_unary:
        return h._replace(unary_unary=unary(h.unary_unary))
    if h.stream_unary:
        return h._replace(stream_unary=unary(h.stream_unary))
    if h.unary_stream:
        return h._replace(unary_stream=stream(h.unary_stream))
    return h._replace(stream_stream=stream(h.stream_stream))
