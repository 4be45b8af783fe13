"""What a failed syscall looks like to a client: SyscallError with the kernel's code."""
from __future__ import annotations

import grpc

CODES = {grpc.StatusCode.INVALID_ARGUMENT: "invalid_argument", grpc.StatusCode.NOT_FOUND: "not_found",
         grpc.StatusCode.RESOURCE_EXHAUSTED: "resource_exhausted",
         grpc.StatusCode.FAILED_PRECONDITION: "failed_precondition", grpc.StatusCode.UNAVAILABLE: "unavailable",
         grpc.StatusCode.CANCELLED: "cancelled", grpc.StatusCode.DEADLINE_EXCEEDED: "deadline_exceeded"}


class SyscallError(Exception):
    """A syscall that failed; `code` is the kernel's (invalid_argument, not_found, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class DaemonNotRunning(SyscallError):
    """Nothing answers at the address: no llmosd is running there."""

    def __init__(self, target: str) -> None:
        super().__init__("unavailable", f"no llmosd is running on {target}: start one with `llmosd` "
                                        "(or point LLMOS_SOCKET at a running one)")
        self.target = target


def error(e: grpc.RpcError, target: str) -> SyscallError:
    """The SyscallError of a failed gRPC call."""
    code, details = e.code(), e.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE and ("failed to connect" in details or "backends failing" in details
                                                or "Connection refused" in details):
        return DaemonNotRunning(target)
    return SyscallError(CODES.get(code, code.name.lower()), details or code.name)
