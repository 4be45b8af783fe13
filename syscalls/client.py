"""The SDK: Client (blocking) and AsyncClient (asyncio) over the same syscalls, and
`load_model(name).generate(prompt)` for the simplest use.

Both find the daemon at an explicit address, else $LLMOS_SOCKET, else the default socket
(<state dir>/llmosd.sock, the same path llmosd uses).
"""
from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import grpc

from llmos.syscalls import channel
from llmos.syscalls import messages as m
from llmos.syscalls.messages import Chunk, DaemonNotRunning, Result, SyscallError
from llmos.syscalls.v1 import syscalls_pb2 as pb
from llmos.syscalls.v1 import syscalls_pb2_grpc as pb_grpc

__all__ = ["Client", "AsyncClient", "Model", "load_model", "SyscallError", "DaemonNotRunning", "Chunk", "Result"]


class Client:
    """Blocking client of one llmosd. Methods raise SyscallError (DaemonNotRunning if none answers)."""

    def __init__(self, target: str | os.PathLike | None = None, timeout: float | None = None,
                 token: str | None = None, ca: str | os.PathLike | None = None) -> None:
        """token: a bearer token (TCP default $LLMOS_TOKEN); ca: a CA file for TLS (TCP default $LLMOS_TLS_CA)."""
        self.target = m.resolve_target(target)
        self.timeout = timeout
        self._metadata = channel.metadata(channel.token_for(self.target, token))
        self._channel = channel.open_channel(self.target, channel.ca_for(self.target, ca), m.CHANNEL_OPTIONS)
        self._stub = pb_grpc.SyscallsStub(self._channel)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, rpc: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self._stub, rpc)(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise m.error(e, self.target) from None

    # --- processes -------------------------------------------------------------------------
    def spawn(self, model: str, prompt: str | None = None, messages: Sequence[dict] | None = None,
              **kw: Any) -> int:
        """Start a process; keyword arguments as messages.spawn_request. Returns its pid."""
        return self._call("Spawn", m.spawn_request(model, prompt, messages, **kw)).pid

    def read(self, pid: int, offset: int = 0, until: str = "exit") -> Iterator[Chunk]:
        """Stream output from `offset` until the process exits (until="turn": or blocks; "now": at once)."""
        call = self._stub.Read(pb.ReadRequest(pid=pid, offset=offset, until=m.until(until)), metadata=self._metadata)
        try:
            for r in call:
                yield m.chunk(r)
        except grpc.RpcError as e:
            raise m.error(e, self.target) from None
        finally:
            call.cancel()

    def write(self, pid: int, text: str) -> int:
        """Append a user turn; returns the output offset where the answer begins."""
        return self._call("Write", pb.WriteRequest(pid=pid, text=text)).offset

    def wait(self, pid: int, until: str = "exit", reap: bool = False, timeout: float | None = None) -> Result:
        return m.result(self._call("Wait", pb.WaitRequest(pid=pid, until=m.until(until), reap=reap), timeout))

    def kill(self, pid: int, signal: str | int = "TERM") -> pb.ProcInfo:
        return self._call("Kill", pb.KillRequest(pid=pid, signal=m.signal(signal))).proc

    def fork(self, pid: int, text: str | None = None, **kw: Any) -> int:
        return self._call("Fork", m.fork_request(pid, text, **kw)).pid

    def pipe(self, src: int, dst: int, timeout: float | None = None) -> int:
        """Feed src's output to interactive dst when src exits; returns where dst's answer begins."""
        return self._call("Pipe", pb.PipeRequest(src=src, dst=dst), timeout).dst_offset

    def ps(self, model: str = "", states: Sequence[str] = (), owner: str = "",
           live_only: bool = False) -> list[pb.ProcInfo]:
        return list(self._call("Ps", pb.PsRequest(model=model, states=list(states), owner=owner,
                                                  live_only=live_only)).procs)

    def stat(self, pid: int) -> pb.ProcInfo:
        return self._call("Stat", pb.StatRequest(pid=pid)).proc

    # --- system ----------------------------------------------------------------------------
    def meminfo(self, model: str = "") -> list[pb.PoolInfo]:
        return list(self._call("MemInfo", pb.MemInfoRequest(model=model)).pools)

    def devices(self) -> list[pb.Device]:
        return list(self._call("Devices", pb.DevicesRequest()).devices)

    def stats(self) -> pb.StatsResponse:
        """Daemon-wide figures: tokens generated and their rate, queue depth, processes by state, pages, devices."""
        return self._call("Stats", pb.StatsRequest())

    def models(self) -> pb.ModelsResponse:
        return self._call("Models", pb.ModelsRequest())

    def load(self, model: str, name: str = "", dtype: str = "", quantize: str = "") -> pb.ModelInfo:
        """Load a model; quantize="int8" loads a quantized copy, served as MODEL:int8."""
        req = pb.LoadModelRequest(model=model, name=name, dtype=dtype, quantize=quantize)
        return self._call("LoadModel", req).model

    def unload(self, name: str) -> None:
        self._call("UnloadModel", pb.UnloadModelRequest(name=name))

    def dmesg(self, limit: int = 0, since: float = 0.0) -> list[pb.LogLine]:
        return list(self._call("Dmesg", pb.DmesgRequest(limit=limit, since=since)).lines)

    def shutdown(self, grace: float | None = None) -> None:
        self._call("Shutdown", pb.ShutdownRequest(grace_s=grace))

    # --- users and tokens ------------------------------------------------------------------
    def whoami(self) -> pb.WhoamiResponse:
        """Who the daemon takes this client for, with its quota and usage."""
        return self._call("Whoami", pb.WhoamiRequest())

    def create_token(self, name: str, user: str = "", admin: bool = False) -> tuple[pb.TokenInfo, str]:
        """A new bearer token (admin only); returns it and its secret, which is shown only now."""
        r = self._call("CreateToken", pb.CreateTokenRequest(name=name, user=user, admin=admin))
        return r.token, r.secret

    def tokens(self) -> list[pb.TokenInfo]:
        return list(self._call("ListTokens", pb.ListTokensRequest()).tokens)

    def revoke_token(self, name_or_id: str) -> pb.TokenInfo:
        return self._call("RevokeToken", pb.RevokeTokenRequest(token=name_or_id)).token

    def eval(self, model: str, path: str | os.PathLike, metric: str, **kw: Any) -> int:
        """Start an evaluation process (metric ppl, bleu or rouge; keyword arguments as
        messages.eval_request); its pid. wait(pid).results holds the metrics."""
        return self._call("Eval", m.eval_request(model, path, metric, **kw)).pid

    def train(self, model: str, path: str | os.PathLike, **kw: Any) -> tuple[int, str]:
        """Start a LoRA fine-tune (keyword arguments as TrainRequest's fields); its pid and the
        name its adapter will be served as. wait(pid).results holds the final loss."""
        r = self._call("Train", train_request(model, path, **kw))
        return r.pid, r.name

    # --- conveniences ----------------------------------------------------------------------
    def generate(self, model: str, prompt: str, **kw: Any) -> str:
        """Run a prompt to the end and return the generated text."""
        return self.wait(self.spawn(model, prompt, **kw)).output

    def chat(self, model: str, messages: Sequence[dict], **kw: Any) -> str:
        """Answer a chat (list of {role, content}) and return the reply."""
        return self.wait(self.spawn(model, messages=messages, **kw)).output


class AsyncClient:
    """The asyncio twin of Client: the same methods, awaited."""

    def __init__(self, target: str | os.PathLike | None = None, timeout: float | None = None,
                 token: str | None = None, ca: str | os.PathLike | None = None) -> None:
        self.target = m.resolve_target(target)
        self.timeout = timeout
        self._metadata = channel.metadata(channel.token_for(self.target, token))
        self._channel = channel.open_aio_channel(self.target, channel.ca_for(self.target, ca), m.CHANNEL_OPTIONS)
        self._stub = pb_grpc.SyscallsStub(self._channel)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, rpc: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return await getattr(self._stub, rpc)(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise m.error(e, self.target) from None

    async def spawn(self, model: str, prompt: str | None = None, messages: Sequence[dict] | None = None,
                    **kw: Any) -> int:
        return (await self._call("Spawn", m.spawn_request(model, prompt, messages, **kw))).pid

    async def read(self, pid: int, offset: int = 0, until: str = "exit") -> AsyncIterator[Chunk]:
        call = self._stub.Read(pb.ReadRequest(pid=pid, offset=offset, until=m.until(until)), metadata=self._metadata)
        try:
            async for r in call:
                yield m.chunk(r)
        except grpc.RpcError as e:
            raise m.error(e, self.target) from None
        finally:
            call.cancel()

    async def write(self, pid: int, text: str) -> int:
        return (await self._call("Write", pb.WriteRequest(pid=pid, text=text))).offset

    async def wait(self, pid: int, until: str = "exit", reap: bool = False, timeout: float | None = None) -> Result:
        return m.result(await self._call("Wait", pb.WaitRequest(pid=pid, until=m.until(until), reap=reap), timeout))

    async def kill(self, pid: int, signal: str | int = "TERM") -> pb.ProcInfo:
        return (await self._call("Kill", pb.KillRequest(pid=pid, signal=m.signal(signal)))).proc

    async def fork(self, pid: int, text: str | None = None, **kw: Any) -> int:
        return (await self._call("Fork", m.fork_request(pid, text, **kw))).pid

    async def pipe(self, src: int, dst: int, timeout: float | None = None) -> int:
        return (await self._call("Pipe", pb.PipeRequest(src=src, dst=dst), timeout)).dst_offset

    async def ps(self, model: str = "", states: Sequence[str] = (), owner: str = "",
                 live_only: bool = False) -> list[pb.ProcInfo]:
        req = pb.PsRequest(model=model, states=list(states), owner=owner, live_only=live_only)
        return list((await self._call("Ps", req)).procs)

    async def stat(self, pid: int) -> pb.ProcInfo:
        return (await self._call("Stat", pb.StatRequest(pid=pid))).proc

    async def meminfo(self, model: str = "") -> list[pb.PoolInfo]:
        return list((await self._call("MemInfo", pb.MemInfoRequest(model=model))).pools)

    async def devices(self) -> list[pb.Device]:
        return list((await self._call("Devices", pb.DevicesRequest())).devices)

    async def stats(self) -> pb.StatsResponse:
        return await self._call("Stats", pb.StatsRequest())

    async def models(self) -> pb.ModelsResponse:
        return await self._call("Models", pb.ModelsRequest())

    async def load(self, model: str, name: str = "", dtype: str = "", quantize: str = "") -> pb.ModelInfo:
        req = pb.LoadModelRequest(model=model, name=name, dtype=dtype, quantize=quantize)
        return (await self._call("LoadModel", req)).model

    async def unload(self, name: str) -> None:
        await self._call("UnloadModel", pb.UnloadModelRequest(name=name))

    async def dmesg(self, limit: int = 0, since: float = 0.0) -> list[pb.LogLine]:
        return list((await self._call("Dmesg", pb.DmesgRequest(limit=limit, since=since))).lines)

    async def shutdown(self, grace: float | None = None) -> None:
        await self._call("Shutdown", pb.ShutdownRequest(grace_s=grace))

    async def whoami(self) -> pb.WhoamiResponse:
        return await self._call("Whoami", pb.WhoamiRequest())

    async def create_token(self, name: str, user: str = "", admin: bool = False) -> tuple[pb.TokenInfo, str]:
        r = await self._call("CreateToken", pb.CreateTokenRequest(name=name, user=user, admin=admin))
        return r.token, r.secret

    async def tokens(self) -> list[pb.TokenInfo]:
        return list((await self._call("ListTokens", pb.ListTokensRequest())).tokens)

    async def revoke_token(self, name_or_id: str) -> pb.TokenInfo:
        return (await self._call("RevokeToken", pb.RevokeTokenRequest(token=name_or_id))).token

    async def eval(self, model: str, path: str | os.PathLike, metric: str, **kw: Any) -> int:
        return (await self._call("Eval", m.eval_request(model, path, metric, **kw))).pid

    async def generate(self, model: str, prompt: str, **kw: Any) -> str:
        return (await self.wait(await self.spawn(model, prompt, **kw))).output

    async def chat(self, model: str, messages: Sequence[dict], **kw: Any) -> str:
        return (await self.wait(await self.spawn(model, messages=messages, **kw))).output


class Model:
    """A model loaded in the daemon, as returned by load_model()."""

    def __init__(self, client: Client, name: str) -> None:
        self.client = client
        self.name = name

    def generate(self, prompt: str, max_tokens: int = 256, temperature: float = 0.0, **kw: Any) -> str:
        """The text the model generates after `prompt`."""
        return self.client.generate(self.name, prompt, max_tokens=max_tokens, temperature=temperature, **kw)

    def chat(self, messages: Sequence[dict], max_tokens: int = 256, temperature: float = 0.0, **kw: Any) -> str:
        """The model's reply to a chat, given as [{"role": ..., "content": ...}, ...]."""
        return self.client.chat(self.name, messages, max_tokens=max_tokens, temperature=temperature, **kw)

    def __repr__(self) -> str:
        return f"Model({self.name!r} on {self.client.target})"


def load_model(name: str, target: str | os.PathLike | None = None) -> Model:
    """Load a model in the running daemon (if it is not loaded yet) and return a handle to it."""
    client = Client(target)
    return Model(client, client.load(name).name)


def train_request(model: str, path: str | os.PathLike, **kw: Any) -> pb.TrainRequest:
    """The daemon reads the file: a relative path is made absolute here, where it was meant."""
    path = os.path.abspath(os.path.expanduser(str(path))) if str(path) else ""
    return pb.TrainRequest(model=model, path=path, **{k: v for k, v in kw.items() if v})
