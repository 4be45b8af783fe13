"""`llmosd`: parse the config, boot the kernel, serve the syscalls over gRPC, shut down on a signal."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from llmos import config as configuration
from llmos import logs

SERVICE = "llmos.v1.Syscalls"


class BootError(Exception):
    """The daemon cannot start; the message says why and what to do."""


class Daemon:
    """One running llmosd: kernel thread, gRPC server, and the way down."""

    def __init__(self, cfg: configuration.Config, log: logging.Logger) -> None:
        self.cfg = cfg
        self.log = log
        self.stopping = asyncio.Event()
        self.hurry = asyncio.Event()  # a second signal: no more grace
        self.grace = cfg.grace
        self.nodes = None  # the Ray cluster's other nodes (llmosd/cluster.py), with --cluster
        self.node_devices: dict = {}

    def request_stop(self, grace: float | None = None) -> None:
        if self.stopping.is_set():
            self.hurry.set()
            return
        if grace is not None:
            self.grace = grace
        self.log.info("shutting down", extra={"fields": {"grace_s": self.grace}})
        self.stopping.set()

    def boot(self):
        """Open the device, make the kernel, load the default model."""
        import sqlite3

        from llmos import worker
        from llmos.drivers import open_driver
        from llmos.kernel import devices
        from llmos.journal_db import JournalCorrupt, attach as attach_journal
        from llmos.kernel import ROOT, Kernel, KernelConfig, KernelError, SchedConfig, SpecConfig
        from llmos.kernel.users.quota import Quotas
        from llmos.kernel.models import ModelStore
        from llmos.listeners import admin_names, quotas
        from llmos.usage_db import UsageCorrupt, attach as attach_usage

        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # progress bars are not log lines
        cfg = self.cfg
        try:
            plan = [dataclasses.replace(d, compile=cfg.compile) for d in worker.plan(cfg.device, cfg.threads)]
            own = plan[0]
            if own.cores:
                os.sched_setaffinity(0, own.cores)
            driver = open_driver(own.base, own.threads, compile=own.compile)
        except (ValueError, RuntimeError, OSError) as e:
            raise BootError(f"device {cfg.device}: {e}") from None
        kcfg = KernelConfig(page_size=cfg.page_size, kv_memory=cfg.kv_memory, kv_pages=cfg.kv_pages,
                            swap_memory=cfg.swap_memory, swap_pages=cfg.swap_pages,
                            max_procs=cfg.max_procs, quantize=cfg.quantize, quotas=quotas(cfg, admin_names()),
                            sched=SchedConfig(policy=cfg.policy, token_budget=cfg.token_budget,
                                              prefill_budget=cfg.prefill_budget,
                                              speculate=SpecConfig(enabled=cfg.speculate)),
                            term_grace_s=cfg.term_grace, max_unit_tokens=cfg.max_unit_tokens,
                            max_unit_s=cfg.max_unit_s, data_dirs=cfg.data_dirs, tool_wait_ttl_s=cfg.tool_wait_ttl,
                            placement=cfg.placement, keep_alive_s=cfg.keep_alive)
        kernel = Kernel(driver, kcfg, ModelStore(cfg.store_path), tokens=self.tokens)
        d = driver.describe()
        self.log.info("device opened", extra={"fields": {"device": d.name, "kind": d.kind, "threads": d.threads}})
        if len(plan) > 1:
            kernel.device_name = own.label
            self._start_workers(kernel, plan[1:], dataclasses.replace(kcfg, quotas=Quotas()))
        if cfg.model:
            t0 = time.monotonic()
            try:
                m = kernel.load_model(ROOT, cfg.model, dtype=cfg.dtype)
            except (KernelError, ValueError, OSError) as e:
                raise BootError(f"cannot load the model {cfg.model!r}: {e}") from None
            self.model_name = m.name
            self.log.info("model loaded", extra={"fields": {"model": m.name, "s": round(time.monotonic() - t0, 1),
                                                             "kv_pages": m.memory.pool.num_pages}})
            if kernel.devices:  # several devices: the model they were named for runs on each
                try:
                    kernel.add_replicas(devices.load_replicas(ROOT, kernel.devices, {
                        "ref": cfg.model, "name": m.name, "dtype": cfg.dtype}))
                except KernelError as e:
                    raise BootError(f"cannot load the model {cfg.model!r} on every device: {e}") from None
        if cfg.cluster:
            self._join_cluster(kernel, dataclasses.replace(kcfg, quotas=Quotas()),
                               {"ref": cfg.model, "name": self.model_name, "dtype": cfg.dtype} if cfg.model else None)
        try:  # after the default model: the processes it serves resume
            self.journal = attach_journal(kernel, cfg.state_dir / "journal.db")
        except (OSError, sqlite3.Error, JournalCorrupt) as e:
            raise BootError(f"cannot open the journal {cfg.state_dir / 'journal.db'}: {e}") from None
        if kernel.devices:
            moved = devices.spread(kernel)  # the journal's live processes, over every device
            if moved:
                self.log.info("resumed processes placed", extra={"fields": {"elsewhere": moved}})
        try:
            self.usage = attach_usage(kernel, cfg.state_dir / "usage.db")
        except (OSError, sqlite3.Error, UsageCorrupt) as e:
            raise BootError(f"cannot open the usage records {cfg.state_dir / 'usage.db'}: {e}") from None
        return kernel

    def _start_workers(self, kernel, specs, kcfg) -> None:
        """A worker process per device beyond the daemon's own (llmosd/worker.py); the daemon's
        kernel holds the table they serve. Quotas are enforced here, so theirs are unlimited."""
        from llmos import worker
        from llmos.kernel.devices import Device

        links = []
        try:
            for spec in specs:
                links.append(worker.WorkerLink(spec, kcfg, str(self.cfg.store_path)))
            for link in links:
                d = link.wait_ready()
                dev = Device(link.spec.label, link, info=d)
                link.on_news = lambda msg, dev=dev: self._news(dev, msg)
                kernel.devices.append(dev)
                self.log.info("device opened", extra={"fields": {"device": d.name, "kind": d.kind,
                                                                 "threads": d.threads, "cores": list(link.spec.cores)}})
        except Exception as e:  # noqa: BLE001 - a device that cannot start stops the boot
            for link in links:
                link.close(2)
            raise BootError(f"device {links[-1].spec.label if links else specs[0].label}: {e}") from None
        self.links = links

    def _join_cluster(self, kernel, kcfg, model: dict | None) -> None:
        """A kernel actor on every other node of the Ray cluster (llmosd/cluster.py), the model on each."""
        from llmos import cluster

        try:
            ray = cluster.connect(self.cfg.cluster)
            self.nodes = cluster.ClusterNodes(ray, kcfg, str(self.cfg.store_path), model, self.log,
                                              compile=self.cfg.compile)
            self.nodes.attach_all(lambda *a: self._add_node(kernel, *a))
        except cluster.ClusterError as e:
            raise BootError(str(e)) from None
        except Exception as e:  # noqa: BLE001 - an actor that cannot start stops the boot
            raise BootError(f"cluster {self.cfg.cluster}: {type(e).__name__}: {e}") from None

    def _add_node(self, kernel, link, info, replicas, loaded) -> None:
        """A node's actor serves: its device joins the kernel, with the copies loaded there."""
        from llmos.kernel.devices import Device, Replica
        from llmos.kernel.memory import MemInfo

        dev = Device(link.label, link, info=info)
        link.on_news = lambda msg: self._news(dev, msg)
        self.node_devices[link.label] = dev

        def add(k) -> None:
            k.devices = [d for d in k.devices if d.name != dev.name] + [dev]  # a node seen again replaces its old self
            k.add_replicas([(dev, name, Replica(MemInfo(**mem))) for name, mem in replicas])
            for name in loaded:
                if name not in k.models:
                    link.post("unload", name)  # a model an earlier head loaded there and this one does not serve
        kt = getattr(self, "kt", None)
        kt.call(add) if kt is not None else add(kernel)
        link.start()

    def _node_lost(self, link, why: str) -> None:
        dev = self.node_devices.get(link.label)
        if dev is not None:
            self._news(dev, ("lost", why))

    def _news(self, dev, msg) -> None:
        """A device's kernel sent news (on its link's reader thread): into its inbox, and wake the kernel."""
        dev.inbox.append(msg)
        kt = getattr(self, "kt", None)
        if kt is not None:
            kt.wake()

    async def serve(self) -> int:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        from grpc_health.v1._async import HealthServicer
        from grpc_reflection.v1alpha import reflection

        from llmos.kernel.events import ShutdownRequested
        from llmos.kernel.mirror import ProcMirror
        from llmos.kernel.stats import TokenMeter
        from llmos.kernel.thread import KernelThread, in_fresh_thread
        from llmos.listeners import Listeners
        from llmos.syscalls.server.interceptors import MalformedInterceptor
        from llmos.syscalls.server.servicer import SyscallServer
        from llmos.syscalls.v1 import syscalls_pb2, syscalls_pb2_grpc

        cfg, loop = self.cfg, asyncio.get_running_loop()
        path = cfg.socket_path
        _prepare_socket(cfg.state_dir, path)
        for plain in configuration.insecure_listeners(cfg):
            self.log.warning(f"{plain} is off loopback without TLS (--insecure): anyone on the network "
                             "can read what crosses it, bearer tokens included")
        try:
            listeners = Listeners(cfg)
        except Exception as e:  # noqa: BLE001 - the token database or the private socket dir
            raise BootError(f"cannot set up users and tokens in {cfg.state_dir}: {e}") from None
        self.tokens = listeners.tokens
        self.model_name = ""
        kernel = await asyncio.wrap_future(in_fresh_thread(self.boot))
        kt = self.kt = KernelThread(kernel, on_log=_kernel_log)
        if self.nodes is not None:
            self.nodes.watch(lambda *a: self._add_node(kernel, *a), self._node_lost)
        mirror = ProcMirror(kt, loop)
        meter = TokenMeter()

        def on_shutdown(events) -> None:
            for e in events:
                if isinstance(e, ShutdownRequested):
                    loop.call_soon_threadsafe(self.request_stop, e.grace)
        kernel.listeners += [mirror.listener, meter.listener, on_shutdown]
        kt.start()
        servicer = SyscallServer(kt, mirror, meter, self.usage)
        opts = [("grpc.max_receive_message_length", cfg.max_message), ("grpc.max_send_message_length", 64 << 20)]
        server = grpc.aio.server(options=opts, interceptors=[listeners.interceptor, MalformedInterceptor()])
        syscalls_pb2_grpc.add_SyscallsServicer_to_server(servicer, server)
        health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection([syscalls_pb2.DESCRIPTOR.services_by_name["Syscalls"].full_name,
                                             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                                             reflection.SERVICE_NAME], server)
        try:  # the unix socket is a relay that knows each peer's uid (llmosd/relay.py)
            targets = listeners.add_ports(server)
        except RuntimeError as e:
            raise BootError(str(e)) from None
        exporter, metrics_url = self._start_metrics(kt, meter) if cfg.metrics else (None, "")
        gateway = await self._start_http(kt, mirror, targets, listeners, exporter) if cfg.http else None
        await server.start()
        await listeners.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        for name in ("", SERVICE):
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        model = f"model {self.model_name}" if self.model_name else "no model loaded"
        metrics = f"; metrics at {metrics_url}" if metrics_url else ""
        print(f"llmosd: serving on {', '.join(targets)} ({model}){metrics}", flush=True)
        self.log.info("serving", extra={"fields": {"socket": str(path), "listen": cfg.listen or "",
                                                   "model": self.model_name, "metrics": metrics_url}})
        await self.stopping.wait()

        await kt.run(lambda k: k.close())
        await health.enter_graceful_shutdown()
        await self._drain(kt)
        if gateway is not None:
            await gateway.stop()
        if exporter is not None:
            await asyncio.to_thread(exporter.stop)
        await server.stop(grace=2.0)
        await listeners.close()
        kt.stop()
        for link in getattr(self, "links", ()):
            link.close()
        if self.nodes is not None:
            self.nodes.close()
        self.journal.close()
        self.usage.close()
        kernel.driver.release()
        path.unlink(missing_ok=True)
        self.log.info("stopped")
        return 0

    async def _start_http(self, kt, mirror, targets: list[str], listeners, exporter=None):
        """The OpenAI-compatible HTTP gateway (syscalls/http/) on --http, on this event loop.
        Every request needs a bearer token (listeners.http_cred), as gRPC over TCP does."""
        from llmos.syscalls.http.gateway import HttpGateway

        gateway = HttpGateway(kt, mirror, authenticate=listeners.http_cred, max_body=self.cfg.max_message,
                              metrics=exporter.page if exporter is not None else None, usage=self.usage)
        try:
            targets.append(await gateway.start(self.cfg.http, listeners.http_tls()))
        except OSError as e:
            raise BootError(f"cannot serve HTTP on {self.cfg.http}: {e}") from None
        return gateway

    def _start_metrics(self, kt, meter):
        """Prometheus metrics (llmosd/prometheus.py) on --metrics; returns the exporter and its URL."""
        from llmos.prometheus import MetricsExporter

        exporter = MetricsExporter(kt, meter, per_user=self.usage.user_totals if self.cfg.metrics_per_user else None)
        try:
            return exporter, exporter.start(self.cfg.metrics)
        except OSError as e:
            raise BootError(f"cannot serve metrics on {self.cfg.metrics}: {e}") from None

    async def _drain(self, kt) -> None:
        """Let running processes finish within the grace period, then end the rest. Task
        processes get TERM at once, so a fine-tune checkpoints and an eval reports."""
        from llmos.kernel import ROOT, Signal, devices

        await kt.run(lambda k: [k.signal(ROOT, p.pid, Signal.TERM) for p in list(k.procs.values())
                                if p.task is not None and not p.state.done])
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and not self.hurry.is_set():
            if not await asyncio.wrap_future(kt.submit(lambda k: k.has_work() or devices.busy(k))):
                break
            try:
                await asyncio.wait_for(self.hurry.wait(), 0.1)
            except asyncio.TimeoutError:
                pass

        def end_all(k) -> int:
            live = [p.pid for p in k.procs.values() if not p.state.done]
            for pid in live:
                k.signal(ROOT, pid, Signal.KILL)  # their grace is over
            return len(live)
        ended = await asyncio.wrap_future(kt.submit(end_all))
        if ended:
            self.log.info("ended live processes at shutdown", extra={"fields": {"count": ended}})
            await asyncio.sleep(0.1)  # let their readers see the end


def _kernel_log(lines: list[tuple[float, str, str]]) -> None:
    """Kernel log lines (also readable with Dmesg) into the daemon's log."""
    klog = logging.getLogger("llmos.kernel")
    for _, level, msg in lines:
        klog.log(getattr(logging, level.upper(), logging.INFO), msg)


def _prepare_socket(state_dir: Path, path: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if len(str(path).encode()) > 100:
        raise BootError(f"socket path too long for a unix socket ({len(str(path))} bytes): {path}; use --socket")
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale: left by a daemon that died
        else:
            raise BootError(f"another llmosd is already serving on unix:{path}")
        finally:
            probe.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `llmosd`."""
    try:
        cfg = configuration.load(argv)
    except configuration.ConfigError as e:
        print(f"llmosd: error: {e}", file=sys.stderr)
        return 2
    log = logs.setup(cfg.log_format, cfg.log_level)
    warnings.filterwarnings("ignore", message="The pynvml package is deprecated")
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars (GGUF conversion) are not log lines
    daemon = Daemon(cfg, log)
    try:
        import uvloop
        return uvloop.run(daemon.serve())
    except BootError as e:
        log.error(str(e))
        print(f"llmosd: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
