"""OpenAI's replies: kernel results as whole responses and as stream chunks, with logprobs and
tool calls in OpenAI's shapes. No policy: this moves fields."""
from __future__ import annotations

from llmos.syscalls.http.openai import FINISH, Request
from llmos.syscalls.http.tools import Reply


def finish_reason(reason: str) -> str:
    """OpenAI's finish_reason of a kernel reason ("length: the grammar was not complete" is a length)."""
    return FINISH.get(reason.split(":")[0] if reason.startswith("length") else reason, "abort")


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def response_id(req: Request, pid: int) -> str:
    return f"{'chatcmpl' if req.kind == 'chat' else 'cmpl'}-llmos-{pid}"


def _envelope(req: Request, pid: int, chunk: bool) -> dict:
    obj = {"chat": "chat.completion", "text": "text_completion"}[req.kind] + (".chunk" if chunk and req.kind == "chat"
                                                                               else "")
    return {"id": response_id(req, pid), "object": obj, "created": req.created, "model": req.model,
            "system_fingerprint": None}


def completion(req: Request, pid: int, outputs: list[tuple[str, str, list]], used: dict) -> dict:
    """The whole response: outputs are (text, kernel reason, logprobs) per choice."""
    if req.kind == "chat":
        choices = []
        for i, (text, reason, lps) in enumerate(outputs):
            reply = Reply(pid, i, req.calls)
            msg = reply.whole(text)
            calls = msg.get("tool_calls") and not reply.cut_short
            choices.append({"index": i, "message": msg, "logprobs": logprobs(req, lps),
                            "finish_reason": "tool_calls" if calls else finish_reason(reason)})
    else:
        choices = [{"index": i, "text": text, "logprobs": logprobs(req, lps), "finish_reason": finish_reason(reason)}
                   for i, (text, reason, lps) in enumerate(outputs)]
    return {**_envelope(req, pid, False), "choices": choices, "usage": used}


def logprobs(req: Request, lps: list, text_start: int = 0) -> dict | None:
    """OpenAI's logprobs of a choice (or of one chunk's tokens), or None if not asked for."""
    if not req.spawn.sampling.logprobs:
        return None
    if req.kind == "chat":
        def entry(text: str, lp: float) -> dict:
            return {"token": text, "logprob": lp, "bytes": list(text.encode())}
        return {"content": [{**entry(x.text, x.logprob), "top_logprobs": [entry(t, v) for _, t, v in x.top]}
                            for x in lps], "refusal": None}
    starts = [text_start] + [x.text_end for x in lps[:-1]]
    return {"tokens": [x.text for x in lps], "token_logprobs": [x.logprob for x in lps],
            "top_logprobs": [{t: v for _, t, v in x.top} for x in lps], "text_offset": starts}


def chunk(req: Request, pid: int, index: int, text: str = "", reason: str | None = None,
          first: bool = False, lps: list | None = None, start: int = 0, delta: dict | None = None,
          calls: bool = False) -> dict:
    """One stream event for choice index: a chat `delta` (Reply.deltas) or new completion text
    from offset `start`, with its tokens' logprobs; or its end (reason is the kernel's; `calls`:
    the choice made tool calls)."""
    fr = ("tool_calls" if calls else finish_reason(reason)) if reason is not None else None
    lp = logprobs(req, lps, start) if lps else None
    if req.kind == "chat":
        delta = {"role": "assistant", "content": ""} if first else (delta or {})
        choice = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": fr}
    else:
        choice = {"index": index, "text": text, "logprobs": lp, "finish_reason": fr}
    out = {**_envelope(req, pid, True), "choices": [choice]}
    if req.include_usage:
        out["usage"] = None
    return out


def usage_chunk(req: Request, pid: int, used: dict) -> dict:
    """The last event when stream_options.include_usage is true: no choices, the usage."""
    return {**_envelope(req, pid, True), "choices": [], "usage": used}
