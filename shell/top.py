"""`llmos top`: a live view of the daemon's figures (the Stats syscall, the same ones the
Prometheus metrics export) above the caller's process table (Ps)."""
from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Group
from rich.live import Live
from rich.text import Text

from llmos.shell.render import STATE_STYLE, ps_table, size
from llmos.syscalls.v1 import syscalls_pb2 as pb

if TYPE_CHECKING:
    from llmos.shell.commands import Shell

MAX_ROWS = 40


def run(sh: "Shell", a: argparse.Namespace) -> int:
    """Draw frames every a.delay seconds: a.iterations of them (0: until Ctrl-C), or one with --once."""
    frames = 1 if a.once else a.iterations
    drawn = 1
    try:
        with Live(frame(sh), console=sh.console, auto_refresh=False, transient=False) as live:
            while frames == 0 or drawn < frames:
                time.sleep(a.delay)
                live.update(frame(sh), refresh=True)
                drawn += 1
    except KeyboardInterrupt:
        pass
    return 0


def frame(sh: "Shell") -> Group:
    return view(sh.c.stats(), sh.c.ps())


def view(s: pb.StatsResponse, procs: Sequence[pb.ProcInfo]) -> Group:
    """The header (rate, queue, processes by state, pools, devices) and the process table."""
    head = Text.assemble(("llmos top", "bold"), f" - {time.strftime('%H:%M:%S')}  up {s.uptime_s:.0f}s  ",
                         (f"{s.tokens_per_s:.1f} tok/s", "bold"), f" (last {s.rate_window_s:g}s)  ",
                         f"{s.generated_tokens} tokens generated  queue {s.queue_depth}")
    states = Text("processes: ")
    for i, state in enumerate(STATE_STYLE):
        states.append(", " if i else "")
        states.append(f"{s.procs.get(state, 0)} {state}", style=STATE_STYLE[state])
    several = len({p.device for p in s.pools}) > 1
    lines = [head, states, *(Text(_pool(p, several)) for p in s.pools), *(Text(_device(d)) for d in s.devices),
             Text("")]
    shown = sorted(procs, key=lambda p: (p.state in ("exited", "killed"), -p.pid))[:MAX_ROWS]
    return Group(*lines, ps_table(shown))


def _pool(p: pb.PoolInfo, several: bool = False) -> str:
    return (f"{p.model}{' on ' + p.device if several else ''}: {p.used}/{p.total} pages used, {p.free} free, {p.shared} shared, {p.cached} cached, "
            f"{p.swapped} swapped")


def _device(d: pb.Device) -> str:
    util = f", {d.utilization:.0f}% busy" if d.HasField("utilization") else ""
    temp = f", {d.temperature:.0f}C" if d.HasField("temperature") else ""
    where = f"{d.node}/{d.kind}:{d.index}" if d.node else f"{d.kind}:{d.index}"
    return f"{where} {d.name}: {size(d.free_memory)} free of {size(d.total_memory)}{util}{temp}"
