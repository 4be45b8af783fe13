"""Prometheus metrics of one llmosd (`--metrics HOST:PORT`), in prometheus_client's exposition.

A custom Collector takes a Stats snapshot (kernel/stats.py) on every scrape, on the kernel
thread through KernelThread.call, and turns it into metric families. The registry is the
daemon's own, never prometheus_client's global one. It is served on its own port by
prometheus_client's HTTP server and, with --http too, at /metrics on the gateway.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llmos.kernel.stats import Stats, TokenMeter, take
from llmos.kernel.thread import KernelThread

SCRAPE_TIMEOUT_S = 10.0
MIN_INTERVAL_S = 1.0  # the kernel thread takes a snapshot this often at most, however many scrape
POOL_FIELDS = ("used", "free", "shared", "cached", "swapped")
USER_FIELDS = (("prompt_tokens", "Prompt tokens given"), ("generated_tokens", "Tokens generated"),
               ("step_seconds", "Device seconds of token steps"), ("task_seconds", "Device seconds of task units"),
               ("processes", "Processes started"))  # the order of llmosd/usage_db.py's FIELDS


class StatsCollector(Collector):
    """The metric families of a Stats snapshot, taken when Prometheus scrapes."""

    def __init__(self, source: Callable[[], Stats]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        yield from families(self.source())


def families(s: Stats) -> list[Metric]:
    """Every llmos metric family of one snapshot."""
    tokens = CounterMetricFamily("llmos_generated_tokens", "Tokens generated since llmosd started",
                                 value=s.generated_tokens)
    rate = GaugeMetricFamily("llmos_tokens_per_second",
                             f"Tokens generated per second over the last {s.rate_window_s:g} s", value=s.tokens_per_s)
    queue = GaugeMetricFamily("llmos_queue_depth", "Runnable processes holding no KV pages: not yet admitted, "
                                                   "or swapped out", value=s.queue_depth)
    uptime = GaugeMetricFamily("llmos_uptime_seconds", "Seconds since llmosd started", value=s.uptime_s)
    steps = CounterMetricFamily("llmos_step_seconds", "Device seconds of token steps since llmosd started",
                                value=s.step_seconds)
    units = CounterMetricFamily("llmos_task_seconds", "Device seconds of task units (training, evaluation) "
                                                      "since llmosd started", value=s.task_seconds)
    procs = GaugeMetricFamily("llmos_processes", "Processes in the table, by state", labels=["state"])
    for state, n in s.procs.items():
        procs.add_metric([state], n)
    return [tokens, rate, queue, uptime, steps, units, procs, *_pool_families(s), *_device_families(s)]


class UserCollector(Collector):
    """Per-user usage counters since llmosd started (only with --metrics-per-user: a user label
    is a privacy and a cardinality decision). `source`: user -> sums of USER_FIELDS."""

    def __init__(self, source: Callable[[], dict[str, tuple]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        totals = self.source()
        for i, (name, what) in enumerate(USER_FIELDS):
            family = CounterMetricFamily(f"llmos_user_{name}", f"{what} since llmosd started, by user",
                                         labels=["user"])
            for user, sums in sorted(totals.items()):
                family.add_metric([user], sums[i])
            yield family


def _pool_families(s: Stats) -> list[Metric]:
    capacity = GaugeMetricFamily("llmos_kv_pages_capacity", "KV pages in the model's pool",
                                 labels=["model", "device"])
    by_field = {f: GaugeMetricFamily(f"llmos_kv_pages_{f}", f"KV pages {f}, by model and device",
                                     labels=["model", "device"]) for f in POOL_FIELDS}
    for p in s.pools:
        capacity.add_metric([p.model, p.device], p.mem.total)
        for f, family in by_field.items():
            family.add_metric([p.model, p.device], getattr(p.mem, f))
    return [capacity, *by_field.values()]


def _device_families(s: Stats) -> list[Metric]:
    info = GaugeMetricFamily("llmos_device_info", "Devices llmosd runs on", labels=["device", "name", "kind"])
    total = GaugeMetricFamily("llmos_device_memory_bytes", "Device memory", labels=["device"])
    free = GaugeMetricFamily("llmos_device_memory_free_bytes", "Device memory free", labels=["device"])
    util = GaugeMetricFamily("llmos_device_utilization_percent", "Device utilisation, when known", labels=["device"])
    temp = GaugeMetricFamily("llmos_device_temperature_celsius", "Device temperature, when known", labels=["device"])
    for d in s.devices:
        dev = f"{d.node}/{d.kind}:{d.index}" if d.node else f"{d.kind}:{d.index}"
        info.add_metric([dev, d.name, d.kind], 1)
        total.add_metric([dev], d.total_memory)
        free.add_metric([dev], d.free_memory)
        if d.utilization is not None:
            util.add_metric([dev], d.utilization)
        if d.temperature is not None:
            temp.add_metric([dev], d.temperature)
    return [info, total, free, util, temp]


class MetricsExporter:
    """One daemon's metrics registry, its own HTTP port, and the page the gateway serves."""

    def __init__(self, kt: KernelThread, meter: TokenMeter, min_interval_s: float = MIN_INTERVAL_S,
                 per_user: Callable[[], dict[str, tuple]] | None = None) -> None:
        self.kt = kt
        self.meter = meter
        self.min_interval_s = min_interval_s
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatsCollector(self.snapshot))
        if per_user is not None:
            self.registry.register(UserCollector(per_user))
        self._server = None
        self._lock = threading.Lock()
        self._last: tuple[float, Stats] | None = None

    def snapshot(self) -> Stats:
        """The figures, taken on the kernel thread (blocks the calling thread) at most once per
        min_interval_s: scrapes in between get the last snapshot, so no scraper can make the
        kernel thread do more than that."""
        with self._lock:
            now = time.monotonic()
            if self._last is None or now - self._last[0] >= self.min_interval_s:
                self._last = now, self.kt.call(lambda k: take(k, self.meter), timeout=SCRAPE_TIMEOUT_S)
            return self._last[1]

    def render(self) -> tuple[bytes, str]:
        """The exposition page and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    async def page(self) -> tuple[bytes, str]:
        """render() off the event loop: the gateway's metrics hook."""
        return await asyncio.to_thread(self.render)

    def start(self, address: str) -> str:
        """Serve on HOST:PORT (port 0: any free port); returns the URL of the page."""
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        self._server, _ = start_http_server(int(port), host, registry=self.registry)
        bound = self._server.server_port
        return f"http://{f'[{host}]' if ':' in host else host}:{bound}/metrics"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
