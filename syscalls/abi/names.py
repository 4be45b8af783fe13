"""One grammar for every name a client gives: models, adapters, tags and token names.

A name is 1 to 128 ASCII letters, digits and `-_.+:`, beginning with a letter or a digit,
with no `..` anywhere. No name can then be a path, climb out of a directory, hide as a dot
file, pass for an option, or look like another name in a different script.
"""
from __future__ import annotations

import re

MAX_NAME = 128
RULE = (f"1 to {MAX_NAME} ASCII letters, digits and '-_.+:', beginning with a letter or a digit, "
        "with no '..'")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+:-]{0,%d}" % (MAX_NAME - 1))


class BadName(ValueError):
    """A name outside the grammar; the message quotes the rule."""


def check_name(kind: str, value: str) -> str:
    """`value` if it is a valid name; otherwise BadName naming `kind` and the rule."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        shown = value if isinstance(value, str) else type(value).__name__
        raise BadName(f"{kind} {shown[:160]!r} is not a valid name: use {RULE}")
    return value


def is_name(value: str) -> bool:
    return isinstance(value, str) and bool(_NAME.fullmatch(value)) and ".." not in value
