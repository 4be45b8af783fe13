"""The `llmos_daemon` system: the same workload through a real llmosd and gRPC.

llmosd runs as a subprocess on a temporary socket (and an HTTP port, for the `llmos_http`
rows of bench/gateway.py), serving the model from the same store;
the requests go through the asyncio SDK, each one spawned and its output streamed back, as
an app would do it. TTFT is when the first text of a process reaches the client.
"""
from __future__ import annotations

import asyncio
import atexit
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import MODEL, RunResult, Tick, result


class DaemonUnderTest:
    """An llmosd subprocess on the default model, started once and stopped at exit (or at the
    end of a `with` block); `http`: with the gateway on a free port and a bearer token for it."""

    def __init__(self, store: Path, threads: int, *extra: str, device: str = "cpu", http: bool = True) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="llmos-bench-"))
        self.socket = self.dir / "llmosd.sock"
        cmd = [sys.executable, "-m", "llmos.main", "--state-dir", str(self.dir), "--socket", str(self.socket),
               "--store", str(store), "--model", MODEL, "--device", device, "--threads", str(threads),
               *(("--http", "127.0.0.1:0") if http else ()), *extra]
        self.log = open(self.dir / "llmosd.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True)
        atexit.register(self.stop)
        for line in self.proc.stdout:
            if "serving on" in line:
                if http:
                    self.http_url = re.search(r"http://[^\s,]+", line).group(0)
                    self.http_token = self._token()
                return
        raise RuntimeError(f"llmosd did not start; see {self.dir / 'llmosd.log'}")

    def client(self):
        from llmos.syscalls.sdk import Client
        return Client(self.socket, timeout=600)

    def __enter__(self) -> "DaemonUnderTest":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _token(self) -> str:
        """A bearer token for the HTTP gateway, made through the admin unix socket."""
        from llmos.syscalls.sdk import Client

        with Client(self.socket, timeout=60) as c:
            return c.create_token("bench")[1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)


async def _run(socket: Path, requests: list[list[dict]], new_tokens: int, tick: Tick) -> tuple[float, int, list]:
    from llmos.syscalls.sdk import AsyncClient

    async with AsyncClient(socket) as c:
        t0 = time.perf_counter()

        async def one(messages: list[dict]) -> tuple[float | None, int]:
            pid = await c.spawn(MODEL, messages=messages, max_tokens=new_tokens, ignore_eos=True)
            first = None
            async for chunk in c.read(pid):
                if chunk.text and first is None:
                    first = time.perf_counter() - t0
            r = await c.wait(pid, reap=True)
            tick(r.usage.generated_tokens)
            return first, r.usage.generated_tokens

        outs = await asyncio.gather(*(one(m) for m in requests))
        wall = time.perf_counter() - t0
    return wall, sum(n for _, n in outs), [f for f, _ in outs]


def under_test(bench) -> DaemonUnderTest:
    """The benchmark's one llmosd, started on first use."""
    if getattr(bench, "_daemon", None) is None:
        bench._daemon = DaemonUnderTest(bench.args.store, bench.args.threads)
    return bench._daemon


def run_daemon(bench, n: int, new_tokens: int, tick: Tick) -> RunResult:
    requests = [bench.requests[i] for i in bench.batch(n)]
    wall, generated, ttfts = asyncio.run(_run(under_test(bench).socket, requests, new_tokens, tick))
    return result("llmos_daemon", n, new_tokens, wall, generated, ttfts)
