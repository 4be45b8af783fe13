"""The crash-safe journal: every process's spec and tokens in SQLite (WAL), in the state dir.

The kernel thread never waits on the disk: the kernel's JournalTap (llmos.kernel.recovery)
hands Deltas to `Journal.submit`, which only queues them. A writer thread of its own commits
what has queued in one transaction every `interval_s`, or sooner once `max_tokens` tokens
wait. Whatever was committed survives `kill -9` (WAL with synchronous=NORMAL: each commit
reaches the OS before the next; a power cut may lose the last few, which are recomputed
like any uncommitted tokens).

Tables: procs (pid, spec JSON, status JSON), chunks (pid, seq, generated, tokens as int32
bytes), meta (schema, next_pid). A process reaped by Wait or evicted by keep_exited is deleted.
"""
from __future__ import annotations

import array
import json
import os
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llmos import sqlite_wal
from llmos.kernel.recovery import Delta, JournalTap, Record, Status, recover

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel

SCHEMA = 2
READS = ("1", "2")  # schema 1 kept a process's spec flat; kernel/recovery.py reads both
_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS procs (pid INTEGER PRIMARY KEY, spec TEXT NOT NULL, status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (pid INTEGER NOT NULL, seq INTEGER NOT NULL, generated INTEGER NOT NULL,
                                   tokens BLOB NOT NULL, PRIMARY KEY (pid, seq)) WITHOUT ROWID;
"""
log = logging.getLogger("llmos.journal")


class JournalCorrupt(Exception):
    """The journal file cannot be read as a journal."""


@dataclass
class Stats:
    """What the writer has done (for benchmarks and tests)."""

    commits: int = 0
    deltas: int = 0
    tokens: int = 0
    seconds: float = 0.0  # spent inside commits


def _tokens(d: Delta) -> int:
    return sum(len(tokens) for _, tokens in d.chunks)


def _pack(tokens: list[int]) -> bytes:
    return array.array("i", tokens).tobytes()


def _unpack(blob: bytes) -> list[int]:
    a = array.array("i")
    a.frombytes(blob)
    return a.tolist()


class Journal:
    """One journal file and the thread that writes it."""

    def __init__(self, path: Path, interval_s: float = 0.05, max_tokens: int = 1024) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self.max_tokens = max_tokens
        self.stats = Stats()
        self.failed: str | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._seq: dict[int, int] = {}
        self._next_pid = 0
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))  # every user's prompts: the daemon's only
        self.path.chmod(0o600)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._thread = threading.Thread(target=self._run, name="llmos-journal", daemon=True)
        try:
            self._setup()
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise JournalCorrupt(str(e)) from None

    def _setup(self) -> None:
        schema = sqlite_wal.setup(self._db, self.path, _DDL, JournalCorrupt)
        if schema is not None and schema not in READS:
            raise JournalCorrupt(f"schema {schema}, this llmosd reads schemas {', '.join(READS)}")
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA),))

    # --- reading -------------------------------------------------------------------------------
    def load(self) -> tuple[list[Record], int]:
        """Every journaled process, and the lowest pid a new process may take."""
        try:
            return self._load()
        except (sqlite3.DatabaseError, ValueError, KeyError, TypeError) as e:
            raise JournalCorrupt(f"{type(e).__name__}: {e}") from None

    def _load(self) -> tuple[list[Record], int]:
        db = self._db
        chunks: dict[int, list[tuple[bool, list[int]]]] = {}
        for pid, seq, generated, blob in db.execute("SELECT pid, seq, generated, tokens FROM chunks ORDER BY pid, seq"):
            chunks.setdefault(pid, []).append((bool(generated), _unpack(blob)))
            self._seq[pid] = seq + 1
        records = [Record(pid, json.loads(spec), chunks.get(pid, []), Status(**json.loads(status)))
                   for pid, spec, status in db.execute("SELECT pid, spec, status FROM procs ORDER BY pid")]
        row = db.execute("SELECT value FROM meta WHERE key='next_pid'").fetchone()
        self._next_pid = max(int(row[0]) if row else 1, max((r.pid + 1 for r in records), default=1))
        return records, self._next_pid

    # --- writing -------------------------------------------------------------------------------
    def start(self) -> "Journal":
        self._thread.start()
        return self

    def submit(self, deltas: list[Delta]) -> None:
        """Queue changes for the next commit (any thread; never blocks)."""
        self._queue.put(deltas)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is committed."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, stop the writer and close the file."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
        self._db.close()

    def _run(self) -> None:
        while True:
            batch, waiters, stop = self._gather()
            if batch and self.failed is None:
                self._commit(batch)
            for w in waiters:
                w.set()
            if stop:
                return

    def _gather(self) -> tuple[list[Delta], list[threading.Event], bool]:
        """Block for the first item, then take what comes within interval_s or max_tokens."""
        batch: list[Delta] = []
        waiters: list[threading.Event] = []
        item = self._queue.get()
        deadline, tokens = time.monotonic() + self.interval_s, 0
        while True:
            if item is None:
                return batch, waiters, True
            if isinstance(item, threading.Event):
                waiters.append(item)
                return batch, waiters, False  # a flush commits now
            batch.extend(item)
            tokens += sum(_tokens(d) for d in item)
            left = deadline - time.monotonic()
            if tokens >= self.max_tokens or left <= 0:
                return batch, waiters, False
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                return batch, waiters, False

    def _commit(self, batch: list[Delta]) -> None:
        t0 = time.monotonic()
        try:
            self._db.execute("BEGIN")
            self._write(batch)
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            self.failed = f"{type(e).__name__}: {e}"
            log.error("journal write failed; journaling stops here: %s", self.failed)
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            return
        s = self.stats
        s.commits, s.deltas, s.seconds = s.commits + 1, s.deltas + len(batch), s.seconds + time.monotonic() - t0
        s.tokens += sum(_tokens(d) for d in batch)

    def _write(self, batch: list[Delta]) -> None:
        """One transaction: specs and deletions in order; each pid's tokens coalesced into runs."""
        db = self._db
        runs: dict[int, list[list]] = {}
        status: dict[int, Status] = {}
        for d in batch:
            if d.gone:
                runs.pop(d.pid, None), status.pop(d.pid, None), self._seq.pop(d.pid, None)
                db.execute("DELETE FROM procs WHERE pid=?", (d.pid,))
                db.execute("DELETE FROM chunks WHERE pid=?", (d.pid,))
                continue
            if d.spec is not None:
                db.execute("INSERT OR REPLACE INTO procs VALUES (?, ?, '{}')", (d.pid, json.dumps(d.spec)))
                self._next_pid = max(self._next_pid, d.pid + 1)
            for generated, tokens in d.chunks:
                if tokens:
                    pid_runs = runs.setdefault(d.pid, [])
                    if pid_runs and pid_runs[-1][0] == generated:
                        pid_runs[-1][1].extend(tokens)
                    else:
                        pid_runs.append([generated, list(tokens)])
            if d.status is not None:
                status[d.pid] = d.status
        rows = []
        for pid, pid_runs in runs.items():
            for generated, tokens in pid_runs:
                seq = self._seq.get(pid, 0)
                self._seq[pid] = seq + 1
                rows.append((pid, seq, int(generated), _pack(tokens)))
        db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?)", rows)
        db.executemany("UPDATE procs SET status=? WHERE pid=?",
                       [(json.dumps(asdict(s)), pid) for pid, s in status.items()])
        db.execute("INSERT OR REPLACE INTO meta VALUES ('next_pid', ?)", (str(self._next_pid),))


