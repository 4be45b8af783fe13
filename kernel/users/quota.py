"""Per-user quotas: concurrent processes, KV pages and tokens per minute.

Limits belong to owner names, the users processes are charged to. Concurrent processes and
KV pages are checked when a process is admitted (spawn, fork) or given more input (write),
and refused with ResourceExhausted naming the quota. Tokens per minute are checked there
too, and the scheduler enforces them while processes run: an owner who has computed their
limit within the last minute gets no tokens until that minute's usage falls below it.

KV pages are counted as reservations, not as pages held at this instant: each live process
reserves what its current turn can grow to (the tokens it started the turn with plus
max_tokens, within the context window; a blocked process only what it holds). A user's
processes therefore never wait on each other's pages, and none is cut off half-way.
"""
from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llmos.kernel.errors import ResourceExhausted
from llmos.kernel.proc import Process, State

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel

WINDOW_S = 60  # tokens per minute: a sliding window of one-second buckets


@dataclass(frozen=True)
class UserLimits:
    """One user's limits (None: unlimited); also used for a user's current usage of each."""

    procs: int | None = None           # live processes
    pages: int | None = None           # KV pages reserved, all models together
    tokens_per_min: int | None = None  # tokens computed (prompt and generated, and task work) in the last minute
    data_bytes: int | None = None      # bytes of data (training, evaluation) the user's live tasks hold


UNLIMITED = UserLimits()


@dataclass(frozen=True)
class Quotas:
    """Everyone's limits: a default, and complete limits for the users who have their own."""

    default: UserLimits = UserLimits()
    users: dict[str, UserLimits] = field(default_factory=dict)

    def limits(self, user: str) -> UserLimits:
        return self.users.get(user, self.default)


