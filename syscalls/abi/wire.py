"""SpawnSpec and its parts on the wire (protos/llmos/v1), both ways. The SDK encodes with
these and the servicer decodes with them, so a field added to the spec is added here once."""
from __future__ import annotations

import json

from llmos.syscalls.abi.grammar import GrammarSpec
from llmos.syscalls.abi.logprobs import TokenLogprob
from llmos.syscalls.abi.spec import Limits, SamplingParams, SpawnSpec, SpecError, StopRules, variant_name

from llmos.syscalls.v1 import syscalls_pb2 as pb

__all__ = ["sampling_msg", "sampling", "logprobs", "grammar_msg", "grammar", "message_msg", "message", "tool_msg",
           "tool", "spawn_request", "spawn_spec", "variant_name"]


def sampling_msg(s: SamplingParams, unset: tuple[str, ...] = ()) -> pb.Sampling:
    """`unset` names settings left to the model's defaults: they are not sent."""
    given = {k: getattr(s, k) for k in ("temperature", "top_k", "top_p") if k not in unset}
    return pb.Sampling(**given, seed=s.seed, logprobs=s.logprobs, top_logprobs=s.top_logprobs)


def sampling(msg: pb.Sampling) -> SamplingParams:
    return SamplingParams(temperature=msg.temperature, top_k=msg.top_k,
                          top_p=msg.top_p if msg.HasField("top_p") else 1.0,
                          seed=msg.seed if msg.HasField("seed") else None, logprobs=msg.logprobs,
                          top_logprobs=msg.top_logprobs)


def unset(req: pb.SpawnRequest) -> tuple[str, ...]:
    """The settings a SpawnRequest leaves to its model's defaults."""
    s = req.sampling
    return tuple(k for k in ("temperature", "top_k", "top_p") if not s.HasField(k)) + \
        (() if req.HasField("max_tokens") else ("max_tokens",))


def logprobs(msgs) -> list[TokenLogprob]:
    """TokenLogprob messages back as the ABI's TokenLogprobs."""
    return [TokenLogprob(m.token, m.text, m.logprob, tuple((t.token, t.text, t.logprob) for t in m.top))
            for m in msgs]


def grammar_msg(g: GrammarSpec) -> pb.Grammar:
    choices = list(g.source) if isinstance(g.source, tuple) else []
    return pb.Grammar(kind=g.kind, source="" if choices else g.source, choices=choices,
                      flexible_whitespace=g.flexible_whitespace)


def grammar(msg: pb.Grammar) -> GrammarSpec:
    source = tuple(msg.choices) if msg.kind == "choice" else msg.source
    return GrammarSpec(msg.kind, source, msg.flexible_whitespace)


def message_msg(m: dict) -> pb.ChatMessage:
    calls = [pb.ToolCall(id=c.get("id", ""), name=c["function"]["name"], arguments=c["function"]["arguments"])
             for c in m.get("tool_calls") or ()]
    return pb.ChatMessage(role=m.get("role", ""), content=m.get("content") or "", tool_calls=calls,
                          tool_call_id=m.get("tool_call_id", ""))


def message(msg: pb.ChatMessage) -> dict:
    m = {"role": msg.role, "content": msg.content}
    if msg.tool_calls:
        m["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                           for c in msg.tool_calls]
    if msg.tool_call_id:
        m["tool_call_id"] = msg.tool_call_id
    return m


def tool_msg(t: dict) -> pb.Tool:
    fn = t.get("function", {})
    return pb.Tool(name=fn.get("name", ""), description=fn.get("description", ""),
                   parameters=json.dumps(fn.get("parameters", {"type": "object"})))


def tool(msg: pb.Tool) -> dict:
    try:
        params = json.loads(msg.parameters) if msg.parameters else {"type": "object"}
    except json.JSONDecodeError as e:
        raise SpecError(f"tool {msg.name!r}: parameters are not JSON: {e}", "tools") from None
    return {"type": "function", "function": {"name": msg.name, "description": msg.description, "parameters": params}}


def spawn_request(spec: SpawnSpec) -> pb.SpawnRequest:
    """The SpawnRequest that carries `spec`."""
    return pb.SpawnRequest(
        model=spec.model, prompt=spec.prompt, tokens=list(spec.tokens or ()),
        messages=[message_msg(m) for m in spec.messages or ()], tools=[tool_msg(t) for t in spec.tools or ()],
        sampling=sampling_msg(spec.sampling, spec.unset),
        max_tokens=None if "max_tokens" in spec.unset else spec.stop.max_tokens, stop=list(spec.stop.stop),
        ignore_eos=spec.stop.ignore_eos, priority=spec.priority,
        limits=pb.Limits(max_pages=spec.limits.max_pages, max_wall_s=spec.limits.max_wall_s),
        interactive=spec.interactive, owner=spec.owner,
        grammar=grammar_msg(spec.grammar) if spec.grammar is not None else None, no_speculate=not spec.speculate)


def spawn_spec(req: pb.SpawnRequest) -> SpawnSpec:
    """The SpawnSpec a SpawnRequest carries (unset fields take the spec's defaults)."""
    lim = req.limits
    return SpawnSpec(
        model=variant_name(req.model, req.quantize),
        prompt=req.prompt if req.HasField("prompt") else None,
        messages=[message(m) for m in req.messages] or None,
        tools=[tool(t) for t in req.tools] or None,
        tokens=list(req.tokens) or None,
        sampling=sampling(req.sampling),
        stop=StopRules(max_tokens=req.max_tokens if req.HasField("max_tokens") else StopRules().max_tokens,
                       stop=list(req.stop), ignore_eos=req.ignore_eos),
        limits=Limits(max_pages=lim.max_pages if lim.HasField("max_pages") else None,
                      max_wall_s=lim.max_wall_s if lim.HasField("max_wall_s") else None),
        priority=req.priority, owner=req.owner, interactive=req.interactive,
        grammar=grammar(req.grammar) if req.HasField("grammar") else None, speculate=not req.no_speculate,
        unset=unset(req))
