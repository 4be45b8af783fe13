"""The kernel's side of the crash-safe journal, with no storage in it.

`JournalTap` is a kernel listener: whenever processes change it hands a writer (llmos.journal,
SQLite) plain `Delta`s: a process's spec the first time it is seen, the tokens appended since
(input from a user turn, or generated), its status, or that it is gone. `recover()` does the
reverse after a restart: it rebuilds each journaled `Record` under its own pid and replays its
tokens through the kernel's own emission code, so its text, stop strings and turn ends come
out as they did the first time, then sets the state the journal last saw. A live process
comes back with no KV (num_computed 0): the scheduler recomputes its pages from its tokens.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from llmos.drivers.driver import SamplingParams
from llmos.kernel.proc import Limits, Process, State, StopRules

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel


@dataclass(frozen=True)
class Status:
    """What the journal keeps of a process's state; stdout_len checks the replay."""

    state: str
    resume_state: str = State.READY.value
    reason: str = ""
    stdout_len: int = 0
    ttft_s: float | None = None
    finished_wall: float | None = None  # time.time() when it ended


@dataclass
class Delta:
    """What changed in one process since the journal last saw it."""

    pid: int
    spec: dict | None = None                            # the first time it is seen
    input: list[int] = field(default_factory=list)      # tokens appended as input (a user turn)
    output: list[int] = field(default_factory=list)     # tokens it generated, after the input
    status: Status | None = None                        # when it changed
    gone: bool = False                                  # reaped: forget it


@dataclass
class Record:
    """One journaled process: its spec, its token chunks in order, its last status."""

    pid: int
    spec: dict
    chunks: list[tuple[bool, list[int]]]  # (generated, tokens)
    status: Status


@dataclass
class _Seen:
    tokens: int
    generated: int
    status: Status | None


def spec_of(p: Process) -> dict:
    """Everything needed to rebuild p as it was when spawned (plain, JSON-ready data)."""
    return {"model": p.model, "tokens": list(p.tokens), "ppid": p.ppid, "owner": p.owner,
            "priority": p.priority, "sampling": asdict(p.sampling), "stop": asdict(p.stop),
            "limits": asdict(p.limits), "interactive": p.interactive,
            "preamble": [dict(m) for m in p.preamble], "created_wall": _wall(p.created),
            "prompt_tokens": p.usage.prompt_tokens, "task": getattr(p.task, "kind", None)}


def status_of(p: Process) -> Status:
    return Status(p.state.value, p.resume_state.value, p.reason, len(p.stdout), p.usage.ttft_s,
                  None if p.finished is None else _wall(p.finished))


def process_from(pid: int, spec: dict) -> Process:
    """A process built from its journaled spec, holding only its first tokens."""
    p = Process(pid=pid, model=spec["model"], tokens=list(spec["tokens"]), ppid=spec["ppid"], owner=spec["owner"],
                priority=spec["priority"], sampling=SamplingParams(**spec["sampling"]),
                stop=StopRules(**spec["stop"]), limits=Limits(**spec["limits"]), interactive=spec["interactive"],
                preamble=list(spec["preamble"]), created=_mono(spec["created_wall"]))
    p.usage.prompt_tokens = spec.get("prompt_tokens", len(p.tokens))
    if not p.tokens:
        p.state, p.reason = State.BLOCKED, "waiting for input"
    return p


