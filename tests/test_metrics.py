"""Prometheus metrics (--metrics) and `llmos top`: the token meter and the queue depth as plain
kernel code, then a real llmosd scraped with urllib and parsed with prometheus_client."""
import collections
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from daemon import start_daemon
from llmos.kernel.proc import StopRules
from llmos.kernel.stats import TokenMeter, queue_depth, take
from llmos.kernel import ROOT, SpawnSpec
from llmos.prometheus import MIN_INTERVAL_S, MetricsExporter

MODEL = "tiny-llama"
LLMOS = [sys.executable, "-m", "llmos.shell.cli"]
POOL_FIELDS = ("used", "free", "shared", "cached", "swapped")


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_the_meter_counts_generated_tokens_and_their_recent_rate(make_kernel):
    k, _ = make_kernel(pages=64, page_size=4)
    clock = Clock()
    meter = TokenMeter(window_s=10, clock=clock)
    k.listeners.append(meter.listener)
    a = k.spawn(ROOT, SpawnSpec("tiny", tokens=[5, 6, 7], stop=StopRules(max_tokens=6, ignore_eos=True)))
    b = k.spawn(ROOT, SpawnSpec("tiny", tokens=[9, 6, 7, 8], stop=StopRules(max_tokens=5)))
    k.fork(ROOT, a.pid, max_tokens=3)
    k.run_until_idle()
    generated = sum(p.usage.generated_tokens for p in k.procs.values())
    assert generated > 0 and meter.total == generated
    clock.t += 4.5
    assert meter.rate() == pytest.approx(generated / 4.5)  # less than a window since the start
    k.reap(ROOT, b.pid)  # reaping or signalling a finished process counts nothing twice
    k.signal(ROOT, a.pid, "TERM")
    assert meter.total == generated
    clock.t += 5.0
    assert meter.rate() == pytest.approx(generated / 9.5)  # the window: 9 whole seconds and this one's half
    clock.t += 10.0
    assert meter.rate() == 0.0 and meter.total == generated


def test_queue_depth_is_runnable_processes_without_pages(make_kernel):
    k, _ = make_kernel(pages=6, page_size=4, budget=64)
    meter = TokenMeter()
    # 12 distinct tokens each: 3 pages, so only two of the three fit in 6 pages.
    pids = [k.spawn(ROOT, SpawnSpec("tiny", tokens=list(range(3 + 20 * i, 15 + 20 * i)), stop=StopRules(max_tokens=8, ignore_eos=True))).pid
            for i in range(3)]
    assert queue_depth(k) == 3  # spawned, not yet admitted
    k.step()
    s = take(k, meter)
    resident = [pid for pid in pids if pid in k.models["tiny"].memory.tables]
    assert len(resident) == 2 and s.queue_depth == 1
    assert s.procs["ready"] + s.procs["new"] == 3 == sum(s.procs.values())
    assert s.pools[0].model == "tiny" and s.pools[0].mem.used + s.pools[0].mem.free == s.pools[0].mem.total == 6
    assert s.devices[0].kind == "cpu"


@pytest.fixture(scope="module")
def md(tmp_path_factory, tiny_model_dir):
    d = start_daemon(tmp_path_factory.mktemp("metrics"), str(tiny_model_dir), "--kv-pages", "256", "--grace", "2",
                     "--metrics", "127.0.0.1:0", "--http", "127.0.0.1:0")
    d.http = re.search(r"http://[^\s,]+", d.ready).group(0)
    d.metrics = re.search(r"metrics at (http://\S+)", d.ready).group(1)
    with d.client() as c:
        d.admin_token = c.create_token("scraper", user="ops", admin=True)[1]  # the gateway's page needs one
    yield d
    d.stop_cleanly()


@pytest.fixture(scope="module")
def settled(md):
    """Processes in every resting state, none runnable, so each figure holds still while read."""
    with md.client(timeout=60) as c:
        for prompt in ("Hello", "The quick brown fox"):
            c.wait(c.spawn(MODEL, prompt, max_tokens=8, ignore_eos=True))  # exited
        turns = [c.spawn(MODEL, messages=[{"role": "user", "content": f"Hi {i}"}], max_tokens=6,
                         interactive=True, ignore_eos=True) for i in range(3)]
        for pid in turns:
            c.wait(pid, until="turn")  # blocked
        c.kill(turns[0], "STOP")
        c.kill(turns[1], "TERM")
        c.spawn(MODEL, messages=[{"role": "system", "content": "Wait."}], interactive=True)  # blocked, no tokens
        yield c.ps(), c.meminfo(), c.stats()


def scrape(url: str, token: str | None = None) -> tuple[dict, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=30) as r:
        text, content_type = r.read().decode(), r.headers["Content-Type"]
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[s.name, tuple(sorted(s.labels.items()))] = s.value
    return samples, content_type


