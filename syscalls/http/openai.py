"""OpenAI's requests: bodies of /v1/chat/completions and /v1/completions checked and turned into
a SpawnSpec (tools and response_format through syscalls/http/tools.py), and every failure into
OpenAI's error shape with an HTTP status. No HTTP server here and no policy: this checks JSON
types and moves fields; the kernel decides what is valid (ranges, models, limits). Replies are
syscalls/http/replies.py's.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from llmos.kernel.errors import (FailedPrecondition, InvalidArgument, KernelError, NotFound, Overloaded,
                                 ResourceExhausted, Unavailable)
from llmos.syscalls.abi.spec import SamplingParams, SpawnSpec
from llmos.syscalls.http import tools

log = logging.getLogger("llmos.http")

PRIORITY_HEADER = "X-LLMOS-Priority"
_COMMON = {"model", "max_tokens", "temperature", "top_p", "seed", "stop", "n", "user", "stream", "stream_options",
           "priority", "ignore_eos"}
FIELDS = {"chat": _COMMON | {"messages", "max_completion_tokens", "logprobs", "top_logprobs"} | tools.FIELDS,
          "text": _COMMON | {"prompt", "logprobs"}}
# Accepted only at the value that changes nothing; any other value is refused, naming the field.
NO_OP = {"presence_penalty": 0, "frequency_penalty": 0, "store": False, "echo": False, "best_of": 1}
IGNORED = {"metadata"}  # accepted and dropped: it cannot change the output
CHAT_ROLES = {"developer": "system"}  # OpenAI's newer name for the system role
# The kernel's reason for the end of a process -> OpenAI's finish_reason; anything else (a
# signal, a limit, a driver error) is "abort", as vLLM reports it.
FINISH = {"eos": "stop", "stop": "stop", "grammar": "stop", "length": "length", "context window full": "length"}


class ApiError(Exception):
    """An error for the client in OpenAI's shape, with its HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.retry_after = retry_after

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        h = {"Retry-After": str(max(1, round(self.retry_after)))} if self.retry_after is not None else {}
        if self.status == 401:
            h["WWW-Authenticate"] = "Bearer"
        return h


# Kernel error classes -> (HTTP status, OpenAI error type); the most derived class wins.
STATUS: dict[type, tuple[int, str]] = {
    InvalidArgument: (400, "invalid_request_error"), FailedPrecondition: (400, "invalid_request_error"),
    NotFound: (404, "not_found_error"), ResourceExhausted: (429, "rate_limit_error"),
    Overloaded: (503, "server_error"), Unavailable: (503, "server_error"),
}
# Kernel error codes without a class here (added elsewhere, e.g. by authentication).
CODE_STATUS = {"unauthenticated": (401, "authentication_error"), "permission_denied": (403, "permission_error")}


def api_error(e: BaseException) -> ApiError:
    """The one mapping from any failure of a request to what the client sees."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, KernelError):
        found = next((STATUS[c] for c in type(e).__mro__ if c in STATUS), None)
        status, kind = found or CODE_STATUS.get(e.code, (500, "server_error"))
        retry = getattr(e, "retry_after_s", None) or (1.0 if status in (429, 503) else None)
        param = "model" if isinstance(e, NotFound) and str(e).startswith("model ") else getattr(e, "param", None)
        code = "model_not_found" if isinstance(e, NotFound) and param else e.code
        return ApiError(status, str(e), kind, param=param, code=code, retry_after=retry)
    if isinstance(e, ValueError):
        return ApiError(400, str(e), code="invalid_argument")
    log.error("http request failed", exc_info=e)
    return ApiError(500, f"internal error: {type(e).__name__}: {e}", "server_error", code="internal")


def bad(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value")


@dataclass
class Request:
    """A checked completion request, ready to spawn."""

    kind: str  # "chat" or "text"
    spawn: SpawnSpec
    calls: bool = False  # replies are read for tool calls (syscalls/http/tools.py)
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    user: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def model(self) -> str:
        return self.spawn.model


def parse(kind: str, body: Any, priority_header: str | None = None) -> Request:
    """Check a request body of kind "chat" or "text" and build the SpawnSpec for it."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    body = {k: v for k, v in body.items() if v is not None}  # null means "not given", as OpenAI reads it
    for name, v in body.items():
        if name in FIELDS[kind] or name in IGNORED:
            continue
        if name in NO_OP and _same(v, NO_OP[name]):
            continue
        hint = f" (only {NO_OP[name]!r})" if name in NO_OP else ""
        raise ApiError(400, f"{name} is not supported by llmos{hint}", param=name, code="unsupported_parameter")
    spawn = SpawnSpec(model=_get(body, "model", str, required=True))
    spawn.stop.ignore_eos = _get(body, "ignore_eos", bool, False)
    calls = False
    if kind == "chat":
        messages = _get(body, "messages", list, required=True)
        if not messages:
            raise bad("messages", "messages is empty; give at least one message")
        try:
            spawn.messages = _messages(messages)
            calls = tools.parse(body, spawn)
        except tools.ToolsError as e:
            raise bad(e.param, str(e)) from None
    else:
        _prompt(body.get("prompt"), spawn)
    _limits(body, spawn)
    spawn.sampling = _sampling(body)
    spawn.unset = tuple(k for k in ("temperature", "top_p", "max_tokens") if body.get(k) is None
                        and not (k == "max_tokens" and body.get("max_completion_tokens") is not None))
    spawn.sampling.logprobs, spawn.sampling.top_logprobs = _logprobs(kind, body)
    spawn.priority = _priority(body, priority_header)
    n = _get(body, "n", int, 1)  # its range is the kernel's (spawn_n)
    options = _get(body, "stream_options", dict, {})
    _only(options, {"include_usage"}, "stream_options")
    return Request(kind, spawn, calls, n=n, stream=_get(body, "stream", bool, False),
                   include_usage=_get(options, "include_usage", bool, False, "stream_options.include_usage"),
                   user=_get(body, "user", str, None))


