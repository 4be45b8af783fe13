"""A small run of bench/load.py's load: 20 clients with mixed syscalls for a few seconds
against a daemon whose KV pool is far too small for them. Nothing is lost, nothing fails."""
import asyncio
import sys
from pathlib import Path

import pytest

from daemon import start_daemon

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root: `bench` is a package there
from bench.loadgen import OPS, run_load  # noqa: E402

MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def d(tmp_path_factory, tiny_model_dir):
    daemon = start_daemon(tmp_path_factory.mktemp("load-state"), str(tiny_model_dir), "--kv-pages", "16",
                          "--page-size", "16", "--grace", "1")
    yield daemon
    daemon.stop_cleanly()


def test_twenty_clients_lose_nothing_and_fail_nothing(d):
    stats = asyncio.run(run_load(f"unix:{d.socket}", MODEL, clients=20, seconds=8, max_tokens=8, seed=1))
    fig = stats.figures()
    assert (fig["lost"], fig["failed"], fig["errors"]) == (0, 0, {})
    assert fig["completed"] == fig["spawned"] > 20
    assert set(fig["latency"]) >= {"spawn", "read", "wait", "kill", "fork", "write", "ps", "meminfo"} and len(OPS) == 8
    with d.client(timeout=60) as c:
        assert c.ps(live_only=True) == []
        (pool,) = c.meminfo(MODEL)
        assert (pool.used, pool.swapped) == (0, 0)
