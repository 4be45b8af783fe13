"""Starting a real llmosd subprocess for tests: a temporary state dir and socket, a model
given on the command line, and the ready line awaited."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest


class Daemon:
    """A running llmosd and how to reach it."""

    def __init__(self, proc: subprocess.Popen, state_dir: Path, socket: Path, log: Path, ready: str) -> None:
        self.proc, self.state_dir, self.socket, self.log, self.ready = proc, state_dir, socket, log, ready
        self.env = {**os.environ, "LLMOS_SOCKET": str(socket), "LLMOS_STATE_DIR": str(state_dir)}

    def client(self, **kw):
        from llmos.syscalls.sdk import Client
        return Client(self.socket, **kw)

    def stop_cleanly(self) -> None:
        """Stop with SIGTERM and fail the test, showing the log's tail, unless llmosd exits 0."""
        assert self.stop() == 0, self.log.read_text()[-3000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def start_daemon(state_dir: Path, model: str, *extra: str, timeout: float = 180) -> Daemon:
    """Start llmosd and wait for its `serving on` line; fail with its log if it does not come."""
    state_dir.mkdir(parents=True, exist_ok=True)
    socket, log = state_dir / "llmosd.sock", state_dir / "llmosd.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("LLMOS_SOCKET", None)
    cmd = [sys.executable, "-m", "llmos.main", "--state-dir", str(state_dir), "--socket", str(socket),
           "--model", model, "--device", "cpu", "--threads", "1", *extra]
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        if "serving on" in line:
            return Daemon(proc, state_dir, socket, log, line.strip())
    proc.kill()
    pytest.fail(f"llmosd did not start (exit {proc.poll()}):\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny random llama and its tokenizer saved as a transformers directory."""
    from tiny import tiny_model

    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    tiny_model("llama").save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def llmosd(tmp_path_factory, tiny_model_dir):
    """One daemon for the session, serving the tiny model as `tiny-llama`."""
    d = start_daemon(tmp_path_factory.mktemp("state"), str(tiny_model_dir), "--kv-pages", "512",
                     "--page-size", "16", "--grace", "5")
    yield d
    d.stop_cleanly()
