"""The gRPC servicer: one thin handler per syscall of protos/llmos/v1/syscalls.proto.

Each handler decodes its request, makes one kernel operation with the caller's Cred on the
kernel thread (awaited, so the event loop never waits on a forward pass), and encodes the
result, as xv6's sys_kill fetches its argument and calls kill(). The kernel decides every
rule; kernel errors become status codes here. Output streams come from the ProcMirror.
"""
from __future__ import annotations

import time


from llmos.kernel import accounting, devices, grammar
from llmos.kernel import stats as kstats
from llmos.kernel.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from llmos.kernel.mirror import ProcMirror
from llmos.kernel.stats import TokenMeter
from llmos.kernel.thread import KernelThread
from llmos.kernel.workloads import dataset, evaluate, train
from llmos.syscalls.abi import wire
from llmos.syscalls.abi.spec import variant_name
from llmos.syscalls.server import convert
from llmos.syscalls.server.calls import off_thread, syscall
from llmos.syscalls.server.interceptors import caller, cred
from llmos.syscalls.server.models import ModelSyscalls
from llmos.syscalls.v1 import syscalls_pb2 as pb
from llmos.syscalls.v1 import syscalls_pb2_grpc as pb_grpc

class SyscallServer(ModelSyscalls, pb_grpc.SyscallsServicer):
    """The syscall table, served over gRPC."""

    def __init__(self, kthread: KernelThread, mirror: ProcMirror, meter: TokenMeter | None = None,
                 usage: "accounting.UsageStore | None" = None) -> None:
        self.kt = kthread
        self.mirror = mirror
        self.meter = meter  # for the Stats syscall
        self.usage = usage  # for the Usage syscall: llmosd's usage store

    # --- processes -----------------------------------------------------------------------------
    @syscall
    async def Spawn(self, req: pb.SpawnRequest, context) -> pb.SpawnResponse:
        c, spec = cred(), wire.spawn_spec(req)
        await grammar.ready(self.kt, c, spec)
        return pb.SpawnResponse(pid=(await self.kt.run(lambda k: k.spawn(c, spec))).pid)

    @syscall
    async def Read(self, req: pb.ReadRequest, context):
        async for text, end, snap, lps in self.mirror.read(cred(), req.pid, req.offset, turn=req.until == pb.TURN,
                                                           now=req.until == pb.NOW):
            yield pb.ReadResponse(text=text, offset=end, state=snap.state.value, reason=snap.reason,
                                  logprobs=convert.logprobs(lps))

    @syscall
    async def Write(self, req: pb.WriteRequest, context) -> pb.WriteResponse:
        c = cred()
        role = req.role or "user"
        return pb.WriteResponse(offset=await self.kt.run(lambda k: k.write(c, req.pid, req.text, role)))

    @syscall
    async def Wait(self, req: pb.WaitRequest, context) -> pb.WaitResponse:
        c = cred()
        await self.mirror.wait(c, req.pid, turn=req.until == pb.TURN)

        def finish(k):
            p = k.reap(c, req.pid) if req.reap else k.lookup(c, req.pid)
            return pb.WaitResponse(proc=convert.proc_info(p), output=p.stdout, results=dict(p.results),
                                   logprobs=convert.logprobs(p.logprobs))
        resp = await self.kt.run(finish)
        if req.reap:
            self.mirror.forget(req.pid)
        return resp

    @syscall
    async def Kill(self, req: pb.KillRequest, context) -> pb.KillResponse:
        c = cred()
        if req.signal not in pb.Signal.values():
            raise InvalidArgument(f"unknown signal {req.signal}; use TERM, KILL, STOP or CONT")
        sig = pb.Signal.Name(req.signal)
        return pb.KillResponse(proc=await self.kt.run(lambda k: convert.proc_info(k.signal(c, req.pid, sig))))

    @syscall
    async def Renice(self, req: pb.ReniceRequest, context) -> pb.ReniceResponse:
        c = cred()
        return pb.ReniceResponse(proc=await self.kt.run(lambda k: convert.proc_info(k.renice(c, req.pid,
                                                                                            req.priority))))

    @syscall
    async def Fork(self, req: pb.ForkRequest, context) -> pb.ForkResponse:
        c = cred()
        sampling = wire.sampling(req.sampling) if req.HasField("sampling") else None
        text = req.text if req.HasField("text") else None
        max_tokens = req.max_tokens if req.HasField("max_tokens") else None
        child = await self.kt.run(lambda k: k.fork(c, req.pid, text, sampling, max_tokens))
        return pb.ForkResponse(pid=child.pid)

    @syscall
    async def Pipe(self, req: pb.PipeRequest, context) -> pb.PipeResponse:
        c = cred()
        pipe = await self.kt.run(lambda k: k.pipe(c, req.src, req.dst))
        return pb.PipeResponse(dst_offset=await self.mirror.pipe_closed(pipe.id))

    @syscall
    async def Ps(self, req: pb.PsRequest, context) -> pb.PsResponse:
        c = cred()

        def ps(k) -> list[pb.ProcInfo]:
            now = time.monotonic()
            return [convert.proc_info(p, now, k.device_name) for p in k.ps(c, req.model, list(req.states), req.owner,
                                                                             req.live_only)]
        return pb.PsResponse(procs=await self.kt.run(ps))

    @syscall
    async def Stat(self, req: pb.StatRequest, context) -> pb.StatResponse:
        c = cred()
        return pb.StatResponse(proc=await self.kt.run(lambda k: convert.proc_info(k.lookup(c, req.pid), None,
                                                                                  k.device_name)))

    # --- memory, devices, models, logs -----------------------------------------------------------
    @syscall
    async def MemInfo(self, req: pb.MemInfoRequest, context) -> pb.MemInfoResponse:
        c = cred()

        def meminfo(k) -> list[pb.PoolInfo]:
            return [convert.pool_info(n, mem, devices.kv_bytes(k, n, mem), d) for n, d, mem in k.memory_map(c, req.model)]
        return pb.MemInfoResponse(pools=await self.kt.run(meminfo))

    @syscall
    async def Devices(self, req: pb.DevicesRequest, context) -> pb.DevicesResponse:
        cred()
        return pb.DevicesResponse(devices=[convert.device(d) for d in await self.kt.run(devices.describe)])

    @syscall
    async def Migrate(self, req: pb.MigrateRequest, context) -> pb.MigrateResponse:
        c = cred()

        def migrate(k) -> pb.MigrateResponse:
            p, source, how = k.migrate(c, req.pid, req.to, req.by or "auto")
            return pb.MigrateResponse(proc=convert.proc_info(p, None, k.device_name), source=source, how=how)
        return await self.kt.run(migrate)

    @syscall
    async def Drain(self, req: pb.DrainRequest, context) -> pb.DrainResponse:
        c = cred()
        moved = await self.kt.run(lambda k: k.drain(c, req.device, req.undo))
        return pb.DrainResponse(moved=[pb.Moved(pid=pid, device=d) for pid, d in moved])

    @syscall
    async def Dmesg(self, req: pb.DmesgRequest, context) -> pb.DmesgResponse:
        c = cred()
        lines = await self.kt.run(lambda k: k.dmesg(c, req.since, req.limit))
        return pb.DmesgResponse(lines=[pb.LogLine(time=t, level=lv, msg=m) for t, lv, m in lines])

    @syscall
    async def Shutdown(self, req: pb.ShutdownRequest, context) -> pb.ShutdownResponse:
        c, grace = cred(), req.grace_s if req.HasField("grace_s") else None
        await self.kt.run(lambda k: k.request_shutdown(c, grace))
        return pb.ShutdownResponse()

    @syscall
    async def Stats(self, req: pb.StatsRequest, context) -> pb.StatsResponse:
        cred()  # aggregates (no owners, pids or text): every identified caller may read them
        meter = self.meter
        if meter is None:
            raise FailedPrecondition("this daemon keeps no token meter, so it has no stats")
        return convert.stats(await self.kt.run(lambda k: kstats.take(k, meter)))

    @syscall
    async def Usage(self, req: pb.UsageRequest, context) -> pb.UsageResponse:
        c = cred()
        if self.usage is None:
            raise FailedPrecondition("this daemon keeps no usage records")
        rows = await accounting.report(self.kt, self.usage, c, req.user, req.model, req.since, req.by)
        return pb.UsageResponse(rows=[convert.usage_row(r) for r in rows])

    # --- users and tokens ----------------------------------------------------------------------
    @syscall
    async def Whoami(self, req: pb.WhoamiRequest, context) -> pb.WhoamiResponse:
        user = caller()
        limits, used = await self.kt.run(lambda k: k.whoami(user.cred))
        return pb.WhoamiResponse(user=user.name, admin=user.admin, via=user.via, uid=user.uid, token=user.token,
                                 limits=convert.quota(limits), used=convert.quota(used))

    @syscall
    async def CreateToken(self, req: pb.CreateTokenRequest, context) -> pb.CreateTokenResponse:
        c = cred()
        info, secret = await self.kt.run(lambda k: k.create_token(c, req.name, req.user, req.admin))
        return pb.CreateTokenResponse(token=convert.token(info), secret=secret)

    @syscall
    async def ListTokens(self, req: pb.ListTokensRequest, context) -> pb.ListTokensResponse:
        c = cred()
        return pb.ListTokensResponse(tokens=[convert.token(t) for t in await self.kt.run(lambda k: k.list_tokens(c))])

    @syscall
    async def RevokeToken(self, req: pb.RevokeTokenRequest, context) -> pb.RevokeTokenResponse:
        c = cred()
        return pb.RevokeTokenResponse(token=convert.token(await self.kt.run(lambda k: k.revoke_token(c, req.token))))

    # --- workloads (kernel/workloads/): the data comes first, off the kernel thread ----------------
    async def _data(self, c, first, rest) -> tuple[str, bytes]:
        """A workload's data: the chunks the client streams (within its data quota), or, for an
        admin, a file on the daemon's disk inside its data_dirs."""
        kernel = self.kt.kernel
        if first.path:
            if first.data or first.data_name:
                raise InvalidArgument("give the data in the request or a path on the daemon's disk, not both")
            return await off_thread(lambda: dataset.read_server_file(c, first.path, kernel.config.data_dirs))
        left = await self.kt.run(lambda k: k.quota.data_allowance(k, c.user))
        chunks, size = [first.data], len(first.data)
        async for more in rest:
            size += len(more.data)
            if left is not None and size > left:
                raise ResourceExhausted(f"the data is over the {left} bytes user {c.user} may still send "
                                        "(their data quota, less what their live tasks hold)")
            chunks.append(more.data)
        if left is not None and size > left:
            raise ResourceExhausted(f"the data is over the {left} bytes user {c.user} may still send")
        return first.data_name or "data", b"".join(chunks)

    @syscall
    async def Eval(self, requests, context) -> pb.EvalResponse:
        c, req = cred(), await _first(requests)
        model = variant_name(req.model, req.quantize)
        codec = await self.kt.run(lambda k: k.model_for(c, model).codec)  # an unknown model fails before any data
        name, data = await self._data(c, req, requests)
        spec = evaluate.EvalSpec(model=model, data_name=name, metric=req.metric, window=req.window,
                                 max_tokens=req.max_tokens if req.HasField("max_tokens") else 256)
        task = await off_thread(lambda: evaluate.prepare(spec, data, codec))
        task.data_bytes = len(data)
        p = await self.kt.run(lambda k: evaluate.spawn_eval(k, c, task, priority=req.priority, owner=req.owner))
        return pb.EvalResponse(pid=p.pid)

    @syscall
    async def Train(self, requests, context) -> pb.TrainResponse:
        c, req = cred(), await _first(requests)
        await self.kt.run(lambda k: k.model_for(c, req.model))  # an unknown model fails before any data
        name, data = ("", None) if req.resume and not (req.path or req.data or req.data_name) \
            else await self._data(c, req, requests)
        d = train.TrainSpec(name)  # zero fields take the defaults
        spec = train.TrainSpec(name, steps=req.steps or d.steps, lr=req.lr or d.lr, rank=req.rank or d.rank,
                               batch=req.batch or d.batch, micro_batch=req.micro_batch or d.micro_batch,
                               checkpoint_every=req.checkpoint_every or d.checkpoint_every, name=req.name,
                               max_len=req.max_len or d.max_len, distill=req.distill,
                               temperature=req.temperature or d.temperature, alpha=req.alpha, full=req.full)
        p = await self.kt.run(lambda k: train.start(k, c, req.model, spec, data, resume=req.resume,
                                                    priority=req.priority, owner=req.owner, steps=req.steps))
        return pb.TrainResponse(pid=p.pid, name=p.task.name)


async def _first(requests):
    """The first message of a client stream: it carries the request's fields."""
    async for req in requests:
        return req
    raise InvalidArgument("the request stream was empty: its first message must hold the request's fields")
