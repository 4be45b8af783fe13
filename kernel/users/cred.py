"""Cred: who makes a kernel call (like Linux's struct cred), and every rule about what that
lets them see and do.

An admin sees and controls every process, and alone may do what Unix keeps for root. A
user sees only the processes they own; the others are invisible, so looking one up fails
exactly like looking up a pid that does not exist. How a caller is identified (a socket
peer's uid, a token) is not the kernel's concern.
"""
from __future__ import annotations

from dataclasses import dataclass

from llmos.kernel.errors import NotFound, PermissionDenied
from llmos.syscalls.abi.spec import NICE_MAX, NICE_MIN

# What only an admin may do, and how a refusal names it.
ADMIN_ONLY = {
    "load": "load models",
    "unload": "unload models",
    "dmesg": "read the kernel log (it names every user's processes)",
    "shutdown": "shut the daemon down",
    "tokens": "manage tokens",
    "metrics": "read the metrics over HTTP",
    "usage": "read usage records over HTTP",
    "paths": "have llmosd read files from its own disk",
    "drain": "drain a device",
}


@dataclass(frozen=True)
class Cred:
    """A caller: the user their processes are owned by and charged to, and whether they are an admin."""

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

    def check(self, action: str) -> None:
        """PermissionDenied unless this caller may do `action` (a key of ADMIN_ONLY)."""
        if not self.admin:
            raise PermissionDenied(f"only an admin may {ADMIN_ONLY[action]}; user {self.user} is not one")

    def check_nice(self, nice: int, floor: int = 0) -> int:
        """Priority as Unix has it: anyone may be nicer, but only an admin may go below 0, or
        below `floor` (the value a process started with)."""
        if self.admin or nice >= max(0, floor):
            return nice
        least = max(0, floor)
        raise PermissionDenied(f"user {self.user} may not set nice {nice}: only an admin may go below {least} "
                               f"(nice runs from {NICE_MIN}, first, to {NICE_MAX})")

    def sees_model(self, owner: str) -> bool:
        """Whether a model owned by `owner` ("": an admin's, for everyone) exists for this caller."""
        return self.admin or not owner or owner == self.user

    def usage_user(self, requested: str = "") -> str:
        """Whose usage records this caller reads: a user only their own (whoever they name), an
        admin anyone's ("" = everyone's)."""
        if self.admin:
            return requested
        if requested and requested != self.user:
            raise PermissionDenied(f"user {self.user} may not read the usage of {requested}; only an admin may")
        return self.user

    def check_owns(self, what: str, owner: str) -> None:
        """PermissionDenied unless this caller may change or remove what `owner` holds."""
        if not (self.admin or (owner and owner == self.user)):
            holder = "an admin" if not owner else "another user"
            raise PermissionDenied(f"{what} belongs to {holder}; user {self.user} may change only their own")


ROOT = Cred("root", admin=True)  # the kernel's own calls, and in-process use that means it
