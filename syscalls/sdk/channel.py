"""How a client reaches llmosd: the gRPC channel (plain, or TLS trusting a CA file) and the
bearer token sent with every call.

On the unix socket the daemon knows who you are from your uid; over TCP it needs a token.
Defaults for TCP targets come from the environment: LLMOS_TOKEN (made by an admin with
`llmos token create NAME`) and LLMOS_TLS_CA (the PEM file of the CA that signed the daemon's
--tls-cert). Given explicitly, a token is sent on any target, and then it decides who you are.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc

from llmos.syscalls.sdk.errors import SyscallError

Metadata = tuple[tuple[str, str], ...]


def is_unix(target: str) -> bool:
    return target.startswith("unix:")


def token_for(target: str, token: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """The token to send: the one given, else $LLMOS_TOKEN for a TCP target."""
    env = os.environ if env is None else env
    if token is None and not is_unix(target):
        token = env.get("LLMOS_TOKEN")
    return token or None


def ca_for(target: str, ca: str | os.PathLike | None, env: Mapping[str, str] | None = None) -> Path | None:
    """The CA file that turns TLS on: the one given, else $LLMOS_TLS_CA, for a TCP target only."""
    env = os.environ if env is None else env
    if is_unix(target):
        return None
    ca = ca if ca is not None else env.get("LLMOS_TLS_CA")
    return Path(ca).expanduser() if ca else None


def metadata(token: str | None) -> Metadata | None:
    """Call metadata carrying the token, as `authorization: Bearer <token>`."""
    return (("authorization", f"Bearer {token}"),) if token else None


def _credentials(ca: Path) -> grpc.ChannelCredentials:
    try:
        return grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    except OSError as e:
        raise SyscallError("invalid_argument", f"cannot read the CA file {ca}: {e.strerror}") from None


def open_channel(target: str, ca: Path | None, options: Sequence[tuple[str, object]]) -> grpc.Channel:
    """A blocking channel to target, with TLS if a CA file is given."""
    if ca is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, _credentials(ca), options=options)


def open_aio_channel(target: str, ca: Path | None, options: Sequence[tuple[str, object]]) -> grpc.aio.Channel:
    """The asyncio twin of open_channel."""
    if ca is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, _credentials(ca), options=options)
