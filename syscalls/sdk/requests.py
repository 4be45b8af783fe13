"""The SDK's side of each syscall's messages: requests built from keyword arguments, and
replies read into plain results. Imports nothing heavy (no torch)."""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from llmos.syscalls.abi import wire
from llmos.syscalls.abi.spec import Limits, SamplingParams, SpawnSpec, StopRules
from llmos.syscalls.sdk.errors import SyscallError
from llmos.syscalls.v1 import syscalls_pb2 as pb

UNTIL = {"exit": pb.EXIT, "turn": pb.TURN, "now": pb.NOW}
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 16 << 20)]


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
             seed: int | None = None) -> SamplingParams | None:
    if temperature is None and top_k is None and top_p is None and seed is None:
        return None
    return SamplingParams(temperature=temperature or 0.0, top_k=top_k or 0,
                          top_p=1.0 if top_p is None else top_p, seed=seed)


def spawn_spec(model: str, prompt: str | None = None, messages: Sequence[dict] | None = None,
               tokens: Iterable[int] | None = None, *, max_tokens: int | None = None,
               temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
               seed: int | None = None, stop: Sequence[str] = (), ignore_eos: bool = False, priority: int = 0,
               max_pages: int | None = None, max_wall_s: float | None = None, interactive: bool = False,
               owner: str = "", quantize: str = "") -> SpawnSpec:
    """The SpawnSpec that Client.spawn's keyword arguments describe."""
    return SpawnSpec(
        model=wire.variant_name(model, quantize), prompt=prompt,
        messages=[{"role": m.get("role", ""), "content": m.get("content", "")} for m in messages]
        if messages is not None else None,
        tokens=list(tokens) if tokens is not None else None,
        sampling=sampling(temperature, top_k, top_p, seed) or SamplingParams(),
        stop=StopRules(max_tokens=StopRules().max_tokens if max_tokens is None else max_tokens, stop=list(stop),
                       ignore_eos=ignore_eos),
        limits=Limits(max_pages=max_pages, max_wall_s=max_wall_s), priority=priority, owner=owner,
        interactive=interactive)


def fork_request(pid: int, text: str | None = None, max_tokens: int | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None) -> pb.ForkRequest:
    s = sampling(temperature, top_k, top_p, seed)
    return pb.ForkRequest(pid=pid, text=text, max_tokens=max_tokens,
                          sampling=wire.sampling_msg(s) if s is not None else None)


def chunk(r: pb.ReadResponse) -> Chunk:
    return Chunk(r.text, r.offset, r.state, r.reason)


def result(r: pb.WaitResponse) -> Result:
    return Result(r.proc.pid, r.output, r.proc.state, r.proc.reason, r.proc, dict(r.results))


CHUNK = 1 << 20  # bytes of data per message: well under any message size limit


def eval_requests(model: str, path: str | os.PathLike, metric: str, *, server_path: str = "",
                  max_tokens: int | None = None, window: int = 0, priority: int = 0, owner: str = "",
                  quantize: str = "") -> Iterator[pb.EvalRequest]:
    """The Eval stream: the fields, then the file at `path` (on this machine) in chunks; or,
    for an admin, `server_path`, a file the daemon reads from its own disk."""
    first = pb.EvalRequest(model=model, metric=metric, max_tokens=max_tokens, window=window, priority=priority,
                           owner=owner, quantize=quantize, path=server_path)
    return _with_data(first, pb.EvalRequest, path)


def train_requests(model: str, path: str | os.PathLike = "", *, server_path: str = "", **kw) -> Iterator[pb.TrainRequest]:
    """The Train stream: the fields (TrainRequest's, as keywords), then the dataset at `path`
    in chunks; with resume=True and no path, the checkpoint's copy of the data is used."""
    first = pb.TrainRequest(model=model, path=server_path, **{k: v for k, v in kw.items() if v})
    return _with_data(first, pb.TrainRequest, path)


def _with_data(first, kind: type, path: str | os.PathLike) -> Iterator:
    """`first`, carrying the first chunk of the file at `path`, then the rest of it. The file is
    opened now, so a missing one fails here, before any syscall."""
    if not str(path):
        return iter([first])
    try:
        f = open(os.path.expanduser(str(path)), "rb")  # noqa: SIM115 - closed by the generator
    except OSError as e:
        raise SyscallError("invalid_argument", f"cannot read {path}: {e.strerror}") from None
    first.data_name = os.path.basename(str(path))

    def chunks() -> Iterator:
        with f:
            first.data = f.read(CHUNK)
            yield first
            while data := f.read(CHUNK):
                yield kind(data=data)
    return chunks()
