"""Bearer tokens: created, listed and revoked by an admin, stored hashed in SQLite.

A token reads `llmos_<id>_<secret>`. The id finds its row; the secret is 256 random bits and
only its salted SHA-256 is stored, so the database never holds anything that can be
presented as a token. (A slow hash like scrypt guards guessable passwords; a random 256-bit
secret cannot be guessed, and every call would pay for the slow hash.)

This module knows nothing of gRPC or the kernel: the HTTP gateway checks tokens with it too.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from llmos.syscalls.abi.names import check_name

PREFIX = "llmos"
SCHEMA = """CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, user TEXT NOT NULL, admin INTEGER NOT NULL,
    salt BLOB NOT NULL, hash BLOB NOT NULL, created REAL NOT NULL)"""


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed: never its secret."""

    id: str
    name: str
    user: str
    admin: bool
    created: float  # unix time


def _digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()


class TokenStore:
    """The tokens of one daemon, in <state-dir>/tokens.db (mode 0600)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        self.path.chmod(0o600)  # whatever the state dir's mode, or an older file's
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(self, name: str, user: str = "", admin: bool = False) -> tuple[TokenInfo, str]:
        """A new token for `user` (default: the token's name); returns it and its secret, shown only now."""
        check_name("token name", name)
        user = check_name("user", user or name)
        salt, secret = os.urandom(16), secrets.token_urlsafe(32)
        info = TokenInfo(secrets.token_hex(6), name, user, admin, time.time())
        with self._lock:
            if self._db.execute("SELECT 1 FROM tokens WHERE name = ?", (name,)).fetchone():
                raise ValueError(f"a token named {name!r} already exists; revoke it first or pick another name")
            self._db.execute("INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (info.id, name, user, int(admin), salt, _digest(salt, secret), info.created))
        return info, f"{PREFIX}_{info.id}_{secret}"

    def list(self) -> list[TokenInfo]:
        with self._lock:
            rows = self._db.execute("SELECT id, name, user, admin, created FROM tokens ORDER BY created").fetchall()
        return [TokenInfo(i, n, u, bool(a), c) for i, n, u, a, c in rows]

    def revoke(self, name_or_id: str) -> TokenInfo | None:
        """Delete a token, found by name or id; None if there is no such token."""
        with self._lock:
            row = self._db.execute("SELECT id, name, user, admin, created FROM tokens WHERE name = ? OR id = ?",
                                   (name_or_id, name_or_id)).fetchone()
            if row is None:
                return None
            self._db.execute("DELETE FROM tokens WHERE id = ?", (row[0],))
        return TokenInfo(row[0], row[1], row[2], bool(row[3]), row[4])

    def verify(self, token: str) -> TokenInfo | None:
        """The token's info if `token` is a live token's full text, else None."""
        prefix, _, rest = token.partition("_")
        token_id, _, secret = rest.partition("_")
        if prefix != PREFIX or not token_id or not secret:
            return None
        with self._lock:
            row = self._db.execute("SELECT id, name, user, admin, created, salt, hash FROM tokens WHERE id = ?",
                                   (token_id,)).fetchone()
        if row is None or not hmac.compare_digest(_digest(row[5], secret), row[6]):
            return None
        return TokenInfo(row[0], row[1], row[2], bool(row[3]), row[4])
