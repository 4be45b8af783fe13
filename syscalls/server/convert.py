"""Kernel objects as syscall messages. No policy here: the kernel decides what a caller may
see; this only moves fields. (Requests become kernel input through llmos.syscalls.abi.wire.)"""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from llmos.drivers.driver import PPL_TOLERANCE
from llmos.kernel.users.quota import UserLimits
from llmos.kernel.users.tokens import TokenInfo
from llmos.syscalls.v1 import syscalls_pb2 as pb

if TYPE_CHECKING:
    from llmos.drivers.driver import DeviceInfo
    from llmos.kernel.accounting import UsageRow
    from llmos.kernel.memory import MemInfo
    from llmos.kernel.models.loading import LoadedModel
    from llmos.kernel.models.versions import Entry
    from llmos.kernel.proc import Process
    from llmos.kernel.stats import Stats


def proc_info(p: "Process", now: float | None = None, home: str = "") -> pb.ProcInfo:
    """`home`: the daemon's own device, where a process with no device of its own runs."""
    now = time.monotonic() if now is None else now
    u = p.usage
    info = pb.ProcInfo(pid=p.pid, ppid=p.ppid, model=p.model, owner=p.owner, state=p.state.value, reason=p.reason,
                       device=p.device or home,
                       priority=p.priority, interactive=p.interactive, num_tokens=len(p.tokens),
                       output_chars=len(p.stdout), age_s=now - p.created, max_tokens=p.stop.max_tokens,
                       usage=pb.Usage(prompt_tokens=u.prompt_tokens, generated_tokens=u.generated_tokens,
                                      cached_tokens=u.cached_tokens, ttft_s=u.ttft_s, pages_held=u.pages_held,
                                      swaps=u.swaps, preemptions=u.preemptions))
    if p.finished is not None:
        info.run_s = p.finished - p.created
    return info


def pool_info(name: str, mem: "MemInfo", kv_bytes: int, device: str = "") -> pb.PoolInfo:
    return pb.PoolInfo(model=name, page_size=mem.page_size, total=mem.total, free=mem.free, used=mem.used,
                       shared=mem.shared, cached=mem.cached, swapped=mem.swapped, swap_total=mem.swap_total,
                       waste_tokens=mem.waste_tokens, kv_bytes=kv_bytes, device=device)


def device(d: "DeviceInfo") -> pb.Device:
    return pb.Device(name=d.name, kind=d.kind, index=d.index, total_memory=d.total_memory,
                     free_memory=d.free_memory, utilization=d.utilization, temperature=d.temperature,
                     threads=d.threads, telemetry_error=d.telemetry_error, node=d.node)


def model_info(m: "LoadedModel", live_procs: int, source: str, devices: list[str] = ()) -> pb.ModelInfo:
    """`source` is what the caller may see of where it came from (the kernel's list_models)."""
    i = m.info
    return pb.ModelInfo(name=m.name, architecture=i.architecture, source=source, num_layers=i.num_layers,
                        vocab_size=i.vocab_size, max_context=i.max_context, dtype=i.dtype,
                        num_parameters=i.num_parameters, weight_bytes=i.weight_bytes, kv_bytes=m.kv_bytes,
                        kv_pages=m.memory.pool.num_pages, live_procs=live_procs, loaded_at=m.loaded_at,
                        quantize=i.quantize, ppl_ratio=i.ppl_ratio, base=i.base, lora_rank=i.lora_rank,
                        ppl_tolerance=PPL_TOLERANCE, kernels=i.kernels, pruned=i.pruned,
                        pruned_heads=i.pruned_heads, prune_ppl_ratio=i.prune_ppl_ratio, digest=m.digest,
                        preset_of=m.preset_of, devices=devices)


def stored_model(e: "Entry") -> pb.StoredModel:
    """A stored version under one of its names (kernel/models/versions.py)."""
    v = e.version
    return pb.StoredModel(name=e.ref, digest=v.digest, kind=v.kind, size=e.size, created=v.created, owner=e.owner,
                          made_from=v.made_from, lineage=json.dumps(v.lineage, sort_keys=True), quantize=v.quantize,
                          prune=v.prune, loaded=e.loaded)


def stats(s: "Stats") -> pb.StatsResponse:
    return pb.StatsResponse(generated_tokens=s.generated_tokens, tokens_per_s=s.tokens_per_s,
                            rate_window_s=s.rate_window_s, queue_depth=s.queue_depth, procs=s.procs,
                            pools=[pool_info(p.model, p.mem, p.kv_bytes, p.device) for p in s.pools],
                            devices=[device(d) for d in s.devices], uptime_s=s.uptime_s,
                            step_seconds=s.step_seconds, task_seconds=s.task_seconds)


def usage_row(r: "UsageRow") -> pb.UsageRow:
    return pb.UsageRow(user=r.user, model=r.model, period_start=r.period_start, prompt_tokens=r.prompt_tokens,
                       generated_tokens=r.generated_tokens, step_seconds=r.step_seconds,
                       task_seconds=r.task_seconds, processes=r.processes)


def quota(q: UserLimits) -> pb.Quota:
    return pb.Quota(procs=q.procs, pages=q.pages, tokens_per_min=q.tokens_per_min, data_bytes=q.data_bytes)


def token(t: TokenInfo) -> pb.TokenInfo:
    return pb.TokenInfo(id=t.id, name=t.name, user=t.user, admin=t.admin, created=t.created)


def logprobs(lps) -> list[pb.TokenLogprob]:
    """TokenLogprobs (llmos.syscalls.abi.logprobs) as messages."""
    return [pb.TokenLogprob(token=lp.token, text=lp.text, logprob=lp.logprob,
                            top=[pb.TopLogprob(token=t, text=x, logprob=v) for t, x, v in lp.top]) for lp in lps]
