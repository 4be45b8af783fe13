"""Cred: who makes a kernel call (like Linux's struct cred), and what that lets them see.

An admin sees and controls every process. A user sees only the processes they own; the
others are invisible, so looking one up fails exactly like looking up a pid that does not
exist. How a caller is identified (a socket peer's uid, a token) is not the kernel's concern.
"""
from __future__ import annotations

from dataclasses import dataclass

from llmos.kernel.errors import NotFound, PermissionDenied


@dataclass(frozen=True)
class Cred:
    """A caller: the user name their processes are owned by and charged to, and whether they are an admin."""

    user: str
    admin: bool = False

    def sees(self, owner: str) -> bool:
        """Whether a process owned by `owner` exists as far as this caller can tell."""
        return self.admin or owner == self.user

    def check_visible(self, pid: int, owner: str | None) -> None:
        """NotFound, worded like an unknown pid, unless the process exists and is visible."""
        if owner is None or not self.sees(owner):
            raise NotFound(f"no process with pid {pid}")

    def owner_for(self, requested: str = "") -> str:
        """The owner of a process this caller spawns; only an admin may name someone else."""
        if not requested or requested == self.user:
            return self.user
        if not self.admin:
            raise PermissionDenied(f"user {self.user} may not start processes as {requested}; only an admin may")
        return requested

    def check_admin(self, action: str) -> None:
        """PermissionDenied unless this caller is an admin; `action` says what was refused."""
        if not self.admin:
            raise PermissionDenied(f"only an admin may {action}; user {self.user} is not one")

