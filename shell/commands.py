"""The shell's commands, shared by one-shot `llmos CMD` and the REPL. Each takes the Shell
and its parsed arguments and returns an exit status."""
from __future__ import annotations

import argparse
import json
import signal as signals  # (this module's `signal` is the kill/stop/cont command maker)
import sys
from collections.abc import Callable
from typing import TextIO

from rich.console import Console

from llmos.shell import evaluate, render, top, train, translate, usage, users, versions
from llmos.shell.interrupt import interruptible
from llmos.syscalls.sdk import SyscallError
from llmos.syscalls.sdk import Client


class Shell:
    """What a command needs: the client and where to write."""

    def __init__(self, client: Client, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.c = client
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        # Piped output has no terminal width to fit; rich would squeeze tables into 80 columns.
        self.console = Console(file=self.out, highlight=False, soft_wrap=False,
                               width=None if self.out.isatty() else 200)

    @property
    def tty(self) -> bool:
        return self.out.isatty()

    def say(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()

    def stream(self, pid: int, offset: int = 0, until: str = "exit", on_interrupt: str | None = "TERM",
               held: "HeldInterrupt | None" = None) -> int:
        """Print a process's output as it comes. Ctrl-C sends it `on_interrupt` (None: just detach).
        A `held` Ctrl-C (see `run`) is released inside, where it is handled like any other."""
        state, reason, last = "", "", ""
        try:
            if held is not None:
                held.release()
            for ch in interruptible(self.c.read(pid, offset, until)):
                if ch.text:
                    self.out.write(ch.text)
                    self.out.flush()
                    last = ch.text
                state, reason = ch.state, ch.reason
        except KeyboardInterrupt:
            if on_interrupt:
                self.c.kill(pid, on_interrupt)
            self._newline(last)
            self.say(f"[pid {pid} {'sent ' + on_interrupt if on_interrupt else 'detached'}]")
            return 130
        self._newline(last)
        if state == "killed":
            self.say(f"llmos: pid {pid} was killed: {reason}")
            return 1
        return 0

    def _newline(self, last: str) -> None:
        if self.tty and last and not last.endswith("\n"):
            self.out.write("\n")
            self.out.flush()

    def json(self, obj) -> None:
        self.out.write(render.to_json(obj) + "\n")


def _sampling(a: argparse.Namespace) -> dict:
    return dict(max_tokens=a.max_tokens, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, seed=a.seed,
                stop=a.stop or (), priority=a.nice, max_pages=a.max_pages, max_wall_s=a.max_wall,
                ignore_eos=a.ignore_eos)


def _grammar(a: argparse.Namespace) -> dict:
    """--json-schema FILE, --regex RE or --choice A,B,C as spawn's keyword."""
    if getattr(a, "json_schema", None):
        try:
            with open(a.json_schema) as f:
                return {"json_schema": json.load(f)}
        except (OSError, json.JSONDecodeError) as e:
            raise SyscallError("invalid_argument", f"--json-schema {a.json_schema}: {e}") from None
    if getattr(a, "regex", None):
        return {"regex": a.regex}
    if getattr(a, "choice", None):
        return {"choices": [c for c in a.choice.split(",") if c]}
    return {}


def spawn_run(sh: Shell, a: argparse.Namespace, interactive: bool = False, reads_stdin: bool = False) -> int:
    """Spawn the process that `run` describes. With reads_stdin its prompt becomes the system
    message and the process waits for its first user turn (the far end of a pipe)."""
    kw = {**_sampling(a), **_grammar(a)}
    if reads_stdin:
        return sh.c.spawn(a.model, messages=[{"role": "system", "content": a.prompt}], interactive=True, **kw)
    if a.chat or interactive:
        return sh.c.spawn(a.model, messages=[{"role": "user", "content": a.prompt}], interactive=interactive, **kw)
    return sh.c.spawn(a.model, a.prompt, **kw)


class HeldInterrupt:
    """Ctrl-C noted instead of raised, from creation until release(); a second one still raises.
    `llmos run` holds it over the Spawn call: raised inside the call, it would leave a process
    that nobody signals. release() restores the handler and raises a noted Ctrl-C there."""

    def __init__(self) -> None:
        self.seen = False
        self.old = signals.signal(signals.SIGINT, self._note)

    def _note(self, signum: int, frame: object) -> None:
        if self.seen:
            raise KeyboardInterrupt
        self.seen = True

    def release(self) -> None:
        signals.signal(signals.SIGINT, self.old)
        if self.seen:
            raise KeyboardInterrupt


def run(sh: Shell, a: argparse.Namespace) -> int:
    if not a.json:
        held = HeldInterrupt()
        try:
            pid = spawn_run(sh, a)
        except BaseException:
            signals.signal(signals.SIGINT, held.old)
            raise
        return sh.stream(pid, held=held)
    pid = spawn_run(sh, a)
    try:
        r = sh.c.wait(pid)
    except KeyboardInterrupt:
        sh.c.kill(pid)
        return 130
    sh.json({"pid": r.pid, "output": r.output, "state": r.state, "reason": r.reason, "proc": r.proc})
    return 0 if r.state == "exited" else 1


def chat(sh: Shell, a: argparse.Namespace, read_line: Callable[[str], str] = input) -> int:
    """A multi-turn conversation with one interactive process; Ctrl-D or /exit ends it."""
    pid, offset = 0, 0
    try:
        while True:
            try:
                line = read_line("you> ")
            except EOFError:
                break
            if line.strip() in ("/exit", "/quit"):
                break
            if not line.strip():
                continue
            if pid == 0:
                msgs = ([{"role": "system", "content": a.system}] if a.system else []) + \
                       [{"role": "user", "content": line}]
                pid = sh.c.spawn(a.model, messages=msgs, interactive=True, **_sampling(a))
            else:
                offset = sh.c.write(pid, line)
            code = sh.stream(pid, offset, until="turn")
            if not sh.tty:
                sh.out.write("\n")
            if code:
                return code
            if sh.c.stat(pid).state in ("exited", "killed"):
                sh.say(f"[pid {pid} ended: {sh.c.stat(pid).reason}]")
                return 0
    finally:
        if pid:
            sh.c.kill(pid)
    return 0


def ps(sh: Shell, a: argparse.Namespace) -> int:
    procs = sh.c.ps(model=a.model or "", live_only=a.live)
    sh.json(procs) if a.json else sh.console.print(render.ps_table(procs))
    return 0


def signal(sig: str | None) -> Callable[[Shell, argparse.Namespace], int]:
    def send(sh: Shell, a: argparse.Namespace) -> int:
        p = sh.c.kill(a.pid, sig or a.signal)
        if sh.tty:
            sh.say(f"pid {p.pid}: {p.state}")
        return 0
    return send


def migrate(sh: Shell, a: argparse.Namespace) -> int:
    r = sh.c.migrate(a.pid, a.to, a.by)
    what = "its KV pages moved" if r.how == "pages" else f"{r.proc.num_tokens} tokens to recompute there"
    sh.out.write(f"pid {r.proc.pid}: {r.source} -> {r.proc.device} ({what})\n")
    return 0


def drain(sh: Shell, a: argparse.Namespace) -> int:
    moved = sh.c.drain(a.device, a.undo)
    if a.undo:
        sh.out.write(f"{a.device}: open to new processes again\n")
    else:
        sh.out.write(f"{a.device}: drained, {len(moved)} process(es) moved\n"
                     + "".join(f"  pid {m.pid} -> {m.device}\n" for m in moved))
    return 0


def renice(sh: Shell, a: argparse.Namespace) -> int:
    p = sh.c.renice(a.pid, a.priority)
    if sh.tty:
        sh.say(f"pid {p.pid}: nice {p.priority}")
    return 0


def fork(sh: Shell, a: argparse.Namespace) -> int:
    sh.out.write(f"{sh.c.fork(a.pid, a.text, max_tokens=a.max_tokens)}\n")
    return 0


def wait(sh: Shell, a: argparse.Namespace) -> int:
    r = sh.c.wait(a.pid)
    if a.json:
        sh.json({"pid": r.pid, "output": r.output, "state": r.state, "reason": r.reason, "proc": r.proc})
    else:
        sh.out.write(r.output + ("\n" if sh.tty else ""))
        sh.say(f"[pid {r.pid} {r.state}: {r.reason}]")
    return 0 if r.state == "exited" else 1


def attach(sh: Shell, a: argparse.Namespace) -> int:
    return sh.stream(a.pid, a.offset, on_interrupt=None)


def free(sh: Shell, a: argparse.Namespace) -> int:
    pools = sh.c.meminfo(a.model or "")
    sh.json(pools) if a.json else sh.console.print(render.free_table(pools))
    return 0


def lsdev(sh: Shell, a: argparse.Namespace) -> int:
    devs = sh.c.devices()
    sh.json(devs) if a.json else sh.console.print(render.devices_table(devs))
    return 0


def models(sh: Shell, a: argparse.Namespace) -> int:
    resp = sh.c.models()
    sh.json(resp) if a.json else sh.console.print(render.models_table(resp))
    return 0


def load(sh: Shell, a: argparse.Namespace) -> int:
    m = sh.c.load(a.model, name=a.name or "", dtype=a.dtype or "", quantize=a.quantize or "", prune=a.prune,
                  prune_heads=a.prune_heads, replicas=a.replicas,
                  devices=[d for d in a.devices.split(",") if d.strip()])
    if m.base:
        sh.out.write(f"loaded {m.name} (LoRA rank {m.lora_rank} over {m.base}, {m.num_parameters / 1e6:.2f}M "
                     f"parameters; its processes share {m.base}'s {m.kv_pages} KV pages and batches)\n")
        return 0
    quality = f", perplexity {m.ppl_ratio:.3f}x unquantized" if m.ppl_ratio else ""
    if m.pruned or m.pruned_heads:
        quality = f", {render.pruned(m)}: perplexity {m.prune_ppl_ratio:.3f}x unpruned" + quality
    sh.out.write(f"loaded {m.name} ({m.architecture}, {m.num_parameters / 1e6:.1f}M parameters, "
                 f"{render.size(m.weight_bytes)} of {m.quantize if m.quantize != 'none' else m.dtype} weights"
                 f"{quality}, {m.kv_pages} KV pages{', on ' + ', '.join(m.devices) if len(m.devices) > 1 else ''})\n")
    if m.ppl_tolerance and m.ppl_ratio > m.ppl_tolerance:
        sh.say(f"warning: {m.name} is outside the {m.ppl_tolerance:.2f}x perplexity tolerance: expect worse output")
    return 0


def unload(sh: Shell, a: argparse.Namespace) -> int:
    sh.c.unload(a.name)
    return 0


def dmesg(sh: Shell, a: argparse.Namespace) -> int:
    lines = sh.c.dmesg(limit=a.lines)
    sh.json(lines) if a.json else sh.console.print(render.dmesg_text(lines), end="")
    return 0


def shutdown(sh: Shell, a: argparse.Namespace) -> int:
    sh.c.shutdown(a.grace)
    return 0


COMMANDS: dict[str, Callable[[Shell, argparse.Namespace], int]] = {
    "run": run, "chat": chat, "ps": ps, "top": top.run, "migrate": migrate, "drain": drain, "kill": signal(None), "stop": signal("STOP"),
    "cont": signal("CONT"), "renice": renice, "fork": fork, "wait": wait, "attach": attach, "free": free, "lsdev": lsdev,
    "models": models, "load": load, "unload": unload, "dmesg": dmesg, "shutdown": shutdown, **users.COMMANDS,
    **evaluate.COMMANDS,
    **train.COMMANDS,
    **translate.COMMANDS,
    **usage.COMMANDS,
    **versions.COMMANDS,
}
