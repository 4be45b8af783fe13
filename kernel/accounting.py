"""Usage accounting, the kernel's side: what each user's work cost, as Charged events, and
who may read which of it. No storage here: llmosd's usage store (llmosd/usage_db.py) keeps
the events in SQLite per user, model and hour, and answers a UsageQuery.

What is charged, and when:
- prompt tokens: the input a process is given, counted once when it is given (a spawn's
  prompt, each turn written to its stdin, a fork's extra text; a fork's inherited tokens are
  its parent's), whether its KV is then computed or served from the prefix cache;
- generated tokens: each token a process samples;
- step seconds: each KV pool's token step is timed (schedule, forward pass, apply), and its
  time is split among the processes in it by their share of the step's tokens (a prefill
  chunk of 200 tokens pays 200 times a decode token), so the shares add up to the step;
- task seconds: a task unit (training, evaluation) is charged whole to its process's owner;
- processes: each process started (spawn, fork, task), to its owner on its model.
The model is the name the process was served under (a base model, NAME:int8, a LoRA model).
"""
from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Protocol

from llmos.kernel.errors import InvalidArgument
from llmos.kernel.events import Charged

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.proc import Process
    from llmos.kernel.sched import Schedule
    from llmos.kernel.thread import KernelThread
    from llmos.kernel.users.cred import Cred

BY = ("hour", "day", "model", "user")
MAX_FILTER = 256  # characters of a --user or --model filter
SINCE_FORMS = ("an ISO date or date-time (2026-12-01, 2026-12-01T09:00; UTC unless it gives an offset) "
               "or a time ago: a number and s, m, h, d or w (24h, 7d)")
_AGO = re.compile(r"(\d{1,9})([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass
class DeviceTime:
    """Device seconds since the kernel booted: token steps and task units, as charged."""

    step_seconds: float = 0.0
    task_seconds: float = 0.0


# --- charging (on the kernel thread) -----------------------------------------------------------
def started(k: "Kernel", p: "Process", prompt_tokens: int) -> None:
    """A process was made, holding `prompt_tokens` tokens of input of its own."""
    k.emit(Charged(p.owner, p.model, prompt_tokens=prompt_tokens, processes=1))


def given(k: "Kernel", p: "Process", prompt_tokens: int) -> None:
    """A turn of input was written to a process's stdin."""
    k.emit(Charged(p.owner, p.model, prompt_tokens=prompt_tokens))


def charge_step(k: "Kernel", plan: "Schedule", generated: dict[int, int], seconds: float) -> None:
    """A pool's step took `seconds`: each process in it pays its share of the step's tokens, and
    `generated` (pid -> tokens it sampled in the step) is charged too. One event per (owner, model)."""
    total = plan.num_tokens
    if total <= 0:
        return
    bill: dict[tuple[str, str], list] = {}
    for p, n in plan.runs:
        b = bill.setdefault((p.owner, p.model), [0, 0.0])
        b[0] += generated.get(p.pid, 0)
        b[1] += seconds * n / total
    for (owner, model), (gen, secs) in bill.items():
        k.emit(Charged(owner, model, generated_tokens=gen, step_seconds=secs))


def charge_unit(k: "Kernel", p: "Process", seconds: float) -> None:
    """A unit of a task's work took `seconds` of the device."""
    k.device_time.task_seconds += seconds
    k.emit(Charged(p.owner, p.model, task_seconds=seconds))


# --- reading -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class UsageQuery:
    """Which usage to add up, and how. `user` "" is everyone (only an admin's query has it);
    `since` a unix time. by hour or day: a row per user, model and period; by model: a row per
    model (every user in the query); by user: a row per user (every model)."""

    user: str = ""
    model: str = ""
    since: float = 0.0
    by: str = "hour"


@dataclass(frozen=True)
class UsageRow:
    """One row of a usage report."""

    user: str            # "" when rows are by model: every user the query covers
    model: str           # "" when rows are by user: every model
    period_start: float  # unix time of the hour or day; by model or user, the first hour with usage
    prompt_tokens: int
    generated_tokens: int
    step_seconds: float
    task_seconds: float
    processes: int


class UsageStore(Protocol):
    """Where usage is kept (llmosd's usage_db): it answers a query with every fact charged so far."""

    def query(self, q: UsageQuery) -> list[UsageRow]: ...


def usage_query(cred: "Cred", user: str = "", model: str = "", since: str = "", by: str = "",
                now: float | None = None) -> UsageQuery:
    """The query a caller may make: a user reads only their own usage (naming another is
    PermissionDenied), an admin anyone's ("" = everyone's); bad input is InvalidArgument."""
    for name, value in (("user", user), ("model", model)):
        if len(value) > MAX_FILTER:
            raise InvalidArgument(f"{name} is {len(value)} characters; names are at most {MAX_FILTER}", name)
    by = by or "hour"
    if by not in BY:
        raise InvalidArgument(f"by {by[:40]!r} is not a grouping; choose {', '.join(BY)}", "by")
    now = time.time() if now is None else now
    return UsageQuery(user=cred.usage_user(user), model=model, since=parse_since(since, now), by=by)


def parse_since(text: str, now: float) -> float:
    """A unix time from an ISO date/date-time or a relative form (24h, 7d); "" is the beginning."""
    text = text.strip()
    if not text:
        return 0.0
    ago = _AGO.fullmatch(text)
    if ago:
        return max(0.0, now - int(ago.group(1)) * _UNIT_S[ago.group(2)])
    try:
        when = datetime.fromisoformat(text) if len(text) <= 64 else None
    except ValueError:
        when = None
    if when is None:
        raise InvalidArgument(f"since {text[:64]!r} is not a time: give {SINCE_FORMS}", "since")
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp())


async def report(kt: "KernelThread", store: UsageStore, cred: "Cred", user: str = "", model: str = "",
                 since: str = "", by: str = "", clock: Callable[[], float] | None = None) -> list[UsageRow]:
    """The Usage syscall: the kernel checks the query on its thread (so every fact charged before
    it has reached the store's queue), then the store answers it off the event loop."""
    now = (clock or time.time)()
    q = await kt.run(lambda k: k.usage_query(cred, user, model, since, by, now))
    return await asyncio.to_thread(store.query, q)
