"""The client SDK, which the shell and apps import: Client, AsyncClient, load_model. It
imports only the generated stubs (llmos.syscalls.v1), the syscall ABI (llmos.syscalls.abi)
and its own helpers: never the kernel, the daemon or torch."""
from llmos.syscalls.abi.grammar import GrammarSpec
from llmos.syscalls.sdk.client import AsyncClient, Chunk, Client, Model, Result, load_model
from llmos.syscalls.sdk.errors import DaemonNotRunning, SyscallError
from llmos.syscalls.sdk.requests import ChatReply, ToolCall

__all__ = ["Client", "AsyncClient", "Model", "load_model", "SyscallError", "DaemonNotRunning", "Chunk", "Result",
           "ChatReply", "ToolCall", "GrammarSpec"]
