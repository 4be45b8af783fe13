"""Tools (function calling) in one documented format that works for any chat model, and the
one parser that reads calls out of a process's output, streaming or whole.

The generic format. A model whose chat template does not take tools gets a system block that
lists them (their names, descriptions and JSON-Schema parameters) and asks for calls as

    <tool_call>{"name": "NAME", "arguments": {...}}</tool_call>

one block per call. Earlier calls in the conversation are rendered the same way in the
assistant's message, and each tool result as a user message `<tool_response>...</tool_response>`.
A model whose template takes tools gets them through its template; its calls are read in the
same tag format (the Hermes/Qwen convention).

The grammar (tool_grammar) makes every call valid by construction: with tool_choice
"required" or a named function the output is calls only; with "auto" it is either plain text
(which never contains the call tag) or calls, and a call, once begun, must match its tool's
parameter schema.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from llmos.syscalls.abi.grammar import GrammarSpec
from llmos.syscalls.abi.spec import SpecError

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MAX_TOOLS = 128
FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for function names
PREAMBLE = ("You can call the tools below. To call one, reply with exactly\n"
            '<tool_call>{"name": "NAME", "arguments": {ARGUMENTS}}</tool_call>\n'
            "and nothing else (one block per call; the arguments follow the tool's parameters). "
            "If no tool is needed, answer in plain text.\n\nTools:")


def check_tools(tools: list[dict]) -> list[dict]:
    """OpenAI-shaped function tools, checked: [{"type": "function", "function": {name, description?,
    parameters?}}]. SpecError names what is wrong; another tool type is refused by name."""
    if len(tools) > MAX_TOOLS:
        raise SpecError(f"tools: {len(tools)} tools, over the limit of {MAX_TOOLS}", "tools")
    seen = set()
    for i, t in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(t, dict) or t.get("type") != "function":
            kind = t.get("type") if isinstance(t, dict) else type(t).__name__
            raise SpecError(f"{where}: tools of type {kind!r} are not supported by llmos (only 'function')", "tools")
        fn = t.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not FUNCTION_NAME.fullmatch(fn["name"]):
            raise SpecError(f"{where}.function.name must be 1 to 64 letters, digits, '_' or '-'", "tools")
        if fn["name"] in seen:
            raise SpecError(f"{where}: a second tool named {fn['name']!r}", "tools")
        seen.add(fn["name"])
        if not isinstance(fn.get("parameters", {}), dict):
            raise SpecError(f"{where}.function.parameters must be a JSON Schema object", "tools")
    return tools


def system_block(tools: list[dict]) -> str:
    """The generic format's instructions and tool list."""
    lines = [PREAMBLE]
    for t in tools:
        fn = t["function"]
        desc = f": {fn['description']}" if fn.get("description") else ""
        lines.append(f"- {fn['name']}{desc}\n  parameters: {json.dumps(fn.get('parameters', {'type': 'object'}))}")
    return "\n".join(lines)


def call_text(name: str, arguments: str | dict) -> str:
    """One call as the model writes it (arguments that are not JSON are kept as they were)."""
    if isinstance(arguments, dict):
        arguments = json.dumps(arguments, separators=(",", ":"))
    return OPEN + '{"name":' + json.dumps(name) + ',"arguments":' + (arguments or "{}") + "}" + CLOSE


def render(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """A conversation with tools and tool messages as plain {role, content} messages, in the
    generic format, for a template that knows nothing of tools."""
    out = []
    for m in messages:
        content = m.get("content") or ""
        if m["role"] == "assistant" and m.get("tool_calls"):
            content += "".join(call_text(c["function"]["name"], c["function"]["arguments"]) for c in m["tool_calls"])
            out.append({"role": "assistant", "content": content})
        elif m["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>{content}</tool_response>"})
        else:
            out.append({"role": m["role"], "content": content})
    if tools:
        block = system_block(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + block}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def tool_grammar(tools: list[dict], choice: str | dict = "auto", parallel: bool = True,
                 response_schema: dict | None = None) -> GrammarSpec | None:
    """The grammar of a reply: calls valid against their tools' parameters, and (with
    `response_schema`) a text answer that is JSON of that schema. None: unconstrained."""
    if choice == "none" or not tools:
        return GrammarSpec("json_schema", response_schema) if response_schema is not None else None
    named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    chosen = [t for t in tools if named in (None, t["function"]["name"])]
    if named and not chosen:
        raise SpecError(f"tool_choice names {named!r}, which is not among the tools", "tool_choice")
    alts = " | ".join(f"%json {json.dumps(_compact(_call_schema(t)))}" for t in chosen)
    calls = "call+" if parallel else "call"
    lines = [f"calls: {calls}", f'call: "{OPEN}" ({alts}) "{CLOSE}"']
    if named or choice == "required":
        start = "start: calls"
    elif response_schema is not None:
        start = f"start: answer | calls\nanswer: %json {json.dumps(_compact(response_schema))}"
    else:
        start = f"start: TEXT | calls\nTEXT: /(?s:.+)/ & ~/(?s:.*{re.escape(OPEN)}.*)/"
    return GrammarSpec("cfg", "\n".join([start, *lines]) + "\n")


