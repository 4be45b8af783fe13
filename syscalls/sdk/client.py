"""The SDK: Client (blocking) and AsyncClient (asyncio) over the same syscalls, and
`load_model(name).generate(prompt)` for the simplest use.

Every syscall is written once, in `Calls`: it builds the request and says how to read the
reply. Client and AsyncClient differ only in how a call runs (`_call`, `_stream`, `_then`),
so the two cannot drift apart. Both find the daemon at an explicit address, else
$LLMOS_SOCKET, else the default socket (<state dir>/llmosd.sock, where llmosd listens).
"""
from __future__ import annotations

import inspect
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import grpc

from llmos.syscalls.abi import wire
from llmos.syscalls.sdk import channel
from llmos.syscalls.sdk import requests as rq
from llmos.syscalls.sdk import translate
from llmos.syscalls.sdk.errors import DaemonNotRunning, SyscallError, error
from llmos.syscalls.sdk.paths import resolve_target
from llmos.syscalls.sdk.requests import Chunk, Result
from llmos.syscalls.v1 import syscalls_pb2 as pb
from llmos.syscalls.v1 import syscalls_pb2_grpc as pb_grpc

__all__ = ["Client", "AsyncClient", "Model", "load_model", "SyscallError", "DaemonNotRunning", "Chunk", "Result"]


