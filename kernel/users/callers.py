"""Who is calling, as a transport finds out: a unix peer's uid, or a bearer token. Each
becomes a User, and the kernel sees only its Cred.

A TCP or HTTP peer has no uid llmosd could trust, so there a bearer token is the only way
in; on the unix socket the peer's uid (SO_PEERCRED, through llmosd's relay) names the user,
and a token, when given, decides instead.
"""
from __future__ import annotations

import pwd
from dataclasses import dataclass

from llmos.kernel.users.cred import Cred
from llmos.kernel.users.tokens import TokenStore


@dataclass(frozen=True)
class User:
    """An identified caller."""

    name: str
    admin: bool
    via: str               # "unix" (the socket peer's uid) or "token"
    uid: int | None = None
    token: str = ""        # the token's name, via a token

    @property
    def cred(self) -> Cred:
        return Cred(self.name, self.admin)


def user_for_uid(uid: int, daemon_uid: int) -> User:
    """The user behind a unix uid: admin if it is root or the daemon's own uid."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid{uid}"
    return User(name, uid in (0, daemon_uid), "unix", uid)


def bearer_user(header: str | None, store: TokenStore) -> User | None:
    """The user an `Authorization` header value ("Bearer llmos_...") names, or None if it names no live token."""
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    info = store.verify(token.strip())
    return None if info is None else User(info.user, info.admin, "token", token=info.name)
