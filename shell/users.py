"""The shell's user commands: `whoami`, and `token create|list|revoke` (admin only).

    llmos whoami [--json]
    llmos token create NAME [--user U] [--admin]    prints the token once: keep it
    llmos token list [--json]
    llmos token revoke NAME|ID
"""
from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from rich.table import Table

from llmos.syscalls.v1 import syscalls_pb2 as pb

if TYPE_CHECKING:
    from llmos.shell.commands import Shell


def add_parsers(sub: argparse._SubParsersAction, parser_class: type) -> None:
    """The user commands' subparsers, under the shell's."""
    p = sub.add_parser("whoami", help="who the daemon takes you for, and your quota")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("token", help="bearer tokens for TCP clients (admin only)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=parser_class, required=True)
    c = actions.add_parser("create", help="create a token; it is printed once, keep it")
    c.add_argument("name")
    c.add_argument("--user", default="", help="whose processes its calls own (default: NAME)")
    c.add_argument("--admin", action="store_true", help="the token sees and controls everything")
    c = actions.add_parser("list", help="the live tokens (never their secrets)")
    c.add_argument("--json", action="store_true")
    c = actions.add_parser("revoke", help="revoke a token at once")
    c.add_argument("which", metavar="NAME|ID", help="the token's name or id")


def _limit(used: int, limits: pb.Quota, field: str) -> str:
    return f"{used} of {getattr(limits, field)}" if limits.HasField(field) else f"{used} (unlimited)"


def whoami(sh: "Shell", a: argparse.Namespace) -> int:
    me = sh.c.whoami()
    if a.json:
        sh.json(me)
        return 0
    how = f"uid {me.uid}" if me.HasField("uid") else f"token {me.token}"
    sh.out.write(f"{me.user}{' (admin)' if me.admin else ''} via {how}\n"
                 f"processes {_limit(me.used.procs, me.limits, 'procs')}, "
                 f"KV pages {_limit(me.used.pages, me.limits, 'pages')}, "
                 f"tokens this minute {_limit(me.used.tokens_per_min, me.limits, 'tokens_per_min')}\n")
    return 0


def _table(tokens: list[pb.TokenInfo]) -> Table:
    t = Table(box=None, header_style="bold")
    for col in ("ID", "NAME", "USER", "ADMIN", "CREATED"):
        t.add_column(col)
    for tok in tokens:
        t.add_row(tok.id, tok.name, tok.user, "yes" if tok.admin else "",
                  time.strftime("%Y-%m-%d %H:%M", time.localtime(tok.created)))
    return t


def token(sh: "Shell", a: argparse.Namespace) -> int:
    if a.action == "create":
        info, secret = sh.c.create_token(a.name, user=a.user, admin=a.admin)
        sh.out.write(secret + "\n")
        if sh.tty:
            sh.say(f"token {info.name} (id {info.id}) for user {info.user}{', admin' if info.admin else ''}: "
                   "it is shown only this once")
    elif a.action == "list":
        tokens = sh.c.tokens()
        sh.json(tokens) if a.json else sh.console.print(_table(tokens))
    else:
        info = sh.c.revoke_token(a.which)
        if sh.tty:
            sh.say(f"revoked token {info.name} (id {info.id})")
    return 0


COMMANDS = {"whoami": whoami, "token": token}
