"""Evaluation data: the documents perplexity is measured on, and the prompt/reference items
BLEU and ROUGE compare a model's outputs with.

Reading and its errors are kernel/workloads/dataset.py's: an empty, unreadable or non-UTF-8 file is
refused before anything runs, and every bad JSONL line is named with its number and reason.

- perplexity: a plain text file is one document, scored as it is; a JSONL file
  (`.jsonl`/`.json`) holds `{"text": ...}` documents, each scored on its own.
- bleu/rouge: a JSONL file of items, one per line, each one of
  `{"prompt": "...", "reference": "..."}` (a raw completion of the prompt),
  `{"messages": [...], "reference": "..."}` (a chat answer to the messages), or
  `{"messages": [..., {"role": "assistant", "content": REF}]}` (the training format: the
  last assistant reply is the reference, the messages before it the prompt).
"""
from __future__ import annotations

from dataclasses import dataclass

from llmos.kernel.workloads import dataset
from llmos.kernel.workloads.dataset import DatasetError


@dataclass(frozen=True)
class Item:
    """One generation item: exactly one of prompt or messages, and the reference answer."""

    line: int
    reference: str
    prompt: str | None = None
    messages: tuple[dict, ...] | None = None


def documents(name: str, data: bytes) -> list[str]:
    """The texts perplexity is measured on."""
    if not dataset.is_jsonl(name):
        text = dataset.decode(name, data)
        if not text.strip():
            raise DatasetError(name, ["the file is empty: no text to score"])
        return [text]
    records = dataset.parse(name, data)
    bad = [f"line {r.line}: perplexity needs a 'text' field" for r in records if r.text is None]
    if bad:
        raise DatasetError(name, bad)
    return [r.text for r in records if r.text is not None]


def items(name: str, data: bytes) -> list[Item]:
    """The prompt/reference items of a JSONL file; DatasetError names every bad line."""
    if not dataset.is_jsonl(name):
        raise DatasetError(name, ["bleu and rouge need a JSONL file (.jsonl) of prompt/reference items"])
    out, problems = dataset.parse_jsonl(dataset.decode(name, data), _item)
    if problems:
        raise DatasetError(name, problems)
    if not out:
        raise DatasetError(name, ["the file is empty: no items to evaluate"])
    return out


def _item(i: int, line: str) -> Item:
    obj = dataset.json_object(line)
    if ("prompt" in obj) == ("messages" in obj):
        raise ValueError("give exactly one of 'prompt' or 'messages'")
    ref = obj.get("reference")
    if "reference" in obj and not isinstance(ref, str):
        raise ValueError("'reference' must be a string")
    if "prompt" in obj:
        if not isinstance(obj["prompt"], str) or not obj["prompt"]:
            raise ValueError("'prompt' must be a non-empty string")
        if ref is None:
            raise ValueError("no 'reference' field")
        return Item(i, ref, prompt=obj["prompt"])
    msgs = _messages(obj["messages"])
    if ref is None:
        if msgs[-1]["role"] != "assistant" or len(msgs) < 2:
            raise ValueError("no 'reference' field, and 'messages' does not end with an assistant reply to use")
        ref, msgs = msgs[-1]["content"], msgs[:-1]
    return Item(i, ref, messages=msgs)


def _messages(msgs: object) -> tuple[dict, ...]:
    if not isinstance(msgs, list) or not msgs:
        raise ValueError("'messages' must be a non-empty list")
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in dataset.ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"message {j} needs a role ({', '.join(dataset.ROLES)}) and string content")
    return tuple({"role": m["role"], "content": m["content"]} for m in msgs)