class JournalTap:
    """A kernel listener that turns process changes into Deltas for a journal writer."""

    def __init__(self, kernel: "Kernel", sink: Callable[[list[Delta]], None]) -> None:
        self.kernel = kernel
        self.sink = sink
        self._seen: dict[int, _Seen] = {}

    def adopt(self, journaled: Iterable[int]) -> None:
        """After recovery: the journal holds these pids; record what recovery changed or dropped."""
        procs = self.kernel.procs
        for pid in journaled:
            if pid in procs:
                self._seen[pid] = _Seen(len(procs[pid].tokens), len(procs[pid].out_tokens), None)
            else:
                self._seen[pid] = _Seen(0, 0, None)  # dropped by recovery: the listener forgets it
        self.listener(set(self._seen))

    def listener(self, pids: set[int]) -> None:
        """Kernel listener: runs on the kernel thread, so it only copies."""
        deltas = [d for d in (self._delta(pid) for pid in pids) if d is not None]
        if deltas:
            self.sink(deltas)

    def _delta(self, pid: int) -> Delta | None:
        p = self.kernel.procs.get(pid)
        seen = self._seen.get(pid)
        if p is None:
            return Delta(pid, gone=True) if self._seen.pop(pid, None) is not None else None
        d = Delta(pid)
        if seen is None:
            d.spec = spec_of(p)
            seen = self._seen[pid] = _Seen(len(p.tokens), 0, None)
        new_out = len(p.out_tokens) - seen.generated
        # Between two notifications a process either took input (write) or generated:
        # generated tokens always sit at the end of its tokens.
        d.input = p.tokens[seen.tokens:len(p.tokens) - new_out]
        d.output = p.out_tokens[seen.generated:]
        seen.tokens, seen.generated = len(p.tokens), len(p.out_tokens)
        status = status_of(p)
        if status != seen.status:
            d.status = seen.status = status
        if d.spec is None and not d.input and not d.output and d.status is None:
            return None
        return d


def recover(kernel: "Kernel", records: list[Record], next_pid: int = 0) -> list[str]:
    """Put journaled processes back into the kernel; returns one line per problem."""
    problems: list[str] = []
    # Finished ones first, in the order they ended, so keep_exited evicts the oldest.
    done = [r for r in records if State(r.status.state).done]
    done.sort(key=lambda r: (r.status.finished_wall or 0.0, r.pid))
    for r in done + sorted((r for r in records if not State(r.status.state).done), key=lambda r: r.pid):
        try:
            problem = _recover_one(kernel, r)
        except Exception as e:  # noqa: BLE001 - one bad record must not keep the daemon down
            kernel.procs.pop(r.pid, None)
            problem = f"pid {r.pid} cannot be restored ({type(e).__name__}: {e}); dropped it"
        if problem:
            problems.append(problem)
    kernel.reserve_pids(next_pid)
    return problems


def _recover_one(kernel: "Kernel", r: Record) -> str | None:
    p = process_from(r.pid, r.spec)
    kernel.restore(p)
    if r.spec.get("task"):  # a task's state lives in its own files (checkpoints), not in tokens
        ended = State(r.status.state)
        reason = r.status.reason if ended.done else "llmosd restarted; a training run continues with --resume"
        kernel.end(p, ended if ended.done else State.KILLED, reason)
        return None
    if p.model not in kernel.models:
        for generated, tokens in r.chunks:
            p.tokens += tokens
            p.out_tokens += tokens if generated else []
        p.usage.generated_tokens = len(p.out_tokens)
        ended = State(r.status.state)
        if ended.done:
            kernel.end(p, ended, r.status.reason)
        else:
            kernel.end(p, State.KILLED, f"model {p.model!r} not loaded after restart")
        return f"pid {p.pid}: model {p.model!r} is not loaded, so its output cannot be decoded"
    for generated, tokens in r.chunks:
        kernel.replay(p, tokens, generated)
    _settle(kernel, p, r.status)
    if len(p.stdout) != r.status.stdout_len:
        return (f"pid {p.pid}: replayed output is {len(p.stdout)} characters, "
                f"the journal saw {r.status.stdout_len}")
    return None


def _settle(kernel: "Kernel", p: Process, s: Status) -> None:
    """Give a replayed process the state the journal last saw."""
    state = State(s.state)
    if state.done:
        if not p.state.done:
            kernel.end(p, state, s.reason)
        p.state, p.reason = state, s.reason
        p.finished = _mono(s.finished_wall) if s.finished_wall is not None else p.finished
    elif state == State.STOPPED:
        p.state, p.resume_state, p.reason = State.STOPPED, State(s.resume_state), s.reason
        if p.resume_state == State.RUNNING:
            p.resume_state = State.READY
    elif state == State.BLOCKED:
        p.state, p.reason = State.BLOCKED, s.reason
    elif not p.state.done:
        p.state = State.NEW  # no KV yet: the scheduler recomputes it from the tokens
    p.usage.ttft_s = s.ttft_s


def _wall(mono: float) -> float:
    return time.time() - (time.monotonic() - mono)


def _mono(wall: float) -> float:
    return time.monotonic() - (time.time() - wall)
