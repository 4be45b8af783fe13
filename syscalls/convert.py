"""Translation between syscall messages and kernel objects, both ways. No policy here:
the kernel decides what is valid; this only moves fields."""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from llmos.drivers.driver import DeviceInfo, SamplingParams
from llmos.kernel.errors import InvalidArgument
from llmos.kernel.loader import variant_name
from llmos.kernel.proc import Limits, Process, StopRules
from llmos.syscalls.v1 import syscalls_pb2 as pb

if TYPE_CHECKING:
    from llmos.kernel.loader import LoadedModel
    from llmos.kernel.memory import MemInfo


def sampling(msg: pb.Sampling) -> SamplingParams:
    return SamplingParams(temperature=msg.temperature, top_k=msg.top_k,
                          top_p=msg.top_p if msg.HasField("top_p") else 1.0,
                          seed=msg.seed if msg.HasField("seed") else None)


def spawn_args(req: pb.SpawnRequest) -> dict[str, Any]:
    """Keyword arguments of Kernel.spawn for a SpawnRequest."""
    limits = Limits(max_pages=req.limits.max_pages if req.limits.HasField("max_pages") else None,
                    max_wall_s=req.limits.max_wall_s if req.limits.HasField("max_wall_s") else None)
    if limits.max_wall_s is not None and not math.isfinite(limits.max_wall_s):
        raise InvalidArgument(f"max_wall_s must be a finite number of seconds, got {limits.max_wall_s}")
    stop = StopRules(stop=list(req.stop), ignore_eos=req.ignore_eos)
    if req.HasField("max_tokens"):
        stop.max_tokens = req.max_tokens
    return dict(model=variant_name(req.model, req.quantize),
                prompt=req.prompt if req.HasField("prompt") else None,
                messages=[{"role": m.role, "content": m.content} for m in req.messages] or None,
                tokens=list(req.tokens) or None,
                sampling=sampling(req.sampling), stop=stop, limits=limits, priority=req.priority,
                owner=req.owner or "root", interactive=req.interactive)


def proc_info(p: Process, now: float | None = None) -> pb.ProcInfo:
    now = time.monotonic() if now is None else now
    u = p.usage
    info = pb.ProcInfo(pid=p.pid, ppid=p.ppid, model=p.model, owner=p.owner, state=p.state.value, reason=p.reason,
                       priority=p.priority, interactive=p.interactive, num_tokens=len(p.tokens),
                       output_chars=len(p.stdout), age_s=now - p.created, max_tokens=p.stop.max_tokens,
                       usage=pb.Usage(prompt_tokens=u.prompt_tokens, generated_tokens=u.generated_tokens,
                                      cached_tokens=u.cached_tokens, ttft_s=u.ttft_s, pages_held=u.pages_held,
                                      swaps=u.swaps, preemptions=u.preemptions))
    if p.finished is not None:
        info.run_s = p.finished - p.created
    return info


def pool_info(name: str, mem: "MemInfo", kv_bytes: int) -> pb.PoolInfo:
    return pb.PoolInfo(model=name, page_size=mem.page_size, total=mem.total, free=mem.free, used=mem.used,
                       shared=mem.shared, cached=mem.cached, swapped=mem.swapped, swap_total=mem.swap_total,
                       waste_tokens=mem.waste_tokens, kv_bytes=kv_bytes)


def device(d: DeviceInfo) -> pb.Device:
    return pb.Device(name=d.name, kind=d.kind, index=d.index, total_memory=d.total_memory,
                     free_memory=d.free_memory, utilization=d.utilization, temperature=d.temperature,
                     threads=d.threads)


def model_info(m: "LoadedModel", live_procs: int) -> pb.ModelInfo:
    i = m.info
    return pb.ModelInfo(name=m.name, architecture=i.architecture, source=m.source, num_layers=i.num_layers,
                        vocab_size=i.vocab_size, max_context=i.max_context, dtype=i.dtype,
                        num_parameters=i.num_parameters, weight_bytes=i.weight_bytes, kv_bytes=m.kv_bytes,
                        kv_pages=m.memory.pool.num_pages, live_procs=live_procs, loaded_at=m.loaded_at,
                        quantize=i.quantize, ppl_ratio=i.ppl_ratio, base=i.base, lora_rank=i.lora_rank)
