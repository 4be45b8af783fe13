"""The interactive shell: prompt_toolkit with history in the state dir and completion of
commands, model names and pids. `run A ... | run B ...` pipes A's output into B."""
from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Iterable

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory, InMemoryHistory

from llmos.syscalls.sdk.paths import default_state_dir
from llmos.shell.cli import UsageError, build_parser
from llmos.shell.commands import COMMANDS, Shell, chat, spawn_run
from llmos.syscalls.sdk import Client
from llmos.syscalls.sdk import DaemonNotRunning, SyscallError

BUILTINS = ("help", "exit", "quit")
MODEL_ARG = ("run", "chat", "unload", "load", "eval", "train", "translate")
PID_ARG = ("kill", "stop", "cont", "fork", "wait", "attach")


class ShellCompleter(Completer):
    """Completes the command, then a model name or a pid, asking the daemon as needed."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def get_completions(self, document: Document, event: CompleteEvent) -> Iterable[Completion]:
        text = document.text_before_cursor
        words = text.split()
        current = "" if not words or text.endswith(" ") else words[-1]
        position = len(words) - (0 if current == "" else 1)
        if position == 0 or (words and words[-1] == "|" and current == ""):
            options = [*COMMANDS, *BUILTINS]
        elif position == 1 and words[0] in MODEL_ARG:
            options = self._models()
        elif position == 1 and words[0] in PID_ARG:
            options = self._pids()
        else:
            return
        for opt in sorted(options):
            if opt.startswith(current):
                yield Completion(opt, start_position=-len(current))

    def _models(self) -> list[str]:
        try:
            resp = self.client.models()
        except SyscallError:
            return []
        return sorted({m.name for m in resp.loaded} | set(resp.stored))

    def _pids(self) -> list[str]:
        try:
            return [str(p.pid) for p in self.client.ps(live_only=True)]
        except SyscallError:
            return []


def split(line: str) -> list[list[str]]:
    """Words of a line, grouped by `|`."""
    lex = shlex.shlex(line, posix=True, punctuation_chars="|")
    lex.whitespace_split = True
    groups: list[list[str]] = [[]]
    for word in lex:
        if word == "|":
            groups.append([])
        else:
            groups[-1].append(word)
    return groups


def pipe(sh: Shell, first: argparse.Namespace, second: argparse.Namespace) -> int:
    """`run A | run B`: B's prompt is its instruction (the system message), and A's output
    is its input (the first user turn)."""
    if first.cmd != "run" or second.cmd != "run":
        raise UsageError("only `run ... | run ...` can be piped")
    a = spawn_run(sh, first)
    b = spawn_run(sh, second, reads_stdin=True)
    try:
        offset = sh.c.pipe(a, b)
        return sh.stream(b, offset, until="turn")
    finally:
        for pid in (a, b):
            sh.c.kill(pid)


def run_line(sh: Shell, parser: argparse.ArgumentParser, line: str, read_line=input) -> int | None:
    """Run one line of input; None means the shell should exit."""
    try:
        groups = split(line)
    except ValueError as e:
        raise UsageError(f"cannot parse the line: {e}") from None
    words = groups[0]
    if len(groups) == 1 and not words:
        return 0
    if len(groups) == 1 and words[0] in ("exit", "quit"):
        return None
    if len(groups) == 1 and words[0] == "help":
        parser.print_help()
        return 0
    if len(groups) > 2 or any(not g for g in groups):
        raise UsageError("a pipe joins exactly two commands: run ... | run ...")
    parsed = [parser.parse_args(g) for g in groups]
    if len(parsed) == 2:
        return pipe(sh, *parsed)
    if parsed[0].cmd == "chat":
        return chat(sh, parsed[0], read_line=read_line)
    return COMMANDS[parsed[0].cmd](sh, parsed[0])


def repl(client: Client) -> int:
    """Read-eval-print until exit or Ctrl-D."""
    state = default_state_dir()
    try:
        state.mkdir(parents=True, exist_ok=True)
        history = FileHistory(str(state / "history"))
    except OSError:
        history = InMemoryHistory()
    client.models()  # fail now, with how to start a daemon, if none is running
    session: PromptSession = PromptSession(history=history, completer=ShellCompleter(client),
                                           complete_while_typing=False)
    sh, parser = Shell(client), build_parser()
    print(f"llmos shell on {client.target}. Type `help` for commands, `exit` or Ctrl-D to leave.")
    ask = PromptSession()
    while True:
        try:
            line = session.prompt("llmos> ")
        except KeyboardInterrupt:
            continue
        except EOFError:
            return 0
        try:
            if run_line(sh, parser, line, read_line=lambda p: ask.prompt(p)) is None:
                return 0
        except DaemonNotRunning as e:
            print(f"llmos: {e}", file=sys.stderr)
        except (UsageError, SyscallError) as e:
            print(f"error: {e}", file=sys.stderr)
        except KeyboardInterrupt:
            print("[interrupted]", file=sys.stderr)
        except SystemExit:  # --help
            pass
