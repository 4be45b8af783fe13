"""What runs before every syscall handler: who is calling, and whether the request parsed.

Identity. On the unix socket the user is the peer's uid, as the kernel reported it
(SO_PEERCRED) to llmosd's relay: gRPC does not expose the sockets it accepts, so the relay
connects to the server from a socket bound to a fresh abstract name and records name → uid;
`context.peer()` then shows that name, and `uid_of` (the relay's table) maps it back. A
client never declares who it is. On TCP a bearer token is required
(`authorization: Bearer llmos_...`); a token, when given, decides on either transport. The
User found is held for the call in a context variable; `cred()` hands handlers its Cred.

Malformed requests. gRPC deserializes a request before any handler runs, and a DecodeError
raised there reaches the client as UNKNOWN. The deserializer here hands such bytes on as a
Malformed marker instead, answered with INVALID_ARGUMENT naming the problem.
"""
from __future__ import annotations

import contextlib
import contextvars
import inspect
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from llmos.kernel.errors import KernelError
from llmos.kernel.users.callers import User, bearer_user, user_for_uid
from llmos.kernel.users.cred import Cred
from llmos.kernel.users.tokens import TokenStore

OPEN_METHODS = ("/grpc.health.v1.Health/",)  # health probes need no identity
TOKEN_HINT = "set LLMOS_TOKEN or pass --token (an admin creates one with `llmos token create NAME`)"
Check = Callable[[object, object], Awaitable[None]]  # (request, context); aborts the call to refuse it

# The caller of the call being handled. Each gRPC call runs in an asyncio task of its own,
# with its own copy of the context, so a value set for one call is never seen by another.
_CALLER: contextvars.ContextVar["User | None"] = contextvars.ContextVar("llmos_caller", default=None)


class Unauthenticated(KernelError):
    """The call carries no identity the daemon accepts."""

    code = "unauthenticated"


def caller() -> User:
    """The User of the call being handled (set by AuthInterceptor)."""
    user = _CALLER.get()
    if user is None:
        raise Unauthenticated("this call carries no identity (it did not pass llmosd's authentication)")
    return user


def cred() -> Cred:
    """The kernel's Cred for the caller of the call being handled."""
    return caller().cred


class Authenticator:
    """Maps a call's peer and metadata to a User, or refuses it."""

    def __init__(self, uid_of: Callable[[str], int | None], store: TokenStore, daemon_uid: int | None = None) -> None:
        self.uid_of = uid_of  # a relayed unix peer's name → its uid
        self.store = store
        self.daemon_uid = os.getuid() if daemon_uid is None else daemon_uid

    def identify(self, peer: str, metadata: Iterable[tuple[str, str | bytes]] | None) -> User:
        header = next((v for k, v in metadata or () if k == "authorization"), None)
        if header is not None:
            user = bearer_user(header if isinstance(header, str) else header.decode(errors="replace"), self.store)
            if user is None:
                raise Unauthenticated("the bearer token is not valid: it is unknown or has been revoked")
            return user
        if peer.startswith("unix"):
            uid = self.uid_of(peer)
            if uid is None:
                raise Unauthenticated("this local connection did not come through llmosd's socket")
            return user_for_uid(uid, self.daemon_uid)
        raise Unauthenticated(f"a bearer token is required over TCP: {TOKEN_HINT}")


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Identifies every call (but health probes) before its handler runs; UNAUTHENTICATED if it cannot."""

    def __init__(self, auth: Authenticator, open_methods: tuple[str, ...] = OPEN_METHODS) -> None:
        self.auth = auth
        self.open_methods = open_methods

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(self.open_methods):
            return handler

        async def identify(request, context) -> None:
            try:
                _CALLER.set(self.auth.identify(context.peer(), context.invocation_metadata()))
            except Unauthenticated as e:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))
        return guarded(handler, identify)


@dataclass(frozen=True)
class Malformed:
    """Request bytes that did not parse."""

    message: str


class MalformedInterceptor(grpc.aio.ServerInterceptor):
    """INVALID_ARGUMENT, not UNKNOWN, for a unary request that is not a valid protobuf message."""

    async def intercept_service(self, continuation, details):
        h = await continuation(details)
        if h is None or h.request_streaming:  # every syscall takes one request message
            return h
        return guarded(h._replace(request_deserializer=_safe(h.request_deserializer)), _reject)


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
