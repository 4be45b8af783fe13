"""Kernel errors. Each names the problem and the limit; syscalls map them to status codes."""
from __future__ import annotations


class KernelError(Exception):
    """Base of every error a syscall can return."""

    code = "internal"


class InvalidArgument(KernelError):
    """Bad input; `param` names the request field at fault, where one is."""

    code = "invalid_argument"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class NotFound(KernelError):
    code = "not_found"


class ResourceExhausted(KernelError):
    code = "resource_exhausted"


class Overloaded(ResourceExhausted):
    """The daemon as a whole is full (its process table), not the caller over a limit: retry later."""


class PermissionDenied(KernelError):
    """The caller may not do this (an admin-only syscall, another user's name)."""

    code = "permission_denied"


class FailedPrecondition(KernelError):
    code = "failed_precondition"


class Unavailable(KernelError):
    code = "unavailable"
