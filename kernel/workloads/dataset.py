"""Datasets for training and evaluation processes: read, validate, tokenize, order.

Two file kinds:
- JSONL (`.jsonl`, `.json`): one JSON object per line, either `{"text": "..."}` or
  `{"messages": [{"role": ..., "content": ...}, ...]}` (chat, ending with an assistant turn
  or at least holding one). Blank lines are allowed and skipped.
- plain text (anything else): paragraphs separated by blank lines, each a `text` record.

Data arrives as bytes with a name (the client's file name: its suffix picks the kind):
clients send it in the request, and only an admin may have llmosd read a file of its own,
inside the directories its configuration names (`read_server_file`). `parse(name, data)`
validates without a tokenizer (pure Python) and raises one `DatasetError` that lists every
bad line with its number and reason; nothing is dropped silently. An empty file is refused
the same way. `encode(records, codec, max_len)` turns
records into token `Example`s; `Order` gives the deterministic example order of every
optimizer step, so a resumed run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from llmos.kernel.errors import InvalidArgument, PermissionDenied

T = TypeVar("T")

if TYPE_CHECKING:
    from llmos.kernel.text import TextCodec
    from llmos.kernel.users.cred import Cred

ROLES = ("system", "user", "assistant", "tool")
MAX_SHOWN = 50  # bad lines spelled out in an error message; DatasetError.problems holds them all
MAX_BYTES = 1 << 30


class DatasetError(InvalidArgument):
    """A dataset that cannot be used: every problem, one per bad line, in `problems`."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path, self.problems = path, problems
        shown = "; ".join(problems[:MAX_SHOWN])
        more = f"; and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
        n = len(problems)
        super().__init__(f"dataset {path}: {n} problem{'s' if n != 1 else ''}: {shown}{more}")


@dataclass(frozen=True)
class Record:
    """One validated item of a dataset: exactly one of `text` or `messages`; `line` is 1-based."""

    line: int
    text: str | None = None
    messages: tuple[dict, ...] | None = None


@dataclass(frozen=True)
class Example:
    """Token ids of one training sequence; the loss counts the tokens at index >= loss_from
    (the reply of a chat record, all of a text record)."""

    tokens: tuple[int, ...]
    loss_from: int
    line: int


def parse(name: str, data: bytes) -> list[Record]:
    """Validate a dataset; raise DatasetError naming every bad line."""
    text = decode(name, data)
    if is_jsonl(name):
        records, problems = parse_jsonl(text, _parse_line)
    else:
        records, problems = _parse_plain(text), []
    if problems:
        raise DatasetError(name, problems)
    if not records:
        raise DatasetError(name, ["the dataset is empty: no records to learn from"])
    return records


def is_jsonl(name: str) -> bool:
    return Path(name).suffix.lower() in (".jsonl", ".json")