def test_metrics_match_the_syscalls(md, settled):
    procs, pools, stats = settled
    m, content_type = scrape(md.metrics)
    assert content_type.startswith("text/plain") and "version=" in content_type
    generated = sum(p.usage.generated_tokens for p in procs)
    assert generated > 0 and m["llmos_generated_tokens_total", ()] == stats.generated_tokens >= generated
    window = stats.rate_window_s
    rate = m["llmos_tokens_per_second", ()]
    assert rate >= 0 and rate * min(window - 1, m["llmos_uptime_seconds", ()]) <= stats.generated_tokens + 1e-6
    by_state = collections.Counter(p.state for p in procs)
    assert by_state["exited"] == 2 and by_state["blocked"] == 2 and by_state["stopped"] == 1
    for state in ("new", "ready", "running", "blocked", "stopped", "exited", "killed"):
        assert m["llmos_processes", (("state", state),)] == by_state[state] == stats.procs[state], state
    assert m["llmos_queue_depth", ()] == 0 == stats.queue_depth
    (pool,) = pools
    labels = (("device", "cpu:0"), ("model", MODEL))
    assert m["llmos_kv_pages_capacity", labels] == pool.total == 256 and pool.device == "cpu:0"
    for field in POOL_FIELDS:
        assert m[f"llmos_kv_pages_{field}", labels] == getattr(pool, field), field
    assert pool.used > 0  # the blocked processes hold their conversations
    (dev,) = stats.devices
    assert m["llmos_device_memory_bytes", (("device", "cpu:0"),)] == dev.total_memory > 0
    assert 0 < m["llmos_device_memory_free_bytes", (("device", "cpu:0"),)] <= dev.total_memory
    assert ("llmos_device_temperature_celsius", (("device", "cpu:0"),)) not in m  # unknown on this CPU
    assert REGISTRY.get_sample_value("llmos_queue_depth") is None  # the daemon's own registry, not the global one


def test_the_rate_is_the_daemons(md, settled):
    with md.client(timeout=60) as c:
        r = c.wait(c.spawn(MODEL, "Count with me", max_tokens=20, ignore_eos=True), reap=True)
        s = c.stats()
    assert r.proc.usage.generated_tokens == 20 and s.tokens_per_s > 0 and s.rate_window_s == 10
    time.sleep(MIN_INTERVAL_S + 0.1)  # scrapes within a second of the last share its snapshot
    m, _ = scrape(md.metrics)
    assert m["llmos_generated_tokens_total", ()] == s.generated_tokens  # the reaped process still counts


def test_the_gateway_serves_the_same_page(md, settled):
    gateway, _ = scrape(md.http + "/metrics", md.admin_token)
    own, _ = scrape(md.metrics)
    steady = [k for k in own if k[0].startswith(("llmos_generated", "llmos_processes", "llmos_kv_pages"))]
    assert steady and all(gateway[k] == own[k] for k in steady)


@pytest.mark.parametrize("frames", [["--once"], ["-n", "1"]])
def test_top_shows_the_same_figures(md, settled, frames):
    procs, pools, _ = settled
    with md.client(timeout=60) as c:
        s = c.stats()
    env = {**os.environ, "LLMOS_SOCKET": str(md.socket)}
    r = subprocess.run([*LLMOS, "top", *frames], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "llmos top" in out and "tok/s" in out and f"{s.generated_tokens} tokens generated" in out
    assert f"queue {s.queue_depth}" in out
    assert "processes: 0 running, 0 ready, 0 new, 2 blocked, 1 stopped, 2 exited, 1 killed" in out
    assert dict(s.procs) == {"running": 0, "ready": 0, "new": 0, "blocked": 2, "stopped": 1, "exited": 2, "killed": 1}
    (pool,) = pools
    assert f"{MODEL}: {pool.used}/{pool.total} pages used, {pool.free} free" in out
    assert "cpu:0" in out and "PID" in out and out.count("llmos top") == 1


def test_scrapes_cannot_make_the_kernel_thread_snapshot_more_than_once_a_second(make_kernel):
    """However many scrape, at once or in a loop, the kernel thread takes one snapshot per interval."""
    from llmos.kernel.thread import KernelThread

    k, _ = make_kernel()
    kt = KernelThread(k).start()
    calls = []
    original = kt.call
    kt.call = lambda fn, timeout=None: calls.append(1) or original(fn, timeout)
    try:
        exporter = MetricsExporter(kt, TokenMeter(), min_interval_s=0.5)
        threads = [threading.Thread(target=lambda: [exporter.render() for _ in range(20)]) for _ in range(4)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        spent = time.monotonic() - t0
        assert 1 <= len(calls) <= 1 + spent / 0.5
        time.sleep(0.6)
        exporter.render()
        assert len(calls) >= 2  # a later scrape gets fresh figures
    finally:
        kt.stop()
