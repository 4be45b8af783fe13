"""`llmos`: the shell. With no command it opens the REPL; otherwise it runs one command.

    llmos run MODEL PROMPT [--max-tokens N] [--temperature T] [--json]
    llmos chat MODEL        llmos ps [--json]     llmos top       llmos kill PID [-s SIG]
    llmos renice NICE PID
    llmos stop|cont|fork|wait|attach PID          llmos free|lsdev|models [--json]
    llmos load MODEL        llmos unload MODEL    llmos dmesg
    llmos eval MODEL DATA --metric ppl|bleu|rouge [--json]
    llmos train MODEL DATA [--steps N] [--lr X] [--rank R] [--batch B] [--priority P] [--resume]
    llmos translate MODEL TEXT --to fr [--from en]
    llmos usage [--user U] [--model M] [--since 24h] [--by hour|day|model|user] [--json]
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from llmos.shell import evaluate, train, translate, usage, users, versions
from llmos.syscalls.sdk import DaemonNotRunning, SyscallError


class UsageError(Exception):
    """Bad command-line input; the message is one line."""


class Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", "-n", type=int, default=None, help="most new tokens (per turn)")
    p.add_argument("--temperature", "-t", type=float, default=None, help="0 = greedy (the default)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", metavar="TEXT", help="stop string (repeatable)")
    p.add_argument("--nice", type=int, default=0, help="priority, -20 (first) .. 19")
    p.add_argument("--max-pages", type=int, default=None, help="KV page limit")
    p.add_argument("--max-wall", type=float, default=None, metavar="SECONDS", help="wall-time limit")
    p.add_argument("--ignore-eos", action="store_true", help="go on past the end-of-sequence token")


def build_parser() -> Parser:
    ap = Parser(prog="llmos", description="The llmos shell. With no command, an interactive prompt.")
    ap.add_argument("--socket", "-S", default=None, help="daemon address: a unix socket path or HOST:PORT "
                                                           "(default $LLMOS_SOCKET, else the default socket)")
    ap.add_argument("--token", default=None, help="bearer token for a daemon over TCP (default $LLMOS_TOKEN)")
    ap.add_argument("--ca", default=None, metavar="FILE", help="CA certificate for a daemon over TLS "
                                                          "(default $LLMOS_TLS_CA)")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("run", help="run a prompt and stream its output")
    p.add_argument("model")
    p.add_argument("prompt")
    _sampling_flags(p)
    p.add_argument("--chat", action="store_true", help="send the prompt as a user message (chat template)")
    p.add_argument("--json", action="store_true", help="print the result as JSON at the end")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json-schema", metavar="FILE", help="the output is JSON valid against this JSON Schema file")
    g.add_argument("--regex", metavar="RE", help="the output matches this regular expression")
    g.add_argument("--choice", metavar="A,B,C", help="the output is one of these")

    p = sub.add_parser("chat", help="an interactive multi-turn conversation")
    p.add_argument("model")
    p.add_argument("--system", default=None, help="system prompt")
    _sampling_flags(p)

    for name, text in (("ps", "the process table"), ("free", "KV memory"), ("lsdev", "devices"),
                       ("models", "loaded and stored models")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--json", action="store_true")
        if name in ("ps", "free"):
            p.add_argument("--model", default=None)
        if name == "ps":
            p.add_argument("--live", action="store_true", help="leave out exited and killed processes")

    p = sub.add_parser("top", help="a live view of tokens/s, queue, processes, memory and devices")
    p.add_argument("--delay", "-d", type=float, default=1.0, help="seconds between frames")
    p.add_argument("--iterations", "-i", "-n", type=int, default=0, help="frames to show (0 = until Ctrl-C)")
    p.add_argument("--once", action="store_true", help="one frame, then exit (as -n 1)")

    p = sub.add_parser("kill", help="send a signal (default TERM: end cleanly)")
    p.add_argument("pid", type=int)
    p.add_argument("-s", "--signal", default="TERM", help="TERM, KILL, STOP or CONT")
    p = sub.add_parser("migrate", help="move a live process to another device (llmosd --device cpu:0,cpu:1)")
    p.add_argument("pid", type=int)
    p.add_argument("--to", required=True, metavar="DEVICE", help="a device (cpu:1, cuda:0) or a node (node-1a2b3c4d)")
    p.add_argument("--by", default="", choices=["", "pages", "tokens"],
                   help="move its KV pages, or its tokens for the target to recompute (default: the cheaper)")
    p = sub.add_parser("drain", help="move every process off a device and place nothing new there")
    p.add_argument("device")
    p.add_argument("--undo", action="store_true", help="place new processes there again")
    p = sub.add_parser("renice", help="set a process's nice value (only an admin may go below 0)")
    p.add_argument("priority", type=int, help="-20 (first) .. 19")
    p.add_argument("pid", type=int)
    for name, text in (("stop", "pause a process (SIGSTOP)"), ("cont", "resume a stopped process"),
                       ("wait", "wait for a process to end and print its output"),
                       ("attach", "stream a process's output (Ctrl-C detaches)"), ("fork", "fork a process")):
        p = sub.add_parser(name, help=text)
        p.add_argument("pid", type=int)
        if name == "fork":
            p.add_argument("--text", default=None, help="extra input for the child")
            p.add_argument("--max-tokens", type=int, default=None)
        if name == "wait":
            p.add_argument("--json", action="store_true")
        if name == "attach":
            p.add_argument("--offset", type=int, default=0)

    p = sub.add_parser("load", help="load a model")
    p.add_argument("model", help="a built-in name, a directory, a .gguf file or a hub id")
    p.add_argument("--name", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--quantize", default=None, metavar="MODE",
                   help="none, int8 or int4: a quantized copy, served as MODEL:MODE")
    p.add_argument("--prune", type=float, default=0.0, metavar="FRACTION",
                   help="remove this fraction of every MLP's channels (0..0.9), served as MODEL-prunedFRACTION")
    p.add_argument("--prune-heads", type=float, default=0.0, metavar="FRACTION",
                   help="remove this fraction of the attention heads too")
    p.add_argument("--replicas", type=int, default=0, metavar="N",
                   help="copies on N devices (llmosd --device cpu:0,cpu:1): spawns go to the cheapest")
    p.add_argument("--devices", default="", metavar="LIST", help="copies on these devices, e.g. cpu:0,cpu:1")
    p = sub.add_parser("unload", help="unload a model")
    p.add_argument("name")
    p = sub.add_parser("dmesg", help="the kernel log")
    p.add_argument("-n", "--lines", type=int, default=0, help="the last N lines")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("shutdown", help="stop the daemon")
    p.add_argument("--grace", type=float, default=None)
    users.add_parsers(sub, Parser)
    usage.add_parsers(sub, Parser)
    evaluate.add_parsers(sub, Parser)
    train.add_parsers(sub, Parser)
    translate.add_parsers(sub, Parser)
    versions.add_parsers(sub, Parser)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `llmos`."""
    from llmos.shell.commands import COMMANDS, Shell
    from llmos.syscalls.sdk import Client

    ap = build_parser()
    try:
        args = ap.parse_args(argv)
    except UsageError as e:
        print(f"llmos: error: {e}", file=sys.stderr)
        return 2
    try:
        client = Client(args.socket, token=args.token, ca=args.ca)
    except SyscallError as e:
        print(f"llmos: error: {e}", file=sys.stderr)
        return 2
    try:
        if args.cmd is None:
            from llmos.shell.repl import repl
            return repl(client)
        return COMMANDS[args.cmd](Shell(client), args)
    except DaemonNotRunning as e:
        print(f"llmos: {e}", file=sys.stderr)
        return 3
    except SyscallError as e:
        print(f"llmos: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (e.g. `| head`); nothing left to say
        return 0
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