class Calls:
    """Every syscall, once: what a client sends and what it returns. In an AsyncClient each
    method returns an awaitable (read: an async iterator) of what its annotation says."""

    def _call(self, rpc: str, request: Any, reply: Callable[[Any], Any], timeout: float | None = None) -> Any:
        raise NotImplementedError

    def _stream(self, rpc: str, request: Any, item: Callable[[Any], Any]) -> Any:
        raise NotImplementedError

    def _then(self, value: Any, fn: Callable[[Any], Any]) -> Any:
        raise NotImplementedError

    # --- processes -------------------------------------------------------------------------
    def spawn(self, model: str, prompt: str | None = None, messages: Sequence[dict] | None = None,
              **kw: Any) -> int:
        """Start a process; keyword arguments as requests.spawn_spec. Returns its pid."""
        spec = rq.spawn_spec(model, prompt, messages, **kw)
        return self._call("Spawn", wire.spawn_request(spec), lambda r: r.pid)

    def read(self, pid: int, offset: int = 0, until: str = "exit") -> Iterator[Chunk]:
        """Stream output from `offset` until the process exits (until="turn": or blocks; "now": at once)."""
        return self._stream("Read", pb.ReadRequest(pid=pid, offset=offset, until=rq.until(until)), rq.chunk)

    def write(self, pid: int, text: str, role: str = "user") -> int:
        """Append a turn (a user's, or role="tool": a tool's result); returns the output offset
        where the answer begins."""
        return self._call("Write", pb.WriteRequest(pid=pid, text=text, role=role), lambda r: r.offset)

    def wait(self, pid: int, until: str = "exit", reap: bool = False, timeout: float | None = None) -> Result:
        """Block until the process ends (until="turn": or blocks); reap=True forgets it after."""
        return self._call("Wait", pb.WaitRequest(pid=pid, until=rq.until(until), reap=reap), rq.result, timeout)

    def kill(self, pid: int, signal: str | int = "TERM") -> pb.ProcInfo:
        """Send TERM (end cleanly), KILL, STOP or CONT."""
        return self._call("Kill", pb.KillRequest(pid=pid, signal=rq.signal(signal)), lambda r: r.proc)

    def renice(self, pid: int, priority: int) -> pb.ProcInfo:
        """A new nice value (only an admin may go below 0 or below where the process started)."""
        return self._call("Renice", pb.ReniceRequest(pid=pid, priority=priority), lambda r: r.proc)

    def fork(self, pid: int, text: str | None = None, **kw: Any) -> int:
        """A child sharing pid's pages copy-on-write (max_tokens and sampling as spawn's); its pid."""
        return self._call("Fork", rq.fork_request(pid, text, **kw), lambda r: r.pid)

    def pipe(self, src: int, dst: int, timeout: float | None = None) -> int:
        """Feed src's output to interactive dst when src exits; returns where dst's answer begins."""
        return self._call("Pipe", pb.PipeRequest(src=src, dst=dst), lambda r: r.dst_offset, timeout)

    def ps(self, model: str = "", states: Sequence[str] = (), owner: str = "",
           live_only: bool = False) -> list[pb.ProcInfo]:
        req = pb.PsRequest(model=model, states=list(states), owner=owner, live_only=live_only)
        return self._call("Ps", req, lambda r: list(r.procs))

    def stat(self, pid: int) -> pb.ProcInfo:
        return self._call("Stat", pb.StatRequest(pid=pid), lambda r: r.proc)

    # --- system ----------------------------------------------------------------------------
    def meminfo(self, model: str = "") -> list[pb.PoolInfo]:
        return self._call("MemInfo", pb.MemInfoRequest(model=model), lambda r: list(r.pools))

    def devices(self) -> list[pb.Device]:
        return self._call("Devices", pb.DevicesRequest(), lambda r: list(r.devices))

    def stats(self) -> pb.StatsResponse:
        """Daemon-wide figures: tokens generated and their rate, queue depth, processes by state, pages, devices."""
        return self._call("Stats", pb.StatsRequest(), lambda r: r)

    def usage(self, user: str = "", model: str = "", since: str = "", by: str = "hour") -> list[pb.UsageRow]:
        """Usage records: tokens, device seconds and processes, by hour, day, model or user; your
        own (an admin: everyone's, or `user`'s). `since`: an ISO date/time or a time ago (24h, 7d)."""
        req = pb.UsageRequest(user=user, model=model, since=since, by=by)
        return self._call("Usage", req, lambda r: list(r.rows))

    def models(self) -> pb.ModelsResponse:
        return self._call("Models", pb.ModelsRequest(), lambda r: r)

    def load(self, model: str, name: str = "", dtype: str = "", quantize: str = "", prune: float = 0.0,
             prune_heads: float = 0.0, replicas: int = 0, devices: Sequence[str] = ()) -> pb.ModelInfo:
        """Load a model; quantize="int8" loads a quantized copy, served as MODEL:int8; prune=0.25
        removes a quarter of every MLP's channels first (prune_heads= of the attention heads),
        served as MODEL-pruned0.25 unless `name` is given. replicas=N (or devices=[...]) loads
        copies on several of the daemon's devices; each spawn goes to the cheapest."""
        req = pb.LoadModelRequest(model=model, name=name, dtype=dtype, quantize=quantize, prune=prune,
                                  prune_heads=prune_heads, replicas=replicas, devices=list(devices))
        return self._call("LoadModel", req, lambda r: r.model)

    def migrate(self, pid: int, to: str, by: str = "") -> pb.MigrateResponse:
        """Move a live process to another device or node of the daemon, by its KV pages or its
        tokens (by="pages" or "tokens"; unset: whichever costs less)."""
        return self._call("Migrate", pb.MigrateRequest(pid=pid, to=to, by=by), lambda r: r)

    def drain(self, device: str, undo: bool = False) -> list[pb.Moved]:
        """Move every process off a device and place nothing new there (an admin's); undo=True reopens it."""
        return self._call("Drain", pb.DrainRequest(device=device, undo=undo), lambda r: list(r.moved))

    def unload(self, name: str) -> None:
        return self._call("UnloadModel", pb.UnloadModelRequest(name=name), lambda r: None)

    def create(self, name: str, manifest: str) -> pb.CreateModelResponse:
        """Build model version NAME[:TAG] from a manifest file's TOML text (`from = ...`, defaults,
        a system prompt, a template, quantize or prune); served at once when it is a preset of
        a loaded model."""
        return self._call("CreateModel", pb.CreateModelRequest(name=name, manifest=manifest), lambda r: r)

    def show(self, name: str) -> pb.ShowModelResponse:
        """A stored version and the manifest file that describes it."""
        return self._call("ShowModel", pb.ShowModelRequest(name=name), lambda r: r)

    def tag(self, source: str, target: str) -> pb.StoredModel:
        """Name the version `source` names (NAME[:TAG] or a digest) again as `target`, sharing its weights."""
        return self._call("TagModel", pb.TagModelRequest(source=source, target=target), lambda r: r.model)

    def remove(self, name: str) -> pb.RemoveModelResponse:
        """Remove the tag NAME[:TAG]; weights go when nothing refers to them any more."""
        return self._call("RemoveModel", pb.RemoveModelRequest(name=name), lambda r: r)

    def dmesg(self, limit: int = 0, since: float = 0.0) -> list[pb.LogLine]:
        return self._call("Dmesg", pb.DmesgRequest(limit=limit, since=since), lambda r: list(r.lines))

    def shutdown(self, grace: float | None = None) -> None:
        return self._call("Shutdown", pb.ShutdownRequest(grace_s=grace), lambda r: None)

    # --- users and tokens ------------------------------------------------------------------
    def whoami(self) -> pb.WhoamiResponse:
        """Who the daemon takes this client for, with its quota and usage."""
        return self._call("Whoami", pb.WhoamiRequest(), lambda r: r)

    def create_token(self, name: str, user: str = "", admin: bool = False) -> tuple[pb.TokenInfo, str]:
        """A new bearer token (admin only); returns it and its secret, which is shown only now."""
        req = pb.CreateTokenRequest(name=name, user=user, admin=admin)
        return self._call("CreateToken", req, lambda r: (r.token, r.secret))

    def tokens(self) -> list[pb.TokenInfo]:
        return self._call("ListTokens", pb.ListTokensRequest(), lambda r: list(r.tokens))

    def revoke_token(self, name_or_id: str) -> pb.TokenInfo:
        return self._call("RevokeToken", pb.RevokeTokenRequest(token=name_or_id), lambda r: r.token)

    # --- workloads -------------------------------------------------------------------------
    def eval(self, model: str, path: str | os.PathLike, metric: str, **kw: Any) -> int:
        """Start an evaluation process on the file at `path` (sent to the daemon; metric ppl,
        bleu or rouge; keyword arguments as requests.eval_requests); its pid. wait(pid).results
        holds the metrics."""
        return self._call("Eval", rq.eval_requests(model, path, metric, **kw), lambda r: r.pid)

    def train(self, model: str, path: str | os.PathLike = "", **kw: Any) -> tuple[int, str]:
        """Start a LoRA fine-tune on the dataset at `path` (sent to the daemon; keyword arguments
        as TrainRequest's fields); its pid and the name its adapter will be served as.
        distill="TEACHER" (with temperature=, alpha=) learns a loaded teacher's next-token
        distributions; full=True trains every weight. wait(pid).results holds the final loss."""
        return self._call("Train", rq.train_requests(model, path, **kw), lambda r: (r.pid, r.name))

    # --- conveniences ----------------------------------------------------------------------
    def generate(self, model: str, prompt: str, **kw: Any) -> Any:
        """Run a prompt to the end and return the generated text; with json_schema=, the JSON
        it generated, parsed (valid against the schema by construction)."""
        read = rq.parsed_json if kw.get("json_schema") is not None else (lambda r: r.output)
        return self._then(self._then(self.spawn(model, prompt, **kw), self.wait), read)

    def chat(self, model: str, messages: Sequence[dict], **kw: Any) -> Any:
        """Answer a chat (list of {role, content}) and return the reply; with tools=[...]
        (OpenAI-shaped function tools, and tool_choice=), a ChatReply: its text and its calls."""
        read = rq.chat_reply if kw.get("tools") else (lambda r: r.output)
        return self._then(self._then(self.spawn(model, messages=messages, **kw), self.wait), read)


    def translate(self, model: str, text: str, target_language: str, source_language: str | None = None,
                  **kw: Any) -> Any:
        """`text` in `target_language` (an ISO 639-1 code such as "fr"), greedy, through the
        model's chat template with syscalls/sdk/translate.py's fixed instruction."""
        kw.setdefault("temperature", 0.0)
        kw.setdefault("stop", translate.stops(text))
        msgs = translate.messages(text, target_language, source_language)
        return self._then(self.chat(model, msgs, **kw), translate.answer)


