"""The gRPC servicer: translates syscall requests into kernel calls and kernel errors into
status codes. It holds no policy; the kernel decides.

Every kernel call goes through the KernelThread and is awaited as a future, so the event
loop never waits on a forward pass. Output streams come from the ProcMirror.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import grpc

from llmos.kernel.errors import FailedPrecondition, InvalidArgument, KernelError, NotFound, Unavailable
from llmos.kernel.kernel import Kernel
from llmos.kernel.loader import LoadedModel
from llmos.kernel.proc import State
from llmos.kernel.thread import KernelThread, in_fresh_thread
from llmos.syscalls import convert, evaluate, stats, training, users
from llmos.syscalls.mirror import ProcMirror, snapshot
from llmos.syscalls.v1 import syscalls_pb2 as pb
from llmos.syscalls.v1 import syscalls_pb2_grpc as pb_grpc

T = TypeVar("T")
log = logging.getLogger("llmos.syscalls")

STATUS = {"invalid_argument": grpc.StatusCode.INVALID_ARGUMENT, "not_found": grpc.StatusCode.NOT_FOUND,
          "resource_exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
          "failed_precondition": grpc.StatusCode.FAILED_PRECONDITION, "unavailable": grpc.StatusCode.UNAVAILABLE,
          "permission_denied": grpc.StatusCode.PERMISSION_DENIED, "unauthenticated": grpc.StatusCode.UNAUTHENTICATED}
SIGNALS = "TERM, KILL, STOP or CONT"


def _status(e: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(e, KernelError):
        return STATUS.get(e.code, grpc.StatusCode.INTERNAL), str(e)
    if isinstance(e, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(e)
    log.exception("syscall failed")
    return grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}"


def syscall(fn: Callable) -> Callable:
    """Turn kernel errors raised by a handler (unary or streaming) into gRPC statuses."""
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def stream(self, request, context):
            try:
                async for item in fn(self, request, context):
                    yield item
            except Exception as e:  # noqa: BLE001 - every failure becomes a status, never a crash
                await context.abort(*_status(e))
        return stream

    @functools.wraps(fn)
    async def unary(self, request, context):
        try:
            return await fn(self, request, context)
        except Exception as e:  # noqa: BLE001 - every failure becomes a status, never a crash
            await context.abort(*_status(e))
    return unary


class SyscallServer(pb_grpc.SyscallsServicer):
    """One handler per syscall of protos/llmos/v1/syscalls.proto."""

    def __init__(self, kthread: KernelThread, mirror: ProcMirror,
                 on_shutdown: Callable[[float | None], None] = lambda grace: None, tokens=None,
                 meter=None) -> None:
        self.kt = kthread
        self.meter = meter  # llmos.kernel.stats.TokenMeter, for the Stats syscall
        self.tokens = tokens  # llmos.tokens.TokenStore, for the token syscalls
        self.mirror = mirror
        self.on_shutdown = on_shutdown
        self.accepting = True
        self._pipes: set[asyncio.Task] = set()

    # The kernel path, shared with the HTTP gateway (syscalls/http.py).
    async def call(self, fn: Callable[[Kernel], T]) -> T:
        """Run fn(kernel) on the kernel thread and await its result, never blocking the loop."""
        try:
            fut = self.kt.submit(fn)
        except RuntimeError:
            raise Unavailable("llmosd is shutting down: its kernel has stopped") from None
        return await asyncio.wrap_future(fut)

    def check_accepting(self) -> None:
        """Unavailable once shutdown has begun: no new processes."""
        if not self.accepting:
            raise Unavailable("llmosd is shutting down and takes no new work")

    async def snap(self, pid: int):
        """pid's snapshot in the mirror, fetched from the kernel if the mirror has none yet."""
        if pid not in self.mirror.snaps:
            snap = await self.call(lambda k: snapshot(k.procs[pid]) if pid in k.procs else None)
            if snap is None:
                raise NotFound(f"no process with pid {pid}")
            self.mirror.snaps.setdefault(pid, snap)
        return self.mirror.get(pid)

    # --- processes -----------------------------------------------------------------------------
    @syscall
    async def Spawn(self, req: pb.SpawnRequest, context) -> pb.SpawnResponse:
        self.check_accepting()
        args = convert.spawn_args(req)
        args["owner"] = users.cred().owner_for(req.owner)
        p = await self.call(lambda k: k.spawn(**args))
        return pb.SpawnResponse(pid=p.pid)

    @syscall
    async def Read(self, req: pb.ReadRequest, context):
        if req.offset < 0:
            raise InvalidArgument(f"offset must be 0 or more, got {req.offset}")
        await users.check_visible(self, req.pid)
        snap = await self.snap(req.pid)
        if req.offset > len(snap.stdout) and snap.state.done:
            raise InvalidArgument(f"offset {req.offset} is past the end of pid {req.pid}'s output "
                                  f"({len(snap.stdout)} characters)")
        async for text, end, snap in self.mirror.follow(req.pid, req.offset, turn=req.until == pb.TURN,
                                                        now=req.until == pb.NOW):
            yield pb.ReadResponse(text=text, offset=end, state=snap.state.value, reason=snap.reason)

    @syscall
    async def Write(self, req: pb.WriteRequest, context) -> pb.WriteResponse:
        await users.check_visible(self, req.pid)
        def write(k: Kernel) -> int:
            k.write(req.pid, req.text)
            return k.procs[req.pid].turn_text_start
        return pb.WriteResponse(offset=await self.call(write))

    @syscall
    async def Wait(self, req: pb.WaitRequest, context) -> pb.WaitResponse:
        await users.check_visible(self, req.pid)
        await self.snap(req.pid)
        await self.mirror.until(req.pid, lambda s: s.ended(req.until == pb.TURN))

        def finish(k: Kernel):
            p = k.reap(req.pid) if req.reap else k.procs.get(req.pid)
            if p is None:
                raise NotFound(f"no process with pid {req.pid}")
            return convert.proc_info(p), p.stdout, dict(p.results)
        info, output, results = await self.call(finish)
        if req.reap:
            self.mirror.forget(req.pid)
        return pb.WaitResponse(proc=info, output=output, results=results)

    @syscall
    async def Kill(self, req: pb.KillRequest, context) -> pb.KillResponse:
        if req.signal not in pb.Signal.values():
            raise InvalidArgument(f"unknown signal {req.signal}; use {SIGNALS}")
        sig = pb.Signal.Name(req.signal)
        await users.check_visible(self, req.pid)
        return pb.KillResponse(proc=await self.call(lambda k: convert.proc_info(k.signal(req.pid, sig))))

    @syscall
    async def Fork(self, req: pb.ForkRequest, context) -> pb.ForkResponse:
        self.check_accepting()
        await users.check_visible(self, req.pid)
        sampling = convert.sampling(req.sampling) if req.HasField("sampling") else None
        text = req.text if req.HasField("text") else None
        max_tokens = req.max_tokens if req.HasField("max_tokens") else None
        child = await self.call(lambda k: k.fork(req.pid, text=text, sampling=sampling, max_tokens=max_tokens))
        return pb.ForkResponse(pid=child.pid)

    @syscall
    async def Pipe(self, req: pb.PipeRequest, context) -> pb.PipeResponse:
        if req.src != req.dst:
            await users.check_visible(self, req.src, req.dst)
        def check(k: Kernel) -> None:
            if req.src == req.dst:
                raise InvalidArgument("a process cannot be piped into itself")
            for pid in (req.src, req.dst):
                if pid not in k.procs:
                    raise NotFound(f"no process with pid {pid}")
            dst = k.procs[req.dst]
            if not dst.interactive:
                raise FailedPrecondition(f"pid {req.dst} is not interactive; only an interactive process reads stdin")
            if dst.state.done:
                raise FailedPrecondition(f"pid {req.dst} has already {dst.state.value}")
        await self.call(check)
        await self.snap(req.src), await self.snap(req.dst)
        # The pipe outlives this call: a client that goes away does not lose the data.
        task = asyncio.ensure_future(self._pipe(req.src, req.dst))
        self._pipes.add(task)
        task.add_done_callback(self._pipes.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved, even if the caller left
        return pb.PipeResponse(dst_offset=await asyncio.shield(task))

    async def _pipe(self, src: int, dst: int) -> int:
        text = (await self.mirror.until(src, lambda s: s.state.done)).stdout
        while True:
            snap = await self.mirror.until(dst, lambda s: s.ended(turn=True))
            if snap.state.done:
                raise FailedPrecondition(f"pid {dst} {snap.state.value} before pid {src}'s output reached it")

            def write(k: Kernel) -> int | None:
                p = k.procs.get(dst)
                if p is None or p.state != State.BLOCKED:
                    return None  # it moved on meanwhile (stopped, or written by someone else): wait again
                k.write(dst, text)
                return p.turn_text_start
            offset = await self.call(write)
            if offset is not None:
                return offset
            await self.mirror.until(dst, lambda s: s is not snap)

    @syscall
    async def Ps(self, req: pb.PsRequest, context) -> pb.PsResponse:
        states = set(req.states)
        bad = states - {s.value for s in State}
        if bad:
            raise InvalidArgument(f"unknown state {sorted(bad)[0]!r}; states are "
                                  f"{', '.join(s.value for s in State)}")
        cred = users.cred()

        def ps(k: Kernel) -> list[pb.ProcInfo]:
            now = time.monotonic()
            return [convert.proc_info(p, now) for p in k.procs.values()
                    if (not req.model or p.model == req.model) and (not states or p.state.value in states)
                    and (not req.owner or p.owner == req.owner) and not (req.live_only and p.state.done)
                    and cred.sees(p.owner)]
        return pb.PsResponse(procs=await self.call(ps))

    @syscall
    async def Stat(self, req: pb.StatRequest, context) -> pb.StatResponse:
        await users.check_visible(self, req.pid)
        def stat(k: Kernel) -> pb.ProcInfo:
            if req.pid not in k.procs:
                raise NotFound(f"no process with pid {req.pid}")
            return convert.proc_info(k.procs[req.pid])
        return pb.StatResponse(proc=await self.call(stat))

    # --- memory, devices, models, logs -----------------------------------------------------------
    @syscall
    async def MemInfo(self, req: pb.MemInfoRequest, context) -> pb.MemInfoResponse:
        def meminfo(k: Kernel) -> list[pb.PoolInfo]:
            names = [req.model] if req.model else sorted(n for n, m in k.models.items() if not m.base)
            return [convert.pool_info(n, k.meminfo(n), k.models[n].kv_bytes) for n in names]
        return pb.MemInfoResponse(pools=await self.call(meminfo))

    @syscall
    async def Devices(self, req: pb.DevicesRequest, context) -> pb.DevicesResponse:
        return pb.DevicesResponse(devices=[convert.device(await self.call(lambda k: k.driver.describe()))])

    @syscall
    async def Models(self, req: pb.ModelsRequest, context) -> pb.ModelsResponse:
        def models(k: Kernel) -> pb.ModelsResponse:
            live = {n: sum(1 for p in k.procs.values() if p.model == n and not p.state.done) for n in k.models}
            return pb.ModelsResponse(loaded=[convert.model_info(m, live[n]) for n, m in sorted(k.models.items())],
                                     stored=k.store.list() if k.store is not None else [])
        return await self.call(models)

    @syscall
    async def LoadModel(self, req: pb.LoadModelRequest, context) -> pb.LoadModelResponse:
        users.cred().check_admin("load models")
        self.check_accepting()
        # Converting and reading weights takes seconds and needs no process state: do it on a
        # worker thread so the kernel keeps stepping; only the install runs on the kernel thread.
        kernel = self.kt.kernel
        prep = await asyncio.wrap_future(in_fresh_thread(
            lambda: kernel.prepare_model(req.model, req.name or None, req.dtype or "float32", req.quantize or None)))
        m = await self.call(lambda k: prep if isinstance(prep, LoadedModel) else k.install_model(prep))
        live = await self.call(lambda k: sum(1 for p in k.procs.values() if p.model == m.name and not p.state.done))
        return pb.LoadModelResponse(model=convert.model_info(m, live))

    @syscall
    async def UnloadModel(self, req: pb.UnloadModelRequest, context) -> pb.UnloadModelResponse:
        users.cred().check_admin("unload models")
        await self.call(lambda k: k.unload_model(req.name))
        return pb.UnloadModelResponse()

    @syscall
    async def Dmesg(self, req: pb.DmesgRequest, context) -> pb.DmesgResponse:
        users.cred().check_admin("read the kernel log (it names every user's processes)")
        if req.limit < 0:
            raise InvalidArgument(f"limit must be 0 (all) or positive, got {req.limit}")
        lines = [pb.LogLine(time=t, level=lv, msg=m) for t, lv, m in await self.call(lambda k: list(k.ring))
                 if t >= req.since]
        return pb.DmesgResponse(lines=lines[-req.limit:] if req.limit else lines)

    @syscall
    async def Shutdown(self, req: pb.ShutdownRequest, context) -> pb.ShutdownResponse:
        users.cred().check_admin("shut the daemon down")
        if req.HasField("grace_s") and not req.grace_s >= 0:
            raise InvalidArgument(f"grace_s must be 0 or more, got {req.grace_s}")
        self.on_shutdown(req.grace_s if req.HasField("grace_s") else None)
        return pb.ShutdownResponse()

    # --- users and tokens (syscalls/users.py) ------------------------------------------------------
    Whoami = syscall(users.whoami)
    CreateToken = syscall(users.create_token)
    ListTokens = syscall(users.list_tokens)
    RevokeToken = syscall(users.revoke_token)
    Stats = syscall(stats.stats)
    Eval = syscall(evaluate.eval_)
    Train = syscall(training.train_)