def _get(body: dict, name: str, kind: type, default: Any = None, param: str | None = None,
         required: bool = False) -> Any:
    param = param or name
    if name not in body:
        if required:
            raise bad(param, f"{param} is required")
        return default
    v = body[name]
    ok = isinstance(v, kind) and not (isinstance(v, bool) and kind is not bool)
    if kind is float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    if not ok:
        raise bad(param, f"{param} must be {_TYPE_NAMES[kind]}, got {type(v).__name__} {v!r:.40}")
    return float(v) if kind is float else v


def _same(v: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(v, bool):
        return v is want
    return isinstance(v, (int, float)) and v == want


def _only(obj: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        name = f"{where}.{extra[0]}"
        raise ApiError(400, f"{name} is not supported by llmos", param=name, code="unsupported_parameter")


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "an array",
               dict: "an object"}


def _messages(messages: list) -> list[dict]:
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(where, f"{where} must be an object with a role and content")
        _only(m, {"role", "content", "tool_calls", "tool_call_id", "name"}, where)
        role = CHAT_ROLES.get(_get(m, "role", str, required=True, param=f"{where}.role"), m["role"])
        content = "" if m.get("content") is None and (m.get("tool_calls") or role == "tool") else m.get("content")
        out.append({"role": role, "content": _content(content, where), **tools.message({**m, "role": role}, where)})
    return out


def _content(content: Any, where: str) -> str:
    """A message's content: a string, or text parts joined by newlines."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad(f"{where}.content", f"{where}.content must be a string or a list of text parts")
    texts = []
    for j, part in enumerate(content):
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            raise bad(f"{where}.content[{j}]", f"{where}.content[{j}]: only text parts are supported by llmos")
        texts.append(part["text"])
    return "\n".join(texts)


def _prompt(prompt: Any, spawn: SpawnSpec) -> None:
    """One prompt: a string, a list of token ids, or a list holding exactly one of those."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        spawn.prompt = prompt
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        spawn.tokens = list(prompt)
    elif prompt is None:
        raise bad("prompt", "prompt is required")
    else:
        raise bad("prompt", "prompt must be a string or a list of token ids; llmos takes one prompt per request")


def _limits(body: dict, spawn: SpawnSpec) -> None:
    given = [k for k in ("max_tokens", "max_completion_tokens") if k in body]
    if len(given) == 2:
        raise bad("max_completion_tokens", "give max_tokens or max_completion_tokens, not both")
    if given:
        spawn.stop.max_tokens = _get(body, given[0], int)  # unset: the kernel's default
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("stop", "stop must be a string or a list of strings")
    spawn.stop.stop = list(stops)


def _sampling(body: dict) -> SamplingParams:
    """temperature, top_p and seed; unset ones take the kernel's defaults (greedy)."""
    return SamplingParams(temperature=_get(body, "temperature", float, 0.0), top_p=_get(body, "top_p", float, 1.0),
                          seed=_get(body, "seed", int, None))


def _logprobs(kind: str, body: dict) -> tuple[bool, int]:
    """Chat asks with `logprobs: true` and `top_logprobs: K`; completions with `logprobs: K`."""
    if kind == "chat":
        on, top = _get(body, "logprobs", bool, False), _get(body, "top_logprobs", int, 0)
        if top and not on:
            raise bad("top_logprobs", "top_logprobs needs logprobs: true")
        return on, top
    top = _get(body, "logprobs", int, None)
    return top is not None, top or 0


def _priority(body: dict, header: str | None) -> int:
    """The nice value: the `priority` field, else the X-LLMOS-Priority header, else 0."""
    if "priority" in body:
        return _get(body, "priority", int)
    if header is None:
        return 0
    try:
        return int(header.strip())
    except ValueError:
        raise bad(PRIORITY_HEADER, f"{PRIORITY_HEADER} must be an integer nice value, got {header!r:.40}") from None
