"""The crash-safe journal's kernel side, with no storage in it.

`JournalTap` is a kernel listener: from each batch of events it hands a writer
(llmos.journal_db, SQLite) plain `Delta`s: a process's spec the first time it is seen, the
tokens appended since (input from a user turn, or generated, in order), its status, or that
it is gone. `recover()` does the reverse after a restart: it rebuilds each journaled
`Record` under its own pid and replays its tokens through the kernel's own stdout code
(kernel/stdio.py), so its text, stop strings and turn ends come out as they did the first
time, then sets the state the journal last saw. A live process comes back with no KV
(num_computed 0): the scheduler recomputes its pages from its tokens.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from llmos.kernel import grammar, stdio
from llmos.kernel.events import Event, Input, Output, Reaped, Spawned, StateChanged
from llmos.kernel.models import versions
from llmos.kernel.proc import Process, State
from llmos.syscalls.abi.grammar import GrammarSpec
from llmos.syscalls.abi.spec import Limits, SamplingParams, SpawnSpec, StopRules

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
    spec: dict | None = None                                         # the first time it is seen
    chunks: list[tuple[bool, list[int]]] = field(default_factory=list)  # (generated, tokens), in order
    status: Status | None = None
    gone: bool = False                                               # reaped: forget it


@dataclass
class Record:
    """One journaled process: its spec, its token chunks in order, its last status."""

    pid: int
    spec: dict
    chunks: list[tuple[bool, list[int]]]  # (generated, tokens)
    status: Status


def spec_of(p: Process, tokens: Iterable[int]) -> dict:
    """Everything needed to rebuild p as it was when made (plain, JSON-ready data)."""
    return {"spec": asdict(p.spec), "tokens": list(tokens), "ppid": p.ppid, "owner": p.owner,
            "priority": p.priority, "preamble": [dict(m) for m in p.preamble], "created_wall": _wall(p.created),
            "prompt_tokens": p.usage.prompt_tokens, "task": getattr(p.task, "kind", None),
            "model_digest": p.model_digest}


def status_of(p: Process) -> Status:
    return Status(p.state.value, p.resume_state.value, p.reason, len(p.stdout), p.usage.ttft_s,
                  None if p.finished is None else _wall(p.finished))


def spawn_spec(d: dict) -> SpawnSpec:
    """The SpawnSpec of a journal record (schema 1 kept the spec's fields flat)."""
    s = d.get("spec") or {k: d[k] for k in ("model", "sampling", "stop", "limits", "priority", "interactive")}
    return SpawnSpec(model=s["model"], prompt=s.get("prompt"), messages=s.get("messages"), tokens=s.get("tokens"),
                     sampling=SamplingParams(**s["sampling"]), stop=StopRules(**s["stop"]),
                     limits=Limits(**s["limits"]), priority=s["priority"], owner=s.get("owner", d["owner"]),
                     interactive=s["interactive"], grammar=GrammarSpec(**s["grammar"]) if s.get("grammar") else None,
                     speculate=s.get("speculate", True))


def process_from(pid: int, d: dict) -> Process:
    """A process built from its journal record, holding only its first tokens."""
    p = Process(pid=pid, spec=spawn_spec(d), owner=d["owner"], ppid=d["ppid"], tokens=list(d["tokens"]),
                priority=d["priority"], preamble=list(d["preamble"]), created=_mono(d["created_wall"]),
                model_digest=d.get("model_digest", ""))
    p.took(False, len(p.tokens))
    p.usage.prompt_tokens = d.get("prompt_tokens", len(p.tokens))
    if not p.tokens:
        p.state, p.reason = State.BLOCKED, "waiting for input"
    return p


class JournalTap:
    """A kernel listener that turns events into Deltas for a journal writer."""

    def __init__(self, kernel: "Kernel", sink: Callable[[list[Delta]], None]) -> None:
        self.kernel = kernel
        self.sink = sink

    def adopt(self, journaled: Iterable[int]) -> None:
        """After recovery: the journal holds these pids; record what recovery changed or dropped."""
        procs = self.kernel.procs
        self.sink([Delta(pid, status=status_of(procs[pid])) if pid in procs else Delta(pid, gone=True)
                   for pid in journaled])

    def listener(self, events: list[Event]) -> None:
        """Kernel listener: runs on the kernel thread, so it only copies."""
        procs, deltas = self.kernel.procs, {}
        for e in events:
            if not isinstance(e, (Spawned, Input, Output, StateChanged, Reaped)):
                continue
            if isinstance(e, Reaped):
                deltas[e.pid] = Delta(e.pid, gone=True)
                continue
            d = deltas.get(e.pid)
            if d is None or d.gone:
                d = deltas[e.pid] = Delta(e.pid)
            if isinstance(e, Spawned) and e.pid in procs:
                d.spec = spec_of(procs[e.pid], e.tokens)
            elif isinstance(e, (Input, Output)):
                generated = isinstance(e, Output)
                if d.chunks and d.chunks[-1][0] == generated:
                    d.chunks[-1][1].extend(e.tokens)
                else:
                    d.chunks.append((generated, list(e.tokens)))
        for pid, d in deltas.items():
            if not d.gone and pid in procs:
                d.status = status_of(procs[pid])
        if deltas:
            self.sink(list(deltas.values()))


def recover(kernel: "Kernel", records: list[Record], next_pid: int = 0) -> list[str]:
    """Put journaled processes back into the kernel; returns one line per problem."""
    problems: list[str] = []
    # Finished ones first, in the order they ended, so keep_exited evicts the oldest.
    done = [r for r in records if State(r.status.state).done]
    done.sort(key=lambda r: (r.status.finished_wall or 0.0, r.pid))
    for r in done + sorted((r for r in records if not State(r.status.state).done), key=lambda r: r.pid):
        try:
            problem = rebuild(kernel, r)
        except Exception as e:  # noqa: BLE001 - one bad record must not keep the daemon down
            kernel.procs.pop(r.pid, None)
            problem = f"pid {r.pid} cannot be restored ({type(e).__name__}: {e}); dropped it"
        if problem:
            problems.append(problem)
    kernel.reserve_pids(next_pid)
    return problems


def rebuild(kernel: "Kernel", r: Record) -> str | None:
    """Put one journaled process back under its pid and replay its tokens; the problem, if any."""
    p = process_from(r.pid, r.spec)
    if not State(r.status.state).done and not r.spec.get("task") and p.model_digest:
        served = versions.restore(kernel, p.model, p.model_digest)  # the weights it ran on, by digest
        if served and served != p.model:
            p.spec = dataclasses.replace(p.spec, model=served)
    kernel.restore(p)
    if r.spec.get("task"):  # a task's state lives in its own files (checkpoints), not in tokens
        ended = State(r.status.state)
        reason = r.status.reason if ended.done else "llmosd restarted; a training run continues with --resume"
        kernel.exit(p, ended if ended.done else State.KILLED, reason)
        return None
    if p.model not in kernel.models:
        for generated, tokens in r.chunks:
            p.tokens += tokens
            p.took(generated, len(tokens))
            p.out_tokens += tokens if generated else []
        p.usage.generated_tokens = len(p.out_tokens)
        ended = State(r.status.state)
        if ended.done:
            kernel.exit(p, ended, r.status.reason)
        else:
            kernel.exit(p, State.KILLED, f"model {p.model!r} not loaded after restart")
        return f"pid {p.pid}: model {p.model!r} is not loaded, so its output cannot be decoded"
    m = kernel.model(p.model)
    if p.spec.grammar is not None:  # rebuilt from the tokens as they are replayed
        p.grammar = grammar.compile(m, p.spec.grammar).start()
    for generated, tokens in r.chunks:
        if not generated:
            stdio.feed(kernel, p, tokens)
        else:
            for t in tokens:
                stdio.emit(kernel, m, p, t)
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
            kernel.exit(p, state, s.reason)
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
