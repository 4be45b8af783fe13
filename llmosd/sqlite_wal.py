"""What llmosd's SQLite files share: WAL mode, private side files, an integrity check, the
schema table (llmosd/journal_db.py, llmosd/usage_db.py)."""
from __future__ import annotations

import sqlite3
from pathlib import Path


def setup(db: sqlite3.Connection, path: Path, ddl: str, corrupt: type[Exception]) -> str | None:
    """Put db in WAL mode, make its -wal/-shm files 0600, check it and create its tables; return
    the schema it was written with (None for a new file). Raises `corrupt` naming what failed."""
    if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
        raise corrupt("cannot switch to WAL mode")
    db.execute("PRAGMA synchronous=NORMAL")
    for side in ("-wal", "-shm"):
        f = path.with_name(path.name + side)
        if f.exists():
            f.chmod(0o600)
    check = db.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        raise corrupt(f"integrity check: {check}")
    db.executescript(ddl)
    row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    return None if row is None else row[0]
