"""llmos: an operating system for LLM programs.

This directory (llmosd/) is the root of the `llmos` import namespace: the daemon lives here,
and the package re-exports the client SDK so that `import llmos; llmos.load_model(...)` works.
The SDK is imported on first use, so `import llmos` stays light.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_model", "Client", "AsyncClient", "SyscallError", "DaemonNotRunning"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from llmos.syscalls import sdk
        return getattr(sdk, name)
    raise AttributeError(f"module 'llmos' has no attribute {name!r}")
