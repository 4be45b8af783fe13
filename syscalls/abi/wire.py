"""SpawnSpec and its parts on the wire (protos/llmos/v1), both ways. The SDK encodes with
these and the servicer decodes with them, so a field added to the spec is added here once."""
from __future__ import annotations

from llmos.syscalls.abi.spec import Limits, SamplingParams, SpawnSpec, StopRules, variant_name

__all__ = ["sampling_msg", "sampling", "spawn_request", "spawn_spec", "variant_name"]
from llmos.syscalls.v1 import syscalls_pb2 as pb


def sampling_msg(s: SamplingParams) -> pb.Sampling:
    return pb.Sampling(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, seed=s.seed)


def sampling(msg: pb.Sampling) -> SamplingParams:
    return SamplingParams(temperature=msg.temperature, top_k=msg.top_k,
                          top_p=msg.top_p if msg.HasField("top_p") else 1.0,
                          seed=msg.seed if msg.HasField("seed") else None)


def spawn_request(spec: SpawnSpec) -> pb.SpawnRequest:
    """The SpawnRequest that carries `spec`."""
    return pb.SpawnRequest(
        model=spec.model, prompt=spec.prompt, tokens=list(spec.tokens or ()),
        messages=[pb.ChatMessage(role=m.get("role", ""), content=m.get("content", "")) for m in spec.messages or ()],
        sampling=sampling_msg(spec.sampling), max_tokens=spec.stop.max_tokens, stop=list(spec.stop.stop),
        ignore_eos=spec.stop.ignore_eos, priority=spec.priority,
        limits=pb.Limits(max_pages=spec.limits.max_pages, max_wall_s=spec.limits.max_wall_s),
        interactive=spec.interactive, owner=spec.owner)


def spawn_spec(req: pb.SpawnRequest) -> SpawnSpec:
    """The SpawnSpec a SpawnRequest carries (unset fields take the spec's defaults)."""
    lim = req.limits
    return SpawnSpec(
        model=variant_name(req.model, req.quantize),
        prompt=req.prompt if req.HasField("prompt") else None,
        messages=[{"role": m.role, "content": m.content} for m in req.messages] or None,
        tokens=list(req.tokens) or None,
        sampling=sampling(req.sampling),
        stop=StopRules(max_tokens=req.max_tokens if req.HasField("max_tokens") else StopRules().max_tokens,
                       stop=list(req.stop), ignore_eos=req.ignore_eos),
        limits=Limits(max_pages=lim.max_pages if lim.HasField("max_pages") else None,
                      max_wall_s=lim.max_wall_s if lim.HasField("max_wall_s") else None),
        priority=req.priority, owner=req.owner, interactive=req.interactive)
