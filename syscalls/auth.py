"""Who is calling: every connection maps to a User, and every call is identified before its
handler runs.

On the unix socket the user is the peer's uid, as the kernel reported it (SO_PEERCRED) to
the relay that accepted the connection (llmosd/relay.py). gRPC does not expose the socket it
accepted, so the relay opens its own connection to the gRPC server from a socket bound to a
fresh abstract name, and records name → uid in a PeerTable; `context.peer()` then shows
that name. A client never declares who it is. On TCP a bearer token is required
(`authorization: Bearer llmos_...`); a token, when given, decides on either transport.
"""
from __future__ import annotations

import contextvars
import os
import pwd
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from llmos.kernel.errors import KernelError
from llmos.syscalls.guard import guarded
from llmos.tokens import TokenStore

OPEN_METHODS = ("/grpc.health.v1.Health/",)  # health probes need no identity
TOKEN_HINT = "set LLMOS_TOKEN or pass --token (an admin creates one with `llmos token create NAME`)"

# The caller of the call being handled. Each gRPC call runs in an asyncio task of its own,
# with its own copy of the context, so a value set for one call is never seen by another.
_CALLER: contextvars.ContextVar["User | None"] = contextvars.ContextVar("llmos_caller", default=None)


class Unauthenticated(KernelError):
    """The call carries no identity the daemon accepts."""

    code = "unauthenticated"


@dataclass(frozen=True)
class User:
    """An identified caller."""

    name: str
    admin: bool
    via: str               # "unix" (the socket peer's uid) or "token"
    uid: int | None = None
    token: str = ""        # the token's name, via a token


def user_for_uid(uid: int, daemon_uid: int) -> User:
    """The user behind a unix uid: admin if it is root or the daemon's own uid."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid{uid}"
    return User(name, uid in (0, daemon_uid), "unix", uid)


def authenticate_bearer(header: str | None, store: TokenStore) -> User | None:
    """The user an `Authorization` header value ("Bearer llmos_...") names, or None if it names no live token."""
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    info = store.verify(token.strip())
    return None if info is None else User(info.user, info.admin, "token", token=info.name)


class PeerTable:
    """Relay connections, by the name context.peer() shows for them, → the uid on the far side."""

    def __init__(self) -> None:
        self._uids: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, peer: str, uid: int) -> None:
        with self._lock:
            self._uids[peer] = uid

    def discard(self, peer: str) -> None:
        with self._lock:
            self._uids.pop(peer, None)

    def get(self, peer: str) -> int | None:
        with self._lock:
            return self._uids.get(peer)

    def __len__(self) -> int:
        with self._lock:
            return len(self._uids)


class Authenticator:
    """Maps a call's peer and metadata to a User, or refuses it."""

    def __init__(self, peers: PeerTable, store: TokenStore, daemon_uid: int | None = None) -> None:
        self.peers = peers
        self.store = store
        self.daemon_uid = os.getuid() if daemon_uid is None else daemon_uid

    def bearer(self, header: str | None) -> User | None:
        return authenticate_bearer(header, self.store)

    def identify(self, peer: str, metadata: Iterable[tuple[str, str | bytes]] | None) -> User:
        header = next((v for k, v in metadata or () if k == "authorization"), None)
        if header is not None:
            user = self.bearer(header if isinstance(header, str) else header.decode(errors="replace"))
            if user is None:
                raise Unauthenticated("the bearer token is not valid: it is unknown or has been revoked")
            return user
        if peer.startswith("unix"):
            uid = self.peers.get(peer)
            if uid is None:
                raise Unauthenticated("this local connection did not come through llmosd's socket")
            return user_for_uid(uid, self.daemon_uid)
        raise Unauthenticated(f"a bearer token is required over TCP: {TOKEN_HINT}")


def caller() -> User | None:
    """The User of the call being handled (set by AuthInterceptor), or None outside one."""
    return _CALLER.get()


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Identifies every call (but health probes) before its handler runs; UNAUTHENTICATED if it cannot."""

    def __init__(self, auth: Authenticator, open_methods: tuple[str, ...] = OPEN_METHODS) -> None:
        self.auth = auth
        self.open_methods = open_methods

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(self.open_methods):
            return handler
        return _identified(handler, self.auth)


def _identified(h, auth: Authenticator):
    """The handler `h`, identifying the caller first."""
    async def identify(request, context) -> None:
        try:
            _CALLER.set(auth.identify(context.peer(), context.invocation_metadata()))
        except Unauthenticated as e:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))
    return guarded(h, identify)
