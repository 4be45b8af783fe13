"""What the sync and async clients share: where the daemon is, building requests, reading
replies, and turning gRPC errors into SyscallError. Imports nothing heavy (no torch)."""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import grpc

from llmos.config import default_socket
from llmos.syscalls.v1 import syscalls_pb2 as pb

UNTIL = {"exit": pb.EXIT, "turn": pb.TURN, "now": pb.NOW}
CODES = {grpc.StatusCode.INVALID_ARGUMENT: "invalid_argument", grpc.StatusCode.NOT_FOUND: "not_found",
         grpc.StatusCode.RESOURCE_EXHAUSTED: "resource_exhausted",
         grpc.StatusCode.FAILED_PRECONDITION: "failed_precondition", grpc.StatusCode.UNAVAILABLE: "unavailable",
         grpc.StatusCode.CANCELLED: "cancelled", grpc.StatusCode.DEADLINE_EXCEEDED: "deadline_exceeded"}
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 16 << 20)]


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


@dataclass
class Chunk:
    """A piece of a process's output; re-attach from `offset` to lose nothing."""

    text: str
    offset: int
    state: str
    reason: str


@dataclass
class Result:
    """A process that has ended (or finished a turn): its output, why, and its counters."""

    pid: int
    output: str
    state: str
    reason: str
    proc: pb.ProcInfo
    results: dict[str, float] = field(default_factory=dict)  # a task's structured results: an eval's metrics

    @property
    def usage(self) -> pb.Usage:
        return self.proc.usage


def resolve_target(target: str | os.PathLike | None = None) -> str:
    """A gRPC target from an explicit address, else $LLMOS_SOCKET, else the default socket.

    Accepts unix:/path, a filesystem path, or HOST:PORT for TCP."""
    t = str(target) if target is not None else str(default_socket())
    if t.startswith(("unix:", "dns:", "ipv4:", "ipv6:")):
        return t
    if "/" in t or t.endswith(".sock") or ":" not in t:
        return "unix:" + os.path.abspath(os.path.expanduser(t))
    return t


def error(e: grpc.RpcError, target: str) -> SyscallError:
    code, details = e.code(), e.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE and ("failed to connect" in details or "backends failing" in details
                                                or "Connection refused" in details):
        return DaemonNotRunning(target)
    return SyscallError(CODES.get(code, code.name.lower()), details or code.name)


def until(value: str) -> int:
    if value not in UNTIL:
        raise SyscallError("invalid_argument", f"until must be one of {', '.join(UNTIL)}, got {value!r}")
    return UNTIL[value]


def signal(sig: str | int) -> int:
    if isinstance(sig, int):
        return sig
    name = str(sig).upper().removeprefix("SIG")
    if name not in pb.Signal.keys():
        raise SyscallError("invalid_argument", f"unknown signal {sig!r}; use TERM, KILL, STOP or CONT")
    return pb.Signal.Value(name)


def sampling(temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
             seed: int | None = None) -> pb.Sampling | None:
    if temperature is None and top_k is None and top_p is None and seed is None:
        return None
    return pb.Sampling(temperature=temperature or 0.0, top_k=top_k or 0, top_p=top_p, seed=seed)


def spawn_request(model: str, prompt: str | None = None, messages: Sequence[dict] | None = None,
                  tokens: Iterable[int] | None = None, *, max_tokens: int | None = None,
                  temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                  seed: int | None = None, stop: Sequence[str] = (), ignore_eos: bool = False, priority: int = 0,
                  max_pages: int | None = None, max_wall_s: float | None = None, interactive: bool = False,
                  owner: str = "", quantize: str = "") -> pb.SpawnRequest:
    return pb.SpawnRequest(
        model=model, prompt=prompt, tokens=list(tokens or ()),
        messages=[pb.ChatMessage(role=m.get("role", ""), content=m.get("content", "")) for m in messages or ()],
        sampling=sampling(temperature, top_k, top_p, seed), max_tokens=max_tokens, stop=list(stop),
        ignore_eos=ignore_eos, priority=priority, limits=pb.Limits(max_pages=max_pages, max_wall_s=max_wall_s),
        interactive=interactive, owner=owner, quantize=quantize)


def fork_request(pid: int, text: str | None = None, max_tokens: int | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None) -> pb.ForkRequest:
    return pb.ForkRequest(pid=pid, text=text, max_tokens=max_tokens,
                          sampling=sampling(temperature, top_k, top_p, seed))


def chunk(r: pb.ReadResponse) -> Chunk:
    return Chunk(r.text, r.offset, r.state, r.reason)


def result(r: pb.WaitResponse) -> Result:
    return Result(r.proc.pid, r.output, r.proc.state, r.proc.reason, r.proc, dict(r.results))


def eval_request(model: str, path: str | os.PathLike, metric: str, *, max_tokens: int | None = None,
                 window: int = 0, priority: int = 0, owner: str = "", quantize: str = "") -> pb.EvalRequest:
    """The daemon reads the file: a relative path is made absolute here, where it was meant."""
    return pb.EvalRequest(model=model, path=os.path.abspath(os.path.expanduser(str(path))), metric=metric,
                          max_tokens=max_tokens, window=window, priority=priority, owner=owner, quantize=quantize)