class Client(Calls):
    """Blocking client of one llmosd. Methods raise SyscallError (DaemonNotRunning if none answers)."""

    def __init__(self, target: str | os.PathLike | None = None, timeout: float | None = None,
                 token: str | None = None, ca: str | os.PathLike | None = None) -> None:
        """token: a bearer token (TCP default $LLMOS_TOKEN); ca: a CA file for TLS (TCP default $LLMOS_TLS_CA)."""
        self.target = resolve_target(target)
        self.timeout = timeout
        self._metadata = channel.metadata(channel.token_for(self.target, token))
        self._channel = channel.open_channel(self.target, channel.ca_for(self.target, ca), rq.CHANNEL_OPTIONS)
        self._stub = pb_grpc.SyscallsStub(self._channel)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, rpc: str, request: Any, reply: Callable[[Any], Any], timeout: float | None = None) -> Any:
        try:
            return reply(getattr(self._stub, rpc)(request, timeout=timeout or self.timeout, metadata=self._metadata))
        except grpc.RpcError as e:
            raise error(e, self.target) from None

    def _stream(self, rpc: str, request: Any, item: Callable[[Any], Any]) -> Iterator[Any]:
        call = getattr(self._stub, rpc)(request, metadata=self._metadata)
        try:
            for r in call:
                yield item(r)
        except grpc.RpcError as e:
            raise error(e, self.target) from None
        finally:
            call.cancel()

    def _then(self, value: Any, fn: Callable[[Any], Any]) -> Any:
        return fn(value)


