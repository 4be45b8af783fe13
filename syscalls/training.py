"""The Train syscall: validate the dataset off the kernel thread, then start the training
process on it (kernel/train.py)."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from llmos.kernel import dataset, train
from llmos.kernel.thread import in_fresh_thread
from llmos.syscalls import users
from llmos.syscalls.v1 import syscalls_pb2 as pb

if TYPE_CHECKING:
    from llmos.syscalls.server import SyscallServer


def spec_of(req: pb.TrainRequest) -> train.TrainSpec:
    """The request's hyperparameters; zero fields take TrainSpec's defaults."""
    d = train.TrainSpec(req.path)
    return train.TrainSpec(req.path, steps=req.steps or d.steps, lr=req.lr or d.lr, rank=req.rank or d.rank,
                           batch=req.batch or d.batch, micro_batch=req.micro_batch or d.micro_batch,
                           checkpoint_every=req.checkpoint_every or d.checkpoint_every, name=req.name,
                           max_len=req.max_len or d.max_len)


async def train_(server: "SyscallServer", req: pb.TrainRequest, context) -> pb.TrainResponse:
    server.check_accepting()
    owner = users.cred().owner_for(req.owner)
    await server.call(lambda k: k.model(req.model))  # an unknown model fails before the data is read
    spec = spec_of(req)
    if not req.resume:  # a resumed run re-reads the dataset its checkpoint names
        await asyncio.wrap_future(in_fresh_thread(lambda: dataset.read(req.path)))
    p = await server.call(lambda k: train.start(k, req.model, spec, resume=req.resume, priority=req.priority,
                                                owner=owner, steps=req.steps))
    return pb.TrainResponse(pid=p.pid, name=p.task.name)
