"""Kernel errors. Each names the problem and the limit; syscalls map them to status codes."""
from __future__ import annotations


class KernelError(Exception):
    """Base of every error a syscall can return."""

    code = "internal"


class InvalidArgument(KernelError):
    code = "invalid_argument"


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
