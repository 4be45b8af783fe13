"""Tools and structured output in OpenAI's shapes.

Requests: `tools` (function tools), `tool_choice` (none, auto, required or a named function),
`parallel_tool_calls`, `response_format` (text, json_object, json_schema) and tools with
`response_format` together become the spec's tools and grammar (syscalls/abi/tools.py builds
the grammar); assistant messages with `tool_calls` and `tool` messages stay structured for the
kernel to render. Replies: one ToolParser per choice turns the text into `message.tool_calls`
or, streaming, `delta.tool_calls` fragments (index, id, name, then argument pieces), so the
whole answer is always the streamed chunks joined.
"""
from __future__ import annotations

from typing import Any

from llmos.syscalls.abi import tools as fmt
from llmos.syscalls.abi.grammar import GrammarSpec
from llmos.syscalls.abi.spec import SpawnSpec, SpecError

CHOICES = ("none", "auto", "required")
FIELDS = {"tools", "tool_choice", "parallel_tool_calls", "response_format"}


class ToolsError(ValueError):
    """A tools or response_format field that cannot be used: (param, message)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def parse(body: dict, spawn: SpawnSpec) -> bool:
    """Set the spec's tools and grammar from the body; whether replies are read for calls."""
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise ToolsError("tools", "tools must be an array of function tools")
    try:
        fmt.check_tools(tools)
    except SpecError as e:
        raise ToolsError("tools", str(e)) from None
    choice = body.get("tool_choice", "auto" if tools else "none")
    if not (choice in CHOICES or (isinstance(choice, dict) and choice.get("type") == "function"
                                  and isinstance(choice.get("function", {}).get("name"), str))):
        raise ToolsError("tool_choice", "tool_choice must be none, auto, required or "
                                        '{"type": "function", "function": {"name": ...}}')
    if choice != "none" and not tools:
        raise ToolsError("tool_choice", "tool_choice needs tools")
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise ToolsError("parallel_tool_calls", "parallel_tool_calls must be true or false")
    schema = response_schema(body.get("response_format"))
    spawn.tools = tools or None
    try:
        if tools and choice != "none":
            spawn.grammar = fmt.tool_grammar(tools, choice, parallel, schema)
        elif schema is not None:
            spawn.grammar = GrammarSpec("json_object") if schema == {"type": "object"} else \
                GrammarSpec("json_schema", schema)
    except SpecError as e:
        raise ToolsError(e.field or "tool_choice", str(e)) from None
    return bool(tools) and choice != "none"


def response_schema(fmt_: Any) -> dict | None:
    """The JSON Schema a text answer must follow, from response_format (None: free text)."""
    if fmt_ is None:
        return None
    if not isinstance(fmt_, dict) or fmt_.get("type") not in ("text", "json_object", "json_schema"):
        raise ToolsError("response_format", "response_format.type must be text, json_object or json_schema")
    if fmt_["type"] == "text":
        return None
    if fmt_["type"] == "json_object":
        return {"type": "object"}
    spec = fmt_.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise ToolsError("response_format.json_schema", "response_format.json_schema needs a schema object")
    return spec.get("schema") or {"type": "object"}  # strict or not, the answer follows it by construction


def message(m: dict, where: str) -> dict:
    """An assistant message's tool_calls and a tool message's tool_call_id, kept for the kernel."""
    out = {}
    calls = m.get("tool_calls")
    if calls is not None:
        if m.get("role") != "assistant" or not isinstance(calls, list):
            raise ToolsError(f"{where}.tool_calls", f"{where}.tool_calls belongs to an assistant message, as an array")
        for j, c in enumerate(calls):
            fn = c.get("function") if isinstance(c, dict) else None
            if not (isinstance(fn, dict) and isinstance(fn.get("name"), str) and isinstance(fn.get("arguments"), str)):
                raise ToolsError(f"{where}.tool_calls[{j}]", f"{where}.tool_calls[{j}] needs function.name and "
                                                             "function.arguments (a JSON string)")
        out["tool_calls"] = [{"id": c.get("id", ""), "type": "function", "function": {
            "name": c["function"]["name"], "arguments": c["function"]["arguments"]}} for c in calls]
    if m.get("role") != "tool" and "tool_call_id" in m:
        raise ToolsError(f"{where}.tool_call_id", f"{where}.tool_call_id belongs to a tool message, not a "
                                                  f"{m.get('role')!r} one")
    if m.get("role") == "tool":
        if not isinstance(m.get("tool_call_id"), str):
            raise ToolsError(f"{where}.tool_call_id", f"{where}: a tool message needs tool_call_id")
        out["tool_call_id"] = m["tool_call_id"]
    return out


def call_id(pid: int, choice: int, index: int) -> str:
    return f"call_llmos_{pid}_{choice}_{index}"


class Reply:
    """One choice's reply, read for calls as it streams (or at once)."""

    def __init__(self, pid: int, choice: int, calls: bool) -> None:
        self.pid, self.choice, self.on = pid, choice, calls
        self.parser = fmt.ToolParser()
        self.calls = 0

    def deltas(self, text: str, final: bool = False) -> list[dict]:
        """The chat deltas of a piece of text (OpenAI's streaming shapes)."""
        if not self.on:
            return [{"content": text}] if text else []
        events = self.parser.feed(text) + (self.parser.close() if final else [])
        out = []
        for e in events:
            if isinstance(e, fmt.Text):
                out.append({"content": e.text})
            elif isinstance(e, fmt.CallStart):
                self.calls += 1
                out.append({"tool_calls": [{"index": e.index, "id": call_id(self.pid, self.choice, e.index),
                                            "type": "function", "function": {"name": e.name, "arguments": ""}}]})
            else:
                out.append({"tool_calls": [{"index": e.index, "function": {"arguments": e.text}}]})
        return out

    def whole(self, text: str) -> dict:
        """The complete message, from the same parser: equal to the deltas joined."""
        content, calls = "", []
        for d in self.deltas(text, final=True):
            if "content" in d:
                content += d["content"]
            for c in d.get("tool_calls", ()):
                if "id" in c:
                    calls.append({"id": c["id"], "type": "function", "function": dict(c["function"])})
                else:
                    calls[c["index"]]["function"]["arguments"] += c["function"]["arguments"]
        calls = calls[:self.parser.complete]  # a call cut short (max_tokens) is no call
        msg = {"role": "assistant", "content": content if content or not calls else None}
        if calls:
            msg["tool_calls"] = calls
        return msg

    @property
    def cut_short(self) -> bool:
        """Whether the reply ended inside a call (then its finish_reason is length)."""
        return self.parser.calls > self.parser.complete
