"""The SDK's side of each syscall's messages: requests built from keyword arguments, and
replies read into plain results. Imports nothing heavy (no torch)."""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from llmos.syscalls.abi import tools as tool_format
from llmos.syscalls.abi import wire
from llmos.syscalls.abi.grammar import GrammarSpec
from llmos.syscalls.abi.logprobs import TokenLogprob
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
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of the tokens this text carries, if asked for


@dataclass
class Result:
    """A process that has ended (or finished a turn): its output, why, and its counters."""

    pid: int
    output: str
    state: str
    reason: str
    proc: pb.ProcInfo
    results: dict[str, float] = field(default_factory=dict)  # a task's structured results: an eval's metrics
    logprobs: list[TokenLogprob] = field(default_factory=list)  # every generated token's, if asked for

    @property
    def usage(self) -> pb.Usage:
        return self.proc.usage


@dataclass
class ToolCall:
    """A call the model made: the function's name and its arguments (parsed JSON)."""

    id: str
    name: str
    arguments: dict


@dataclass
class ChatReply:
    """A chat answer offered tools: its text, and the calls it made instead (or beside it)."""

    content: str
    tool_calls: list[ToolCall]
    result: Result


def chat_reply(r: Result) -> ChatReply:
    text, calls = tool_format.parse(r.output)
    return ChatReply(text, [ToolCall(f"call_llmos_{r.pid}_0_{i}", name, json.loads(args))
                            for i, (name, args) in enumerate(calls)], r)


def parsed_json(r: Result):
    """The output of a process constrained by a JSON schema, parsed; SyscallError if it ended
    before the JSON was complete."""
    if r.reason not in ("grammar", "eos"):
        raise SyscallError("failed_precondition", f"pid {r.pid} ended ({r.reason}) before its JSON was complete: "
                                                  "give it more max_tokens")
    return json.loads(r.output)


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
             seed: int | None = None, logprobs: bool = False, top_logprobs: int = 0) -> SamplingParams | None:
    if temperature is None and top_k is None and top_p is None and seed is None and not logprobs:
        return None
    return SamplingParams(temperature=temperature or 0.0, top_k=top_k or 0,
                          top_p=1.0 if top_p is None else top_p, seed=seed, logprobs=logprobs,
                          top_logprobs=top_logprobs)


def spawn_spec(model: str, prompt: str | None = None, messages: Sequence[dict] | None = None,
               tokens: Iterable[int] | None = None, *, max_tokens: int | None = None,
               temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
               seed: int | None = None, stop: Sequence[str] = (), ignore_eos: bool = False, priority: int = 0,
               max_pages: int | None = None, max_wall_s: float | None = None, interactive: bool = False,
               owner: str = "", quantize: str = "", logprobs: bool = False, top_logprobs: int = 0,
               grammar: GrammarSpec | None = None, json_schema: dict | None = None, regex: str | None = None,
               choices: Sequence[str] | None = None, tools: list[dict] | None = None,
               tool_choice: str | dict = "auto", speculate: bool = True) -> SpawnSpec:
    """The SpawnSpec that Client.spawn's keyword arguments describe. At most one of grammar,
    json_schema, regex or choices constrains the output; tools are offered to the model (and,
    unless tool_choice is "none", its calls are valid by construction). speculate=False opts
    the process out of speculative decoding (it changes no output, only how it is computed)."""
    given = [g for g in (grammar, json_schema, regex, choices) if g is not None]
    if len(given) > 1:
        raise SyscallError("invalid_argument", "give at most one of grammar, json_schema, regex or choices")
    if json_schema is not None:
        grammar = GrammarSpec("json_schema", json_schema)
    elif regex is not None:
        grammar = GrammarSpec("regex", regex)
    elif choices is not None:
        grammar = GrammarSpec("choice", tuple(choices))
    if tools:
        grammar = tool_format.tool_grammar(tools, tool_choice, True, json_schema)
    return SpawnSpec(
        model=wire.variant_name(model, quantize), prompt=prompt,
        messages=[{"role": m.get("role", ""), "content": m.get("content") or "",
                   **{k: m[k] for k in ("tool_calls", "tool_call_id") if m.get(k)}} for m in messages]
        if messages is not None else None,
        tokens=list(tokens) if tokens is not None else None,
        sampling=sampling(temperature, top_k, top_p, seed, logprobs or bool(top_logprobs), top_logprobs)
        or SamplingParams(),
        stop=StopRules(max_tokens=StopRules().max_tokens if max_tokens is None else max_tokens, stop=list(stop),
                       ignore_eos=ignore_eos),
        unset=tuple(k for k, v in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p),
                                   ("max_tokens", max_tokens)) if v is None),
        limits=Limits(max_pages=max_pages, max_wall_s=max_wall_s), priority=priority, owner=owner,
        interactive=interactive, grammar=grammar, tools=list(tools) if tools else None, speculate=speculate)


def fork_request(pid: int, text: str | None = None, max_tokens: int | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None) -> pb.ForkRequest:
    s = sampling(temperature, top_k, top_p, seed)
    return pb.ForkRequest(pid=pid, text=text, max_tokens=max_tokens,
                          sampling=wire.sampling_msg(s) if s is not None else None)


def chunk(r: pb.ReadResponse) -> Chunk:
    return Chunk(r.text, r.offset, r.state, r.reason, wire.logprobs(r.logprobs))


def result(r: pb.WaitResponse) -> Result:
    return Result(r.proc.pid, r.output, r.proc.state, r.proc.reason, r.proc, dict(r.results), wire.logprobs(r.logprobs))


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
