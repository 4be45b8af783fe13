"""The shell's `usage` command: what work cost, per user, model and hour (the Usage syscall).

    llmos usage [--user U] [--model M] [--since 24h|7d|2026-12-01] [--by hour|day|model|user] [--json]

A user sees only their own usage; an admin everyone's (or --user's). Times are UTC.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.table import Table

from llmos.syscalls.v1 import syscalls_pb2 as pb

if TYPE_CHECKING:
    from llmos.shell.commands import Shell

BY = ("hour", "day", "model", "user")
NUMBERS = ("PROMPT", "GEN", "STEP S", "TASK S", "PROCS")


def add_parsers(sub: argparse._SubParsersAction, parser_class: type) -> None:
    """The usage command's subparser, under the shell's."""
    p = sub.add_parser("usage", help="tokens, device seconds and processes per user, model and hour")
    p.add_argument("--user", default="", help="whose usage (only an admin may name another user; "
                                              "default: yours, an admin's: everyone's)")
    p.add_argument("--model", default="", help="one model's usage")
    p.add_argument("--since", default="", help="from an ISO date or date-time (UTC) or a time ago: 24h, 7d")
    p.add_argument("--by", default="hour", choices=BY, help="a row per user, model and hour (default) or day; "
                                                            "or per model; or per user")
    p.add_argument("--json", action="store_true")


def _period(start: float, by: str) -> str:
    shape = "%Y-%m-%d" if by == "day" else "%Y-%m-%d %H:00"
    return ("since " if by in ("model", "user") else "") + time.strftime(shape, time.gmtime(start))


def usage_table(rows: Sequence[pb.UsageRow], by: str) -> Table:
    t = Table(box=None, header_style="bold")
    for col in ("PERIOD (UTC)", "USER", "MODEL", *NUMBERS):
        t.add_column(col, justify="right" if col in NUMBERS else "left")
    for r in rows:
        t.add_row(_period(r.period_start, by), r.user or "*", r.model or "*", str(r.prompt_tokens),
                  str(r.generated_tokens), f"{r.step_seconds:.3f}", f"{r.task_seconds:.3f}", str(r.processes))
    if len(rows) > 1:
        t.add_row("total", "", "", str(sum(r.prompt_tokens for r in rows)), str(sum(r.generated_tokens for r in rows)),
                  f"{sum(r.step_seconds for r in rows):.3f}", f"{sum(r.task_seconds for r in rows):.3f}",
                  str(sum(r.processes for r in rows)), style="bold")
    return t


def usage(sh: "Shell", a: argparse.Namespace) -> int:
    rows = sh.c.usage(user=a.user, model=a.model, since=a.since, by=a.by)
    if a.json:
        sh.json(rows)
    elif not rows:
        sh.say("no usage recorded" + (" in that range" if a.since or a.user or a.model else ""))
    else:
        sh.console.print(usage_table(rows, a.by))
    return 0


COMMANDS = {"usage": usage}
