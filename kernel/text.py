"""Text in and out of a process: prompts, chat templates, and incremental detokenizing."""
from __future__ import annotations

from transformers import PreTrainedTokenizerBase

_PROBE_USER, _PROBE_REPLY = "\x00llmos-user\x00", "\x00llmos-reply\x00"


class TextCodec:
    """A tokenizer with the chat template and the end-of-turn tokens of one model."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, eos_token_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.eos = set(eos_token_ids)
        if tokenizer.eos_token_id is not None:
            self.eos.add(tokenizer.eos_token_id)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def encode_more(self, text: str) -> list[int]:
        """Tokens of text that continues a sequence (no BOS)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_chat(self, messages: list[dict]) -> list[int]:
        if not self.has_chat_template:
            return self.encode("\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:")
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def user_turn(self, text: str, after_eos: bool) -> list[int]:
        """Tokens that follow an assistant reply to open the next user turn and the next reply.

        Found by rendering the template with and without one more user message, so it
        works for any chat template. `after_eos` says whether the reply ended with the
        end-of-turn token already; if not, that token's text is added first.
        """
        if not self.has_chat_template:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        t = self.tokenizer
        base = [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_REPLY}]
        before = t.apply_chat_template(base, tokenize=False)
        after = t.apply_chat_template(base + [{"role": "user", "content": text}], tokenize=False,
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
