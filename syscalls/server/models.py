"""The model syscalls: list, load and unload models, and build, show, tag and remove stored
versions. A mixin of the servicer (syscalls/server/servicer.py), one thin handler each."""
from __future__ import annotations

from llmos.kernel import devices
from llmos.syscalls.server import convert
from llmos.syscalls.server.calls import off_thread, syscall
from llmos.syscalls.server.interceptors import cred
from llmos.syscalls.v1 import syscalls_pb2 as pb


class ModelSyscalls:
    """Handlers over `self.kt`, the kernel thread."""

    @syscall
    async def Models(self, req: pb.ModelsRequest, context) -> pb.ModelsResponse:
        c = cred()

        def models(k) -> pb.ModelsResponse:
            loaded, stored = k.list_models(c)
            return pb.ModelsResponse(loaded=[convert.model_info(m, live, source, k.where(m.name))
                                             for m, live, source in loaded],
                                     stored=[e.ref for e in stored], versions=[convert.stored_model(e) for e in stored])
        return await self.kt.run(models)

    @syscall
    async def LoadModel(self, req: pb.LoadModelRequest, context) -> pb.LoadModelResponse:
        c, kernel = cred(), self.kt.kernel
        targets = await self.kt.run(lambda k: k.replica_targets(c, req.replicas, list(req.devices)))
        # Converting and reading weights takes seconds and needs no process state: do it off the
        # kernel thread so the kernel keeps stepping; only the install runs on the kernel thread.
        prep = await off_thread(lambda: kernel.prepare_model(c, req.model, req.name or None, req.dtype or "float32",
                                                             req.quantize or None, req.prune, req.prune_heads))
        m = await self.kt.run(lambda k: k.install_model(prep))
        if targets:  # the same load on each other device, under the name it got here
            args = {"ref": req.model, "name": m.name, "dtype": req.dtype or "float32", "quantize": req.quantize or None,
                    "prune": req.prune, "prune_heads": req.prune_heads}
            loaded = await off_thread(lambda: devices.load_replicas(c, targets, args))
            await self.kt.run(lambda k: k.add_replicas(loaded))
        return await self.kt.run(lambda k: pb.LoadModelResponse(model=convert.model_info(
            m, k.live(m.name), m.source, k.where(m.name))))

    @syscall
    async def UnloadModel(self, req: pb.UnloadModelRequest, context) -> pb.UnloadModelResponse:
        c = cred()
        await self.kt.run(lambda k: k.unload_model(c, req.name))
        return pb.UnloadModelResponse()

    @syscall
    async def CreateModel(self, req: pb.CreateModelRequest, context) -> pb.CreateModelResponse:
        c = cred()
        e = await self.kt.run(lambda k: k.create_model(c, req.name, req.manifest))
        return pb.CreateModelResponse(model=convert.stored_model(e), loaded=e.loaded)

    @syscall
    async def ShowModel(self, req: pb.ShowModelRequest, context) -> pb.ShowModelResponse:
        c = cred()
        e, text = await self.kt.run(lambda k: k.show_model(c, req.name))
        return pb.ShowModelResponse(model=convert.stored_model(e), manifest=text)

    @syscall
    async def TagModel(self, req: pb.TagModelRequest, context) -> pb.TagModelResponse:
        c = cred()
        e = await self.kt.run(lambda k: k.tag_model(c, req.source, req.target))
        return pb.TagModelResponse(model=convert.stored_model(e))

    @syscall
    async def RemoveModel(self, req: pb.RemoveModelRequest, context) -> pb.RemoveModelResponse:
        c = cred()
        v, removed, freed = await self.kt.run(lambda k: k.remove_model(c, req.name))
        return pb.RemoveModelResponse(digest=v.digest, versions_removed=removed, bytes_freed=freed)
