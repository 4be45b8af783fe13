"""What a process is asked to be: its model, its input, how it samples, when it stops, its
limits and its priority. Pure data with the checks that need no model; the kernel adds the
checks that do (the vocabulary, the context window, the KV pool).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from typing import TYPE_CHECKING

from llmos.syscalls.abi.logprobs import MAX_TOP_LOGPROBS

if TYPE_CHECKING:
    from llmos.syscalls.abi.grammar import GrammarSpec

NICE_MIN, NICE_MAX = -20, 19
MAX_TEMPERATURE = 100.0
MAX_STOP_STRINGS, MAX_STOP_CHARS = 16, 256
MAX_NEW_TOKENS = 1 << 17      # max_tokens per turn (a model's context window bounds it further)
MAX_TEXT_CHARS = 1 << 20      # characters of prompt or messages, all together, and of one written turn
MAX_MESSAGES = 4096
MAX_PROMPT_TOKENS = 1 << 20   # token ids given directly (a model's context window bounds them further)
ROLES = ("system", "user", "assistant", "tool")
UNSET_FIELDS = ("temperature", "top_k", "top_p", "max_tokens")  # what a request may leave to its model


class SpecError(ValueError):
    """A spec that can never be valid; the message names the field and its limit."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class SamplingParams:
    """How to pick the next token. temperature 0 means greedy."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: bool = False  # record each sampled token's log-probability
    top_logprobs: int = 0   # and this many alternatives (0..MAX_TOP_LOGPROBS)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def check(self) -> None:
        if not 0 <= self.temperature <= MAX_TEMPERATURE:
            raise SpecError(f"temperature must be in [0, {MAX_TEMPERATURE:g}], got {self.temperature}", "temperature")
        if not 0 < self.top_p <= 1:
            raise SpecError(f"top_p must be in (0, 1], got {self.top_p}", "top_p")
        if self.top_k < 0:
            raise SpecError(f"top_k must be 0 (off) or positive, got {self.top_k}", "top_k")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise SpecError(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs}",
                            "top_logprobs")
        if self.top_logprobs and not self.logprobs:
            raise SpecError("top_logprobs needs logprobs", "top_logprobs")


@dataclass
class StopRules:
    """When generation ends: max new tokens (per turn), stop strings, end-of-sequence tokens."""

    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False

    def check(self) -> None:
        if not 1 <= self.max_tokens <= MAX_NEW_TOKENS:
            raise SpecError(f"max_tokens must be in [1, {MAX_NEW_TOKENS}], got {self.max_tokens}", "max_tokens")
        if len(self.stop) > MAX_STOP_STRINGS or any(not s or len(s) > MAX_STOP_CHARS for s in self.stop):
            raise SpecError(f"stop strings: at most {MAX_STOP_STRINGS}, each 1 to {MAX_STOP_CHARS} characters", "stop")


@dataclass
class Limits:
    """Per-process resource limits; None means unlimited."""

    max_pages: int | None = None
    max_wall_s: float | None = None

    def check(self) -> None:
        if self.max_pages is not None and self.max_pages < 1:
            raise SpecError(f"max_pages must be at least 1, got {self.max_pages}", "max_pages")
        if self.max_wall_s is not None and not 0 < self.max_wall_s < float("inf"):
            raise SpecError(f"max_wall_s must be a positive, finite number of seconds, got {self.max_wall_s}",
                            "max_wall_s")


@dataclass
class SpawnSpec:
    """Everything a Spawn names. Exactly one of prompt, messages or tokens, except that an
    interactive process may give none (or messages ending before a user turn) and wait for
    input. `owner` "" means the caller; only an admin may name another user."""

    model: str
    prompt: str | None = None
    messages: list[dict] | None = None
    tokens: list[int] | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: StopRules = field(default_factory=StopRules)
    limits: Limits = field(default_factory=Limits)
    priority: int = 0
    owner: str = ""
    interactive: bool = False
    grammar: "GrammarSpec | None" = None  # what each turn's output must follow (syscalls/abi/grammar.py)
    tools: list[dict] | None = None       # OpenAI-shaped function tools the messages offer (syscalls/abi/tools.py)
    speculate: bool = True                # False: never verify proposals for it, even where llmosd speculates
    unset: tuple[str, ...] = ()           # of UNSET_FIELDS: left to the model's defaults (its manifest)

    def check(self) -> None:
        """Refuse what no model could run; SpecError names the field."""
        if not self.model:
            raise SpecError("model is required", "model")
        given = sum(1 for x in (self.prompt, self.messages, self.tokens) if x is not None)
        if given > 1 or (given == 0 and not self.interactive):
            raise SpecError("give exactly one of prompt, messages or tokens "
                            "(an interactive process may give none and wait for input)")
        if self.messages is not None:
            check_messages(self.messages)
        if self.tools is not None:
            from llmos.syscalls.abi.tools import check_tools
            check_tools(self.tools)
        if self.prompt is not None:
            check_text(self.prompt, "prompt")
        if self.tokens is not None and len(self.tokens) > MAX_PROMPT_TOKENS:
            raise SpecError(f"tokens: {len(self.tokens)} token ids, over the limit of {MAX_PROMPT_TOKENS}", "tokens")
        check_nice(self.priority)
        if self.grammar is not None:
            self.grammar.check()
        self.sampling.check()
        self.stop.check()
        self.limits.check()


def check_nice(nice: int) -> int:
    """A nice value within [NICE_MIN, NICE_MAX]."""
    if not NICE_MIN <= nice <= NICE_MAX:
        raise SpecError(f"priority (nice) must be in [{NICE_MIN}, {NICE_MAX}], got {nice}", "priority")
    return nice


def check_text(text: str, field: str) -> str:
    """Text a process reads (a prompt, a turn): at most MAX_TEXT_CHARS characters."""
    if len(text) > MAX_TEXT_CHARS:
        raise SpecError(f"{field}: {len(text)} characters, over the limit of {MAX_TEXT_CHARS}", field)
    return text


def check_messages(messages: list[dict]) -> list[dict]:
    if not messages:
        raise SpecError("messages is empty; give at least one message", "messages")
    if len(messages) > MAX_MESSAGES:
        raise SpecError(f"messages: {len(messages)} messages, over the limit of {MAX_MESSAGES}", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise SpecError(f"message {i} needs a role ({', '.join(ROLES)}) and string content", "messages")
        calls = m.get("tool_calls")
        if calls is not None and (m["role"] != "assistant" or not isinstance(calls, list) or not all(
                isinstance(c, dict) and isinstance(c.get("function"), dict) and isinstance(c["function"].get("name"), str)
                and isinstance(c["function"].get("arguments"), str) for c in calls)):
            raise SpecError(f"message {i}: tool_calls belong to assistant messages, each a function with a name "
                            "and arguments as a JSON string", "messages")
    total = sum(len(m["content"]) for m in messages)
    if total > MAX_TEXT_CHARS:
        raise SpecError(f"messages: {total} characters of content, over the limit of {MAX_TEXT_CHARS}", "messages")
    return messages


def variant_name(model: str, quantize: str = "") -> str:
    """The name under which `model` quantized with `quantize` is served: `smollm2-135m:int8`,
    or for a tagged version `NAME:TAG-int8` (a tag holds no ':')."""
    if quantize in ("", "none"):
        return model
    name, _, tag = model.partition(":")
    return f"{name}:{tag}-{quantize}" if tag else f"{name}:{quantize}"
