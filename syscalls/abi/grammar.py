"""A grammar a process's output must follow: a JSON Schema, any JSON object, a regular
expression, a context-free grammar (Lark, or GBNF) or a list of choices. Plain data with the
checks that need no engine; drivers/grammar.py compiles it (llguidance) for a tokenizer."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal, Union

from llmos.syscalls.abi.spec import SpecError

GrammarKind = Literal["json_schema", "json_object", "regex", "cfg", "choice"]
KINDS: tuple[str, ...] = ("json_schema", "json_object", "regex", "cfg", "choice")
MAX_SOURCE_BYTES = 64 * 1024
MAX_CHOICES = 1024


class GrammarError(SpecError):
    """A grammar that cannot be used; the message quotes the engine's, position included."""

    def __init__(self, message: str, field: str | None = "grammar") -> None:
        super().__init__(message, field)


class GrammarTooLarge(GrammarError):
    """A grammar over one of the limits; the message names the limit and its value."""


class _Limits:
    max_source_bytes = MAX_SOURCE_BYTES
    max_choices = MAX_CHOICES


@dataclass(frozen=True)
class GrammarSpec:
    """What a process may emit. source is the schema, regex or grammar text, or the choices.

    A json_schema source may be given as a dict; it is kept as JSON text (key order kept: it is
    the order the properties are generated in). JSON is compact (no whitespace between tokens)
    unless flexible_whitespace is set.
    """

    kind: GrammarKind
    source: Union[str, tuple[str, ...]] = ""
    flexible_whitespace: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.source, dict):
            object.__setattr__(self, "source", json.dumps(self.source))
        elif isinstance(self.source, list):
            object.__setattr__(self, "source", tuple(self.source))

    @property
    def size(self) -> int:
        """Bytes of source, the choices counted with their separators."""
        if isinstance(self.source, tuple):
            return sum(len(c.encode()) + 1 for c in self.source)
        return len(self.source.encode())

    def check(self, limits=_Limits) -> None:
        """Raise GrammarError for a malformed spec, GrammarTooLarge for one over the size limits."""
        if self.kind not in KINDS:
            raise GrammarError(f"unknown grammar kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        if self.kind == "choice":
            if not isinstance(self.source, tuple) or not all(isinstance(c, str) for c in self.source):
                raise GrammarError("a choice grammar's source is a list of strings")
            if not self.source:
                raise GrammarError("a choice grammar needs at least one choice")
            if len(self.source) > limits.max_choices:
                raise GrammarTooLarge(f"{len(self.source)} choices is over the limit max_choices={limits.max_choices}")
        elif not isinstance(self.source, str):
            raise GrammarError(f"a {self.kind} grammar's source is a string")
        elif self.kind != "json_object" and not self.source.strip():
            raise GrammarError(f"a {self.kind} grammar's source is empty")
        if self.size > limits.max_source_bytes:
            raise GrammarTooLarge(f"grammar source of {self.size} bytes is over the limit "
                                  f"max_source_bytes={limits.max_source_bytes}")
