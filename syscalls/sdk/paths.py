"""Where a client finds llmosd: the state directory and socket llmosd uses by default, and
the gRPC target an address names. llmosd's configuration takes its defaults from here."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

SOCKET_NAME = "llmosd.sock"


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """$LLMOS_STATE_DIR, else $XDG_STATE_HOME/llmos, else ~/.local/state/llmos."""
    env = os.environ if env is None else env
    if env.get("LLMOS_STATE_DIR"):
        return Path(env["LLMOS_STATE_DIR"]).expanduser()
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "llmos"


def default_socket(env: Mapping[str, str] | None = None) -> Path:
    """Where the daemon listens and clients connect unless told otherwise."""
    env = os.environ if env is None else env
    return Path(env["LLMOS_SOCKET"]).expanduser() if env.get("LLMOS_SOCKET") else default_state_dir(env) / SOCKET_NAME


def resolve_target(target: str | os.PathLike | None = None) -> str:
    """A gRPC target from an explicit address, else $LLMOS_SOCKET, else the default socket.

    Accepts unix:/path, a filesystem path, or HOST:PORT for TCP."""
    t = str(target) if target is not None else str(default_socket())
    if t.startswith(("unix:", "dns:", "ipv4:", "ipv6:")):
        return t
    if "/" in t or t.endswith(".sock") or ":" not in t:
        return "unix:" + os.path.abspath(os.path.expanduser(t))
    return t