class AsyncClient(Calls):
    """The asyncio twin of Client: the same methods, awaited."""

    def __init__(self, target: str | os.PathLike | None = None, timeout: float | None = None,
                 token: str | None = None, ca: str | os.PathLike | None = None) -> None:
        self.target = resolve_target(target)
        self.timeout = timeout
        self._metadata = channel.metadata(channel.token_for(self.target, token))
        self._channel = channel.open_aio_channel(self.target, channel.ca_for(self.target, ca), rq.CHANNEL_OPTIONS)
        self._stub = pb_grpc.SyscallsStub(self._channel)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, rpc: str, request: Any, reply: Callable[[Any], Any], timeout: float | None = None) -> Any:
        try:
            return reply(await getattr(self._stub, rpc)(request, timeout=timeout or self.timeout,
                                                        metadata=self._metadata))
        except grpc.RpcError as e:
            raise error(e, self.target) from None

    async def _stream(self, rpc: str, request: Any, item: Callable[[Any], Any]) -> AsyncIterator[Any]:
        call = getattr(self._stub, rpc)(request, metadata=self._metadata)
        try:
            async for r in call:
                yield item(r)
        except grpc.RpcError as e:
            raise error(e, self.target) from None
        finally:
            call.cancel()

    async def _then(self, value: Any, fn: Callable[[Any], Any]) -> Any:
        out = fn(await value)
        return await out if inspect.isawaitable(out) else out


class Model:
    """A model loaded in the daemon, as returned by load_model()."""

    def __init__(self, client: Client, name: str) -> None:
        self.client = client
        self.name = name

    def generate(self, prompt: str, max_tokens: int | None = None, temperature: float | None = None,
                 **kw: Any) -> str:
        """The text the model generates after `prompt` (unset settings: the model's defaults)."""
        return self.client.generate(self.name, prompt, max_tokens=max_tokens, temperature=temperature, **kw)

    def chat(self, messages: Sequence[dict], max_tokens: int | None = None, temperature: float | None = None,
             **kw: Any) -> str:
        """The model's reply to a chat, given as [{"role": ..., "content": ...}, ...]."""
        return self.client.chat(self.name, messages, max_tokens=max_tokens, temperature=temperature, **kw)

    def translate(self, text: str, target_language: str, source_language: str | None = None,
                  max_tokens: int = 256, **kw: Any) -> str:
        """`text` translated into `target_language`, an ISO 639-1 code ("fr", "de", ...)."""
        return self.client.translate(self.name, text, target_language, source_language, max_tokens=max_tokens, **kw)

    def __repr__(self) -> str:
        return f"Model({self.name!r} on {self.client.target})"


def load_model(name: str, target: str | os.PathLike | None = None) -> Model:
    """Load a model in the running daemon (if it is not loaded yet) and return a handle to it."""
    client = Client(target)
    return Model(client, client.load(name).name)