def reserved_pages(k: "Kernel", p: Process, extra: int = 0) -> int:
    """KV pages p's current turn may grow to (with `extra` more input tokens for a new turn)."""
    m = k.models.get(p.model)
    if m is None or p.state.done:
        return 0
    if p.state == State.BLOCKED and not extra:
        tokens = len(p.tokens)
    else:
        start = len(p.tokens) + extra if extra else len(p.tokens) - p.turn_tokens
        tokens = start + p.stop.max_tokens
    return -(-min(tokens, m.info.max_context) // m.memory.page_size)


def data_held(procs: Iterable[Process]) -> int:
    return sum(getattr(p.task, "data_bytes", 0) for p in procs if p.task is not None)


class QuotaKeeper:
    """Applies Quotas: admission checks, and each limited user's tokens in the last minute."""

    def __init__(self, quotas: Quotas | None = None) -> None:
        self.quotas = quotas or Quotas()
        self._spent: dict[str, collections.deque[list[int]]] = {}  # user -> [second, tokens] buckets

    # --- tokens per minute ---------------------------------------------------------------------
    def charge(self, user: str, tokens: int, now: float) -> None:
        """Count tokens computed for user (only users with a rate limit are tracked)."""
        if self.quotas.limits(user).tokens_per_min is None or tokens <= 0:
            return
        buckets = self._spent.setdefault(user, collections.deque())
        second = int(now)
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += tokens
        else:
            buckets.append([second, tokens])

    def tokens_used(self, user: str, now: float) -> int:
        """Tokens computed for user in the last minute."""
        buckets = self._spent.get(user)
        if not buckets:
            return 0
        while buckets and buckets[0][0] <= int(now) - WINDOW_S:
            buckets.popleft()
        return sum(n for _, n in buckets)

    def allowance(self, procs: Iterable[Process], now: float) -> dict[str, int] | None:
        """Tokens each rate-limited owner among procs may still compute now; None if none is limited."""
        out: dict[str, int] = {}
        for owner in {p.owner for p in procs}:
            limit = self.quotas.limits(owner).tokens_per_min
            if limit is not None:
                out[owner] = max(0, limit - self.tokens_used(owner, now))
        return out or None

    @property
    def rated(self) -> bool:
        """Whether anyone has a tokens-per-minute limit."""
        q = self.quotas
        return q.default.tokens_per_min is not None or any(u.tokens_per_min is not None for u in q.users.values())

    def throttled(self, user: str, now: float) -> bool:
        limit = self.quotas.limits(user).tokens_per_min
        return limit is not None and self.tokens_used(user, now) >= limit

    def holds_back(self, procs: Iterable[Process], now: float) -> bool:
        """Whether some process has work that only its owner's rate keeps waiting."""
        return any(p.runnable and p.owed > 0 and self.throttled(p.owner, now) for p in procs)

    # --- admission -----------------------------------------------------------------------------
    def check_admit(self, k: "Kernel", p: Process, now: float) -> None:
        """A new process (spawn or fork) for p.owner: within their processes, pages and rate."""
        limits = self.quotas.limits(p.owner)
        if limits == UNLIMITED:
            return
        others = self._live(k, p)
        if limits.procs is not None and len(others) >= limits.procs:
            raise ResourceExhausted(f"user {p.owner} is at their limit of {limits.procs} concurrent processes")
        self._check_pages(k, p, others, reserved_pages(k, p), limits.pages)
        self._check_rate(p.owner, limits.tokens_per_min, now)

    def check_write(self, k: "Kernel", p: Process, new_tokens: int, now: float) -> None:
        """A new turn of `new_tokens` input tokens for p: within its owner's pages and rate."""
        limits = self.quotas.limits(p.owner)
        if limits == UNLIMITED:
            return
        self._check_pages(k, p, self._live(k, p), reserved_pages(k, p, new_tokens), limits.pages)
        self._check_rate(p.owner, limits.tokens_per_min, now)

    def usage(self, k: "Kernel", user: str, now: float) -> UserLimits:
        """What user uses now of each limited quantity."""
        live = [q for q in k.procs.values() if q.owner == user and not q.state.done]
        return UserLimits(procs=len(live), pages=sum(reserved_pages(k, q) for q in live),
                          tokens_per_min=self.tokens_used(user, now), data_bytes=data_held(live))

    def data_allowance(self, k: "Kernel", user: str) -> int | None:
        """Bytes of data user may still send (None: no limit)."""
        limit = self.quotas.limits(user).data_bytes
        if limit is None:
            return None
        return max(0, limit - data_held(q for q in k.procs.values() if q.owner == user and not q.state.done))

    def check_data(self, k: "Kernel", user: str, nbytes: int) -> None:
        """A new task holding nbytes of data, for user: within their data quota."""
        left = self.data_allowance(k, user)
        if left is not None and nbytes > left:
            limit = self.quotas.limits(user).data_bytes
            raise ResourceExhausted(f"user {user} is at their limit of {limit} bytes of task data: their live tasks "
                                    f"hold {limit - left} and this one needs {nbytes}")

    @staticmethod
    def _live(k: "Kernel", p: Process) -> list[Process]:
        return [q for q in k.procs.values() if q.owner == p.owner and q is not p and not q.state.done]

    @staticmethod
    def _check_pages(k: "Kernel", p: Process, others: list[Process], need: int, limit: int | None) -> None:
        if limit is None:
            return
        if need > limit:
            raise ResourceExhausted(f"the process needs up to {need} KV pages, over user {p.owner}'s "
                                    f"limit of {limit} KV pages")
        held = sum(reserved_pages(k, q) for q in others)
        if held + need > limit:
            raise ResourceExhausted(f"user {p.owner} is at their limit of {limit} KV pages: their live "
                                    f"processes reserve {held} and this one needs up to {need}")

    def _check_rate(self, user: str, limit: int | None, now: float) -> None:
        if limit is not None and self.tokens_used(user, now) >= limit:
            raise ResourceExhausted(f"user {user} is at their limit of {limit} tokens per minute")
