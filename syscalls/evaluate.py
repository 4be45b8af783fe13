"""The Eval syscall: read and validate the data off the kernel thread, then start the eval
process on it (kernel/evaluate.py)."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from llmos.kernel import evaluate
from llmos.kernel.loader import variant_name
from llmos.kernel.thread import in_fresh_thread
from llmos.syscalls import users
from llmos.syscalls.v1 import syscalls_pb2 as pb

if TYPE_CHECKING:
    from llmos.syscalls.server import SyscallServer


async def eval_(server: "SyscallServer", req: pb.EvalRequest, context) -> pb.EvalResponse:
    server.check_accepting()
    owner = users.cred().owner_for(req.owner)
    model = variant_name(req.model, req.quantize)
    await server.call(lambda k: k.model(model))  # an unknown model fails before the data is read
    spec = evaluate.EvalSpec(model=model, path=req.path, metric=req.metric, window=req.window,
                             max_tokens=req.max_tokens if req.HasField("max_tokens") else 256)
    task = await asyncio.wrap_future(in_fresh_thread(lambda: evaluate.prepare(spec)))
    p = await server.call(lambda k: evaluate.spawn_eval(k, task, priority=req.priority, owner=owner))
    return pb.EvalResponse(pid=p.pid)
