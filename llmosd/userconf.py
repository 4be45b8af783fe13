"""The users part of llmosd's configuration: the socket's mode and per-user quota overrides.

Per-user overrides live in the TOML file, one table per user; keys left out take the
defaults (--quota-procs, --quota-pages, --quota-tokens-per-min); "unlimited" lifts one:

    [users.alice]
    procs = 8
    pages = 512
    tokens_per_min = "unlimited"

Imports nothing heavy: llmos.config uses it.
"""
from __future__ import annotations

from typing import Any

QUOTA_KEYS = ("procs", "pages", "tokens_per_min", "data_bytes")
UNLIMITED = "unlimited"


def parse_mode(v: Any) -> int:
    """A file mode: 0o666 from TOML, or '0666' / '666' as text."""
    try:
        mode = v if isinstance(v, int) else int(str(v), 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{v!r} is not a file mode: use e.g. 0600 or 0666")
    return mode


def _limit(v: Any) -> int | None:
    if v == UNLIMITED:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"{v!r} is not a limit: use a positive integer or \"{UNLIMITED}\"")
    return v


def parse_users(table: Any, origin: str) -> dict[str, dict[str, int | None]]:
    """{user: {quota: limit or None}} from the TOML `users` table; ValueError names the bad entry."""
    if not isinstance(table, dict):
        raise ValueError(f"{origin}: users must be a table of [users.NAME] tables")
    out: dict[str, dict[str, int | None]] = {}
    for user, limits in table.items():
        if not isinstance(limits, dict):
            raise ValueError(f"{origin}: users.{user} must be a table, e.g. [users.{user}] with procs = 4")
        out[user] = {}
        for key, v in limits.items():
            name = key.replace("-", "_")
            if name not in QUOTA_KEYS:
                raise ValueError(f"{origin}: users.{user}: unknown quota {key!r} (use {', '.join(QUOTA_KEYS)})")
            try:
                out[user][name] = _limit(v)
            except ValueError as e:
                raise ValueError(f"{origin}: users.{user}.{key}: {e}") from None
    return out
