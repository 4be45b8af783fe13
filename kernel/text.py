"""Text in and out of a process: prompts, chat templates, and incremental detokenizing."""
from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING

from transformers import PreTrainedTokenizerBase

from llmos.syscalls.abi import tools as tool_format

if TYPE_CHECKING:
    from llmos.drivers.grammar import GrammarCompiler

_PROBE_USER, _PROBE_REPLY = "\x00llmos-user\x00", "\x00llmos-reply\x00"


class TextCodec:
    """A tokenizer with the chat template and the end-of-turn tokens of one model."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, eos_token_ids: set[int], vocab_size: int = 0) -> None:
        self.tokenizer = tokenizer
        self.eos = set(eos_token_ids)
        if tokenizer.eos_token_id is not None:
            self.eos.add(tokenizer.eos_token_id)
        self.vocab_size = vocab_size or len(tokenizer)  # the model's logits' width
        self._grammars: "GrammarCompiler | None" = None
        self._lock = threading.Lock()

    def grammars(self) -> "GrammarCompiler":
        """The grammar compiler of this tokenizer (built on first use, ~0.4 s for 49k tokens;
        safe from any thread: the Spawn syscall compiles off the kernel thread)."""
        with self._lock:
            if self._grammars is None:
                from llmos.drivers.grammar import GrammarCompiler
                self._grammars = GrammarCompiler(self.tokenizer, self.vocab_size, sorted(self.eos))
            return self._grammars

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def encode_more(self, text: str) -> list[int]:
        """Tokens of text that continues a sequence (no BOS)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def takes_tools(self) -> bool:
        """Whether the chat template renders tools itself (else: the generic format of syscalls/abi/tools.py)."""
        return "tools" in (getattr(self.tokenizer, "chat_template", None) or "")

    def encode_chat(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        if tools or any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
            if self.takes_tools:
                return self._encode_template(native_messages(messages), tools=tools)
            messages = tool_format.render(messages, tools)
        if not self.has_chat_template:
            return self.encode("\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:")
        return self._encode_template([{"role": m["role"], "content": m["content"]} for m in messages])

    def _encode_template(self, messages: list[dict], **kw) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kw)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def user_turn(self, text: str, after_eos: bool, role: str = "user") -> list[int]:
        """Tokens that follow an assistant reply to open the next turn (a user's, or a tool
        result's) and the next reply.

        Found by rendering the template with and without one more message, so it works for
        any chat template. `after_eos` says whether the reply ended with the end-of-turn token
        already; if not, that token's text is added first.
        """
        if role == "tool" and not self.takes_tools:  # the generic format: a tool result is a user turn
            text, role = tool_format.render([{"role": "tool", "content": text}], None)[0]["content"], "user"
        if not self.has_chat_template:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        t = self.tokenizer
        base = [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_REPLY}]
        before = t.apply_chat_template(base, tokenize=False)
        after = t.apply_chat_template(base + [{"role": role, "content": text}], tokenize=False,
                                      add_generation_prompt=True)
        cut = before.index(_PROBE_REPLY) + len(_PROBE_REPLY)
        delta = after[cut:]
        eos_text = t.eos_token or ""
        if eos_text and delta.startswith(eos_text):
            delta = delta[len(eos_text):]
        prefix = [] if after_eos or t.eos_token_id is None else [t.eos_token_id]
        return prefix + list(t(delta, add_special_tokens=False)["input_ids"])

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def token_text(self, token: int) -> str:
        """One token's own text (special tokens too), as logprobs name it."""
        return self.tokenizer.decode([token])


def native_messages(messages: list[dict]) -> list[dict]:
    """Messages as HF chat templates take tool calls: arguments as objects, not JSON text."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [{"type": "function", "id": c.get("id", ""), "function": {
                "name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"] or "{}")}}
                for c in m["tool_calls"]]
        out.append(m)
    return out


class Detokenizer:
    """Turns a growing token list into text pieces, never splitting a multi-byte character."""

    def __init__(self, codec: TextCodec) -> None:
        self.codec = codec
        self.prefix = 0  # tokens before this were fully emitted and only give context
        self.read = 0    # tokens before this have been emitted

    def step(self, tokens: list[int], final: bool = False) -> str:
        """New text since the last call; `final` also gives a trailing partial character."""
        before = self.codec.decode(tokens[self.prefix:self.read])
        now = self.codec.decode(tokens[self.prefix:])
        if len(now) <= len(before) or (now.endswith("\ufffd") and not final):
            return ""
        self.prefix, self.read = self.read, len(tokens)
        return now[len(before):]