def decode(name: str, data: bytes) -> str:
    if len(data) > MAX_BYTES:
        raise DatasetError(name, [f"the data is {len(data)} bytes, over the {MAX_BYTES}-byte limit"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DatasetError(name, [f"line {line}: not UTF-8 (byte {data[e.start]:#x} at offset {e.start})"]) from None


def read_server_file(cred: "Cred", path: str, dirs: Sequence[str | Path]) -> tuple[str, bytes]:
    """(name, bytes) of a file on the daemon's own disk: only for an admin, and only inside
    `dirs` (the configuration's data_dirs), symbolic links resolved first."""
    cred.check("paths")
    if not dirs:
        raise PermissionDenied("this llmosd reads no data from its own disk (no data_dirs are configured); "
                               "send the data in the request, as the shell and the SDK do")
    p = Path(path).resolve()
    roots = [Path(d).expanduser().resolve() for d in dirs]
    if not any(p.is_relative_to(r) for r in roots):
        raise PermissionDenied(f"{path} is outside the directories llmosd reads data from: "
                               f"{', '.join(map(str, roots))}")
    try:
        if not p.is_file():
            raise DatasetError(str(path), ["no such file" if not p.exists() else "not a regular file"])
        if p.stat().st_size > MAX_BYTES:
            raise DatasetError(str(path), [f"the file is {p.stat().st_size} bytes, over the {MAX_BYTES}-byte limit"])
        return p.name, p.read_bytes()
    except OSError as e:
        raise DatasetError(str(path), [f"unreadable: {e.strerror or e}"]) from None


def _parse_plain(text: str) -> list[Record]:
    records, buf, start = [], [], 0
    for i, line in enumerate(text.splitlines() + [""], start=1):
        if line.strip():
            start = start or i
            buf.append(line)
        elif buf:
            records.append(Record(start, text="\n".join(buf)))
            buf, start = [], 0
    return records


def parse_jsonl(text: str, parse: Callable[[int, str], T]) -> tuple[list[T], list[str]]:
    """Every non-blank line through `parse(number, line)`; its ValueErrors become
    "line N: reason" problems, all of them, so nothing is silently dropped."""
    records: list[T] = []
    problems: list[str] = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(parse(i, line))
        except ValueError as e:
            problems.append(f"line {i}: {e}")
    return records, problems


def json_object(line: str) -> dict:
    """One JSONL line as a dict; ValueError says what is wrong with it."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _parse_line(i: int, line: str) -> Record:
    obj = json_object(line)
    has_m, has_t = "messages" in obj, "text" in obj
    if has_m and has_t:
        raise ValueError("has both 'messages' and 'text'; give one")
    if has_t:
        if not isinstance(obj["text"], str) or not obj["text"].strip():
            raise ValueError("'text' must be a non-empty string")
        return Record(i, text=obj["text"])
    if has_m:
        return Record(i, messages=_check_messages(obj["messages"]))
    raise ValueError("no 'messages' or 'text' field")


def _check_messages(msgs: object) -> tuple[dict, ...]:
    if not isinstance(msgs, list) or not msgs:
        raise ValueError("'messages' must be a non-empty list")
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"message {j} needs a role ({', '.join(ROLES)}) and string content")
    if not any(m["role"] == "assistant" for m in msgs):
        raise ValueError("'messages' has no assistant message to learn from")
    return tuple({"role": m["role"], "content": m["content"]} for m in msgs)


def encode(records: list[Record], codec: "TextCodec", max_len: int, path: str = "dataset") -> list[Example]:
    """Tokenize records. A chat record becomes its prompt (rendered as a spawn with the same
    messages would render it) plus the last assistant reply and end-of-turn; the loss covers
    the reply. Text longer than max_len is cut into consecutive chunks; a chat record longer
    than max_len is an error (its reply cannot be cut from its prompt)."""
    examples: list[Example] = []
    problems: list[str] = []
    for r in records:
        if r.text is not None:
            ids = codec.encode(r.text)
            # Chunks overlap by one token, so every token but the first is a target exactly once.
            examples += [Example(tuple(ids[k:k + max_len]), 0, r.line)
                         for k in range(0, max(len(ids) - 1, 1), max_len - 1) if len(ids) >= 2]
            continue
        msgs = list(r.messages or ())
        last = max(j for j, m in enumerate(msgs) if m["role"] == "assistant")
        prompt = codec.encode_chat(msgs[:last]) if last else []
        eot = codec.tokenizer.eos_token_id
        reply = codec.encode_more(msgs[last]["content"]) + ([eot] if eot is not None else [])
        ids = prompt + reply
        if len(ids) > max_len:
            problems.append(f"line {r.line}: {len(ids)} tokens, over the {max_len}-token limit")
        else:
            examples.append(Example(tuple(ids), max(len(prompt), 1), r.line))
    if problems:
        raise DatasetError(path, problems)
    if not examples:
        raise DatasetError(path, ["no record is at least 2 tokens long: nothing to learn from"])
    return examples


class Order:
    """Which examples each optimizer step trains on: a fresh seeded shuffle every epoch.

    A pure function of (seed, step), so a run resumed at step k sees the same batches as
    one that never stopped."""

    def __init__(self, n: int, seed: int = 0) -> None:
        if n <= 0:
            raise InvalidArgument("a dataset order needs at least one example")
        self.n, self.seed = n, seed
        self._perms: dict[int, list[int]] = {}

    def batch(self, step: int, size: int) -> list[int]:
        """Example indices of optimizer step `step` (0-based), `size` of them."""
        return [self._at(k) for k in range(step * size, (step + 1) * size)]

    def _at(self, k: int) -> int:
        epoch, i = divmod(k, self.n)
        if epoch not in self._perms:
            perm = list(range(self.n))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(perm)
            self._perms = {epoch: perm}  # only the current epoch is kept
        return self._perms[epoch][i]


def stem(name: str | Path) -> str:
    """The data's short name, to name the adapter model (`base+stem`): its file name without
    the suffix, with what a model name may not hold (kernel names) made '-'."""
    name = Path(name).name
    for suffix in (".jsonl", ".json", ".txt", ".md"):
        if name.lower().endswith(suffix):
            name = name[:-len(suffix)] or name
            break
    else:
        name = Path(name).stem or name
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", name).strip(".-").replace("..", ".") or "data"
