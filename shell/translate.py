"""`llmos translate`: a text into another language, through a model's chat template.

    llmos translate MODEL TEXT --to fr [--from en] [--max-tokens N]

Prints the translation alone (syscalls/sdk/translate.py has the instruction it sends).
TEXT "-" reads the text from stdin.
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmos.shell.commands import Shell


def add_parsers(sub: argparse._SubParsersAction, parser_class: type) -> None:
    """The translate command's subparser, under the shell's."""
    p = sub.add_parser("translate", help="translate a text with a chat model")
    p.add_argument("model")
    p.add_argument("text", help='the text; "-" reads it from stdin')
    p.add_argument("--to", required=True, metavar="LANG", help="the target language, an ISO 639-1 code (fr, de, ja)")
    p.add_argument("--from", dest="source", default=None, metavar="LANG", help="the source language (default: any)")
    p.add_argument("--max-tokens", "-n", type=int, default=256)
    p.add_argument("--json", action="store_true")


def translate(sh: "Shell", a: argparse.Namespace) -> int:
    text = sys.stdin.read() if a.text == "-" else a.text
    out = sh.c.translate(a.model, text, a.to, a.source, max_tokens=a.max_tokens)
    if a.json:
        sh.json({"model": a.model, "to": a.to, "from": a.source, "translation": out})
    else:
        sh.out.write(out + "\n")
    return 0


COMMANDS = {"translate": translate}