def attach(kernel: "Kernel", path: Path, interval_s: float = 0.05, max_tokens: int = 1024) -> Journal:
    """Open the journal (a corrupt one is moved aside), bring its processes back into the
    kernel, and journal every change from now on. Call before the kernel thread starts."""
    journal, records, next_pid = _open(kernel, Path(path), interval_s, max_tokens)
    for line in recover(kernel, records, next_pid):
        kernel.log(f"journal: {line}", "warning")
    if records:
        live = sum(1 for r in records if r.pid in kernel.procs and not kernel.procs[r.pid].state.done)
        kernel.log(f"journal: restored {len(records)} processes ({live} live) from {path}; "
                   f"new pids start at {next_pid}")
    tap = JournalTap(kernel, journal.submit)
    tap.adopt(r.pid for r in records)
    kernel.listeners.append(tap.listener)
    return journal.start()


def _open(kernel: "Kernel", path: Path, interval_s: float, max_tokens: int) -> tuple[Journal, list[Record], int]:
    if not path.exists():
        kernel.log(f"journal: none at {path}; starting a new one")
        return Journal(path, interval_s, max_tokens), [], 1
    journal = None
    try:
        journal = Journal(path, interval_s, max_tokens)
        records, next_pid = journal.load()
        return journal, records, next_pid
    except JournalCorrupt as e:
        if journal is not None:
            journal.close()
        aside = quarantine(path)
        kernel.log(f"journal: {path} is corrupt ({e}); moved it to {aside.name} and started a new one", "error")
        return Journal(path, interval_s, max_tokens), [], 1


def quarantine(path: Path) -> Path:
    """Move a bad journal (and its -wal and -shm files) aside as <name>.corrupt-<time>."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = path.with_name(f"{path.name}.corrupt-{stamp}"), 1
    while aside.exists():
        aside, n = path.with_name(f"{path.name}.corrupt-{stamp}-{n}"), n + 1
    path.rename(aside)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(aside.with_name(aside.name + suffix))
    return aside
