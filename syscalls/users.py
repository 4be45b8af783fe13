"""The syscalls' side of users: the caller's kernel Cred, visibility checks, and the Whoami
and token syscalls. The policy itself is the kernel's (kernel/cred.py, kernel/quota.py); this
only maps the identified User to a Cred and the token store to messages.

The handlers take the SyscallServer as `server`; server.py lists them in its syscall table.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from llmos.kernel.cred import Cred
from llmos.kernel.errors import FailedPrecondition, NotFound
from llmos.kernel.quota import UserLimits
from llmos.syscalls import auth
from llmos.syscalls.v1 import syscalls_pb2 as pb
from llmos.tokens import TokenInfo, TokenStore

if TYPE_CHECKING:
    from llmos.syscalls.server import SyscallServer


def caller() -> auth.User:
    user = auth.caller()
    if user is None:
        raise auth.Unauthenticated("this call carries no identity (it did not pass llmosd's authentication)")
    return user


def cred() -> Cred:
    """The kernel's Cred for the caller of the call being handled."""
    user = caller()
    return Cred(user.name, user.admin)


async def check_visible(server: "SyscallServer", *pids: int) -> None:
    """NotFound, exactly as for an unknown pid, for a process the caller may not see."""
    c = cred()
    if c.admin:
        return
    for pid in pids:
        snap = await server.snap(pid)
        c.check_visible(pid, snap.owner)


def _quota(q: UserLimits) -> pb.Quota:
    return pb.Quota(procs=q.procs, pages=q.pages, tokens_per_min=q.tokens_per_min)


def _token(t: TokenInfo) -> pb.TokenInfo:
    return pb.TokenInfo(id=t.id, name=t.name, user=t.user, admin=t.admin, created=t.created)


def _store(server: "SyscallServer") -> TokenStore:
    cred().check_admin("manage tokens")
    if server.tokens is None:
        raise FailedPrecondition("this daemon has no token store")
    return server.tokens


async def whoami(server: "SyscallServer", req: pb.WhoamiRequest, context) -> pb.WhoamiResponse:
    user = caller()
    limits, used = await server.call(lambda k: (k.quota.quotas.limits(user.name),
                                                k.quota.usage(k, user.name, time.monotonic())))
    return pb.WhoamiResponse(user=user.name, admin=user.admin, via=user.via, uid=user.uid, token=user.token,
                             limits=_quota(limits), used=_quota(used))


async def create_token(server: "SyscallServer", req: pb.CreateTokenRequest, context) -> pb.CreateTokenResponse:
    info, secret = _store(server).create(req.name, req.user, req.admin)
    return pb.CreateTokenResponse(token=_token(info), secret=secret)


async def list_tokens(server: "SyscallServer", req: pb.ListTokensRequest, context) -> pb.ListTokensResponse:
    return pb.ListTokensResponse(tokens=[_token(t) for t in _store(server).list()])


async def revoke_token(server: "SyscallServer", req: pb.RevokeTokenRequest, context) -> pb.RevokeTokenResponse:
    info = _store(server).revoke(req.token)
    if info is None:
        raise NotFound(f"no token named or numbered {req.token!r}")
    return pb.RevokeTokenResponse(token=_token(info))
