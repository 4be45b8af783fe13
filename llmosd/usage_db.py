"""The usage store: what each user's work cost (kernel/accounting.py's Charged events) per
user, model and hour, in SQLite (WAL) in the state dir, kept across restarts.

The kernel thread never waits on the disk: the store's listener only queues each batch of
Charged events with the wall time they came. A writer thread of its own adds up what has
queued and commits it in one transaction every `interval_s`, as the journal does. A query
first waits until everything queued before it is committed, so it sees every fact charged
before it; `kill -9` loses at most the last interval's usage.

Table usage: one row per (user, model_name, hour), holding sums. `model_name` is the name the
work was served under (a base model, NAME:int8, a LoRA model); when versioned models exist,
a digest can join it as a column of its own.
"""
from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from llmos import sqlite_wal
from llmos.journal_db import quarantine
from llmos.kernel.accounting import UsageQuery, UsageRow
from llmos.kernel.events import Charged, Event

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel

SCHEMA = "1"
HOUR, DAY = 3600, 86400
FIELDS = ("prompt_tokens", "generated_tokens", "step_seconds", "task_seconds", "processes")
_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS usage (
  user TEXT NOT NULL, model_name TEXT NOT NULL, hour INTEGER NOT NULL,
  prompt_tokens INTEGER NOT NULL DEFAULT 0, generated_tokens INTEGER NOT NULL DEFAULT 0,
  step_seconds REAL NOT NULL DEFAULT 0, task_seconds REAL NOT NULL DEFAULT 0, processes INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (user, model_name, hour)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_by_hour ON usage (hour);
"""
_UPSERT = ("INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (user, model_name, hour) DO UPDATE SET "
           + ", ".join(f"{f} = {f} + excluded.{f}" for f in FIELDS))
_SUMS = ", ".join(f"SUM({f})" for f in FIELDS)
# by -> (the user, model and period columns selected, the grouping, the order)
_GROUPS = {
    "hour": ("user, model_name, hour", "user, model_name, hour", "hour, user, model_name"),
    "day": (f"user, model_name, (hour / {DAY}) * {DAY}", f"user, model_name, hour / {DAY}", "3, user, model_name"),
    "model": ("'', model_name, MIN(hour)", "model_name", "model_name"),
    "user": ("user, '', MIN(hour)", "user", "user"),
}
log = logging.getLogger("llmos.usage")


class UsageCorrupt(Exception):
    """The usage file cannot be read as one."""


class UsageDB:
    """One usage file, the thread that writes it, and the per-user totals since boot."""

    def __init__(self, path: Path, interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self.failed: str | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._totals: dict[str, list] = {}  # user -> sums of FIELDS since this store opened
        self._lock = threading.Lock()       # the totals (the kernel thread takes it: never held for I/O)
        self._read_lock = threading.Lock()  # the reading connection
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))  # who used what: the daemon's only
        self.path.chmod(0o600)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self._setup()
            self._reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise UsageCorrupt(str(e)) from None
        self._thread = threading.Thread(target=self._run, name="llmos-usage", daemon=True)

    def _setup(self) -> None:
        schema = sqlite_wal.setup(self._db, self.path, _DDL, UsageCorrupt)
        if schema is not None and schema != SCHEMA:
            raise UsageCorrupt(f"schema {schema}, this llmosd reads schema {SCHEMA}")
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (SCHEMA,))

    # --- writing -------------------------------------------------------------------------------
    def start(self) -> "UsageDB":
        self._thread.start()
        return self

    def submit(self, when: float, charges: list[Charged]) -> None:
        """Queue facts charged at wall time `when` (any thread; never blocks)."""
        with self._lock:
            for c in charges:
                t = self._totals.setdefault(c.owner, [0, 0, 0.0, 0.0, 0])
                for i, f in enumerate(FIELDS):
                    t[i] += getattr(c, f)
        self._queue.put((int(when) // HOUR * HOUR, charges))

    def listener(self, events: list[Event]) -> None:
        """Kernel listener: runs on the kernel thread, so it only queues."""
        charges = [e for e in events if isinstance(e, Charged)]
        if charges:
            self.submit(time.time(), charges)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is committed."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout) if self._thread.is_alive() else False

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, stop the writer and close the file."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
        self._db.close()
        with self._read_lock:
            self._reader.close()

    def _run(self) -> None:
        while True:
            rows, waiters, stop = self._gather()
            if rows and self.failed is None:
                self._commit(rows)
            for w in waiters:
                w.set()
            if stop:
                return

    def _gather(self) -> tuple[dict[tuple[str, str, int], list], list[threading.Event], bool]:
        """Block for the first item, then add up what comes within interval_s (a flush: now)."""
        rows: dict[tuple[str, str, int], list] = {}
        item, deadline = self._queue.get(), time.monotonic() + self.interval_s
        while True:
            if item is None:
                return rows, [], True
            if isinstance(item, threading.Event):
                return rows, [item], False
            hour, charges = item
            for c in charges:
                r = rows.setdefault((c.owner, c.model, hour), [0, 0, 0.0, 0.0, 0])
                for i, f in enumerate(FIELDS):
                    r[i] += getattr(c, f)
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return rows, [], False

    def _commit(self, rows: dict[tuple[str, str, int], list]) -> None:
        try:
            self._db.execute("BEGIN")
            self._db.executemany(_UPSERT, [(*key, *sums) for key, sums in rows.items()])
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            self.failed = f"{type(e).__name__}: {e}"
            log.error("usage write failed; usage is no longer recorded: %s", self.failed)
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    # --- reading -------------------------------------------------------------------------------
    def query(self, q: UsageQuery) -> list[UsageRow]:
        """The rows a (checked) query asks for, with everything charged before it. The hour
        that holds q.since is counted whole: usage is kept by the hour."""
        self.flush()
        cols, group, order = _GROUPS[q.by]
        where, args = ["hour >= ?"], [int(q.since) // HOUR * HOUR]
        if q.user:
            where.append("user = ?")
            args.append(q.user)
        if q.model:
            where.append("model_name = ?")
            args.append(q.model)
        sql = f"SELECT {cols}, {_SUMS} FROM usage WHERE {' AND '.join(where)} GROUP BY {group} ORDER BY {order}"
        with self._read_lock:
            found = self._reader.execute(sql, args).fetchall()
        return [UsageRow(user, model, float(start), int(p), int(g), float(s), float(t), int(n))
                for user, model, start, p, g, s, t, n in found]

    def user_totals(self) -> dict[str, tuple]:
        """user -> sums of FIELDS charged since this store opened (for per-user metrics)."""
        with self._lock:
            return {u: tuple(t) for u, t in self._totals.items()}


def attach(kernel: "Kernel", path: Path, interval_s: float = 1.0) -> UsageDB:
    """Open the usage store (a corrupt one is moved aside) and record every Charged event
    from now on. Call before the kernel thread starts."""
    path = Path(path)
    try:
        store = UsageDB(path, interval_s)
    except UsageCorrupt as e:
        aside = quarantine(path)
        kernel.log(f"usage: {path} is corrupt ({e}); moved it to {aside.name} and started a new one", "error")
        store = UsageDB(path, interval_s)
    kernel.listeners.append(store.listener)
    return store.start()
