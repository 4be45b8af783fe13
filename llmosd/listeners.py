"""Where callers come in, and who each one is: the unix socket's relay (each peer's uid),
the TCP listener (TLS optional, bearer tokens), the token store both trust, the HTTP
gateway's bearer check, and the quotas from the config."""
from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path

import grpc

from llmos.config import Config
from llmos.kernel.users.callers import bearer_user, user_for_uid
from llmos.kernel.users.cred import Cred
from llmos.kernel.users.quota import Quotas, UserLimits
from llmos.kernel.users.tokens import TokenStore
from llmos.relay import PeerTable, UnixRelay
from llmos.userconf import QUOTA_KEYS
from llmos.syscalls.server.interceptors import Authenticator, AuthInterceptor

TOKENS_DB = "tokens.db"


class Listeners:
    """Who may call this daemon, and how each caller is recognised."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.tokens = TokenStore(cfg.state_dir / TOKENS_DB)
        self.peers = PeerTable()
        self.interceptor = AuthInterceptor(Authenticator(self.peers.get, self.tokens))
        self.relay = UnixRelay(cfg.socket_path, cfg.state_dir / "run", self.peers, cfg.socket_mode)

    def add_ports(self, server: grpc.aio.Server) -> list[str]:
        """Bind the private socket the relay feeds and the TCP listener; returns what to announce."""
        server.add_insecure_port(self.relay.target)
        targets = [f"unix:{self.cfg.socket_path}"]
        if self.cfg.listen:
            try:
                bound = server.add_secure_port(self.cfg.listen, self._tls()) if self.cfg.tls_cert \
                    else server.add_insecure_port(self.cfg.listen)
            except RuntimeError as e:
                raise RuntimeError(f"cannot listen on {self.cfg.listen}: {e}") from None
            if bound == 0:
                raise RuntimeError(f"cannot listen on {self.cfg.listen}")
            targets.append(self.cfg.listen)
        return targets

    def _tls(self) -> grpc.ServerCredentials:
        try:
            key, cert = Path(self.cfg.tls_key).read_bytes(), Path(self.cfg.tls_cert).read_bytes()
        except OSError as e:
            raise RuntimeError(f"cannot read the TLS key or certificate: {e}") from None
        return grpc.ssl_server_credentials([(key, cert)])

    def http_tls(self) -> ssl.SSLContext | None:
        """TLS for the HTTP gateway, from --http-tls-cert and --http-tls-key."""
        if self.cfg.http_tls_cert is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(str(self.cfg.http_tls_cert), str(self.cfg.http_tls_key))
        except (OSError, ssl.SSLError) as e:
            raise OSError(f"cannot read the HTTP TLS key or certificate: {e}") from None
        return ctx

    def http_cred(self, headers: Mapping[str, str]) -> Cred | None:
        """The HTTP gateway's authenticate hook: the Cred a bearer token names, else None (401)."""
        user = bearer_user(headers.get("Authorization"), self.tokens)
        return user.cred if user else None

    async def start(self) -> None:
        """Open the public unix socket (after the gRPC server has started)."""
        await self.relay.start()

    async def close(self) -> None:
        await self.relay.close()
        self.tokens.close()


def quotas(cfg: Config, admins: tuple[str, ...]) -> Quotas:
    """The kernel's Quotas from the config. The admins named (the daemon's own user and root)
    are unlimited unless [users.NAME] says otherwise."""
    default = UserLimits(cfg.quota_procs, cfg.quota_pages, cfg.quota_tokens_per_min, cfg.quota_data)
    users = {name: UserLimits() for name in admins}
    for name, over in cfg.users.items():
        base = users.get(name, default)
        users[name] = UserLimits(**{k: over.get(k, getattr(base, k)) for k in QUOTA_KEYS})
    return Quotas(default, users)


def admin_names() -> tuple[str, ...]:
    """The users who are admins on the unix socket: the daemon's own and root."""
    return tuple(dict.fromkeys((user_for_uid(os.getuid(), os.getuid()).name, "root")))
