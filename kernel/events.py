"""What the kernel tells its listeners: typed events, in the order things happened.

Listeners (the readers' mirror, the token meter, the journal) are called on the kernel
thread with a list of events: after each kernel operation, and once per step with all of
that step's events. They must only copy: the kernel waits for them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Spawned:
    """A new process entered the table holding `tokens` (its prompt, or its parent's tokens)."""

    pid: int
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class Input:
    """Tokens appended to a process's input: a user turn written to its stdin."""

    pid: int
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class Output:
    """Tokens a process generated (its text and state may have moved with them)."""

    pid: int
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class StateChanged:
    """A process changed state (blocked, stopped, continued, exited, killed) or reason."""

    pid: int


@dataclass(frozen=True)
class Reaped:
    """A finished process left the table."""

    pid: int


@dataclass(frozen=True)
class PipeClosed:
    """A pipe delivered src's output to dst (`offset`: where dst's answer begins), or failed."""

    pipe: int
    offset: int | None
    error: str | None = None


@dataclass(frozen=True)
class Charged:
    """Work to charge to `owner` on `model` (kernel/accounting.py says what each field counts).
    It names no pid: listeners that follow processes pass it by."""

    owner: str
    model: str
    prompt_tokens: int = 0
    generated_tokens: int = 0
    step_seconds: float = 0.0
    task_seconds: float = 0.0
    processes: int = 0


@dataclass(frozen=True)
class ShutdownRequested:
    """An admin asked the daemon to stop; `grace` overrides the configured grace period."""

    grace: float | None


Event = Spawned | Input | Output | StateChanged | Reaped | PipeClosed | Charged | ShutdownRequested
Listener = Callable[[list[Event]], None]


def pids(events: list[Event]) -> set[int]:
    """The processes a batch of events is about."""
    return {e.pid for e in events if hasattr(e, "pid")}