def _compact(schema: dict) -> dict:
    """JSON with no whitespace between its tokens (llguidance's %json allows any by default)."""
    return {**schema, "x-guidance": {"whitespace_flexible": False}}


def _call_schema(tool: dict) -> dict:
    fn = tool["function"]
    return {"type": "object", "properties": {"name": {"const": fn["name"]},
                                             "arguments": fn.get("parameters") or {"type": "object"}},
            "required": ["name", "arguments"], "additionalProperties": False}


# --- reading calls out of the output --------------------------------------------------------------
@dataclass(frozen=True)
class Text:
    """Plain answer text."""

    text: str


@dataclass(frozen=True)
class CallStart:
    """A call begins: its index among the reply's calls and its function's name."""

    index: int
    name: str


@dataclass(frozen=True)
class CallArgs:
    """A piece of the call's arguments, as JSON text (the pieces join to the whole)."""

    index: int
    text: str


Event = Text | CallStart | CallArgs
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
_TAIL = re.compile(r"\s*\}\s*" + re.escape(CLOSE))
TEXT, HEAD, ARGS, TAIL = "text", "head", "args", "tail"


class ToolParser:
    """Reads a reply's text, piece by piece, into text and calls: one state machine for a
    stream (feed each piece as it comes) and a whole reply (feed it once), so the events, joined,
    are the same either way. States: text (looking for the call tag), head (the call's name),
    args (its arguments' JSON, streamed as it comes), tail (the closing `}</tool_call>`)."""

    def __init__(self) -> None:
        self.state, self.buf, self.calls = TEXT, "", 0
        self.complete = 0  # calls whose closing tag has arrived
        self._depth, self._in_str, self._esc = 0, False, False

    def feed(self, text: str) -> list[Event]:
        self.buf += text
        out: list[Event] = []
        while True:
            progress = getattr(self, "_" + self.state)()
            if progress is None:
                return out
            out += progress

    def close(self) -> list[Event]:
        """The reply is complete: text held back is text; a call cut short in its arguments keeps
        what it had, and one cut short before its name is dropped (it never began)."""
        rest, self.buf = self.buf, ""
        if not rest or self.state in (HEAD, TAIL) or (self.calls and OPEN.startswith(rest)):
            return []  # after calls, a held-back "<tool_c" is the next call, cut short
        return [CallArgs(self.calls - 1, rest)] if self.state == ARGS else [Text(rest)]

    def _text(self) -> list[Event] | None:
        i = self.buf.find(OPEN)
        if i < 0:  # hold back what could be the start of the tag
            keep = next((k for k in range(len(OPEN) - 1, 0, -1) if self.buf.endswith(OPEN[:k])), 0)
            text = self.buf[:len(self.buf) - keep]
            self.buf = self.buf[len(text):]
            return [Text(text)] if text else None
        text, self.buf, self.state = self.buf[:i], self.buf[i + len(OPEN):], HEAD
        return [Text(text)] if text else []

    def _head(self) -> list[Event] | None:
        m = _HEAD.match(self.buf)
        if m is None:
            return None  # not all here yet (the grammar makes the call well formed)
        self.buf, self.state, self.calls = self.buf[m.end():], ARGS, self.calls + 1
        self._depth, self._in_str, self._esc = 0, False, False
        return [CallStart(self.calls - 1, json.loads(f'"{m.group(1)}"'))]

    def _args(self) -> list[Event] | None:
        for j, ch in enumerate(self.buf):
            if self._in_str:
                self._esc, self._in_str = (False, True) if self._esc else (ch == "\\", ch != '"')
            elif ch == '"':
                self._in_str = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    piece, self.buf, self.state = self.buf[:j + 1], self.buf[j + 1:], TAIL
                    return [CallArgs(self.calls - 1, piece)]
        piece, self.buf = self.buf, ""
        return [CallArgs(self.calls - 1, piece)] if piece else None

    def _tail(self) -> list[Event] | None:
        m = _TAIL.match(self.buf)
        if m is None:
            return None
        self.buf, self.state, self.complete = self.buf[m.end():], TEXT, self.complete + 1
        return []


def parse(text: str) -> tuple[str, list[tuple[str, str]]]:
    """A whole reply: its text and its calls as (name, arguments JSON)."""
    p = ToolParser()
    return collect(p.feed(text) + p.close())


def collect(events: list[Event]) -> tuple[str, list[tuple[str, str]]]:
    """Events joined: the text, and each call's (name, arguments)."""
    text, calls = "", []
    for e in events:
        if isinstance(e, Text):
            text += e.text
        elif isinstance(e, CallStart):
            calls.append([e.name, ""])
        else:
            calls[e.index][1] += e.text
    return text, [(n, a) for n, a in calls]
