"""Several devices in one daemon: a worker process per device beyond the daemon's own.

`torch.set_num_threads` is process-wide, and every step's Python runs under one GIL, so two
devices (two CPU devices that split the cores, or two GPUs) each get a process of their own
with a kernel of its own (kernel/uplink.py), and the daemon's kernel reaches it through a
`WorkerLink` (kernel/devices.py's Link): a duplex pipe to a child made with the "spawn"
start method. Both ends are llmosd; nothing a client sends crosses it unchecked.

`--device` names the devices: `cpu` or `cuda:N` (one), `cpu:0,cpu:1` (CPU devices that split
the cores, each pinned to its share), `cuda:0,cuda:1`, or `all` (every GPU, else the CPU).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import multiprocessing
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

READY_TIMEOUT_S = 300.0
MAX_DEVICES = 64


@dataclass(frozen=True)
class DeviceSpec:
    """One device of --device: its label, what open_driver opens, its threads and cores."""

    label: str
    base: str
    threads: int | None = None
    cores: tuple[int, ...] = ()
    node: str = ""  # the machine, in a Ray cluster (llmosd/cluster.py); "" = the daemon's own
    compile: bool = False  # decode steps through torch.compile (llmosd --compile)


def plan(device: str, threads: int | None = None, cpus: list[int] | None = None,
         gpus: int | None = None) -> list[DeviceSpec]:
    """The devices a --device value names; the first is the daemon's own."""
    names = [n.strip() for n in device.split(",")]
    if names == ["all"]:
        if gpus is None:
            import torch
            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        names = [f"cuda:{i}" for i in range(gpus)] or ["cpu"]
    if len(names) > MAX_DEVICES:
        raise ValueError(f"{len(names)} devices named; at most {MAX_DEVICES}")
    if len(set(names)) != len(names):
        raise ValueError(f"a device is named twice in {device!r}")
    for n in names:
        if not re.fullmatch(r"auto|cpu(:\d+)?|cuda(:\d+)?", n):
            raise ValueError(f"{n!r} is not a device: use auto, cpu, cpu:N, cuda:N or all")
    if len(names) == 1:
        return [DeviceSpec(names[0], names[0].partition(":")[0] if names[0].startswith("cpu") else names[0], threads)]
    if "auto" in names:
        raise ValueError("auto names one device; list the devices (cpu:0,cpu:1 or cuda:0,cuda:1)")
    cpus = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
    cpu_names = [n for n in names if n.startswith("cpu")]
    share = max(1, (threads or len(cpus)) // max(1, len(cpu_names)))
    if cpu_names and len(cpus) < len(cpu_names):
        raise ValueError(f"{len(cpu_names)} CPU devices need at least as many cores; this machine gives {len(cpus)}")
    out = []
    for n in names:
        if n.startswith("cpu"):
            i = cpu_names.index(n)
            cores = tuple(cpus[i * len(cpus) // len(cpu_names):(i + 1) * len(cpus) // len(cpu_names)])
            out.append(DeviceSpec(n if ":" in n else f"cpu:{i}", "cpu", min(share, len(cores)), cores))
        else:
            out.append(DeviceSpec(n, n))
    return out


class WorkerLink:
    """The daemon's end of one device's worker process."""

    def __init__(self, spec: DeviceSpec, kcfg, store: str | None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.spec = spec
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve, args=(child, spec, kcfg, store), name=f"llmos-{spec.label}", daemon=True)
        self.proc.start()
        child.close()
        self.on_news: Callable[[tuple], None] = lambda msg: None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, concurrent.futures.Future] = {}
        self._ready: concurrent.futures.Future = concurrent.futures.Future()
        self._closed = False
        self._why = ""  # why the link broke, when the worker did not simply end
        self._reader = threading.Thread(target=self._read, name=f"llmos-{spec.label}-link", daemon=True)
        self._reader.start()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S):
        """The device's DeviceInfo once its kernel runs; RuntimeError with its reason if it cannot start."""
        return self._ready.result(timeout)

    def post(self, op: str, *args: Any) -> None:
        self._send((0, op, args))

    def call(self, op: str, *args: Any, timeout: float | None = None) -> Any:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        i = next(self._ids)
        self._pending[i] = fut
        self._send((i, op, args))
        return fut.result(timeout)

    def fetch(self, data: Any) -> Any:
        """Pages come through the pipe as they are."""
        return data

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker: its kernel finishes the call in progress, then exits."""
        self._closed = True
        try:
            self._send((0, "stop", ()))
        except OSError:
            pass
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)

    def _send(self, msg: tuple) -> None:
        with self._lock:
            try:
                self.conn.send(msg)
            except (OSError, ValueError) as e:
                raise ConnectionError(f"device {self.spec.label} is gone: {e}") from None

    def _read(self) -> None:
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                break
            except Exception as e:  # noqa: BLE001 - a message that cannot be read: the link is not to be trusted
                self.proc.kill()
                self._why = f"an unreadable message ({type(e).__name__}: {e})"
                break
            kind = msg[0]
            if kind == "reply":
                _, i, ok, value = msg
                fut = self._pending.pop(i, None)
                if fut is not None:
                    fut.set_result(value) if ok else fut.set_exception(RuntimeError(value))
            elif kind == "ready":
                self._ready.set_result(msg[1])
            elif kind == "boot failed":
                self._ready.set_exception(RuntimeError(msg[1]))
            else:
                self.on_news(msg)
        self.proc.join(1)
        why = "stopped" if self._closed else self._why or f"its process ended (exit code {self.proc.exitcode})"
        if not self._ready.done():
            self._ready.set_exception(RuntimeError(why))
        for fut in self._pending.values():
            fut.set_exception(RuntimeError(f"device {self.spec.label}: {why}"))
        self._pending.clear()
        if not self._closed:
            self.on_news(("lost", why))


# --- the device's side: a kernel running what the daemon's kernel posts ----------------------------------
class DeviceServer:
    """A kernel on one device (its thread, its Uplink), serving a daemon's kernel: in a worker
    process here, or in a Ray actor on another machine (llmosd/cluster.py)."""

    def __init__(self, spec: DeviceSpec, kcfg, store: str | None, send: Callable[[tuple], None]) -> None:
        if spec.cores:
            os.sched_setaffinity(0, spec.cores)
        from llmos.drivers import open_driver
        from llmos.kernel import Kernel
        from llmos.kernel.models import ModelStore
        from llmos.kernel.thread import KernelThread
        from llmos.kernel.uplink import Uplink

        self.send = send
        self.node = spec.node
        self.kernel = Kernel(open_driver(spec.base, spec.threads, compile=spec.compile), kcfg,
                             ModelStore(store) if store else None)
        self.kernel.device_name = spec.label
        self.up = Uplink(self.kernel, send)
        self.kernel.listeners.append(self.up.listener)
        self.kt = KernelThread(self.kernel, name=f"llmos-kernel-{spec.label}").start()

    def post(self, op: str, args: tuple) -> None:
        """Run an operation on the kernel thread, after those posted before it."""
        self.kt.submit(lambda k: self._run(k, op, args))

    def answer(self, op: str, args: tuple) -> Any:
        """A call's result (blocks: on a thread of its own)."""
        if op == "load":
            return _load(self.kt, args[0])
        if op == "describe":
            return self.kt.call(self.described, timeout=30)
        if op == "reset":  # a new daemon's kernel attached: what the old one placed here is no more
            return self.kt.call(self._reset, timeout=60)
        raise ValueError(f"unknown call {op!r}")

    def described(self, k):
        from llmos.kernel.devices import own
        return dataclasses.replace(own(k), node=self.node)

    def stop(self) -> None:
        self.kt.stop()
        self.kernel.driver.release()

    def _run(self, k, op: str, args: tuple) -> None:
        from llmos.kernel import uplink

        try:
            if op in uplink.UPLINK_OPS:
                uplink.UPLINK_OPS[op](k, self.up, *args)
            elif op == "unload":
                from llmos.kernel.models import loading
                if args[0] in k.models:
                    loading.unload_model(k, args[0])
            else:
                uplink.OPS[op](k, *args)
        except Exception as e:  # noqa: BLE001 - the process it was about ends with the reason
            pid = args[0].get("pid") if args and isinstance(args[0], dict) else (args[0] if args else None)
            k.log(f"{op} failed: {type(e).__name__}: {e}", "error")
            if isinstance(pid, int):
                self.send(("failed", pid, f"{op} failed: {type(e).__name__}: {e}"))

    def _reset(self, k) -> list[str]:
        from llmos.kernel import uplink

        for pid in list(k.procs):
            uplink.release(k, self.up, pid)
        return sorted(m.name for m in k.pools())


def serve(conn, spec: DeviceSpec, kcfg, store: str | None) -> None:
    """A worker's main: a DeviceServer on one device, fed from the daemon's end of the pipe."""
    lock = threading.Lock()

    def send(msg: tuple) -> None:
        with lock:
            conn.send(msg)
    try:
        server = DeviceServer(spec, kcfg, store, send)
        send(("ready", server.kt.call(server.described)))
    except Exception as e:  # noqa: BLE001 - the daemon says why this device did not start
        send(("boot failed", f"{type(e).__name__}: {e}"))
        return
    while True:
        try:
            i, op, args = conn.recv()
        except (EOFError, OSError):
            break
        if op == "stop":
            break
        if i:
            threading.Thread(target=_answer, args=(server, send, i, op, args), daemon=True).start()
        else:
            server.post(op, args)
    server.stop()


def _answer(server: DeviceServer, send, i: int, op: str, args: tuple) -> None:
    try:
        send(("reply", i, True, server.answer(op, args)))
    except Exception as e:  # noqa: BLE001 - the caller gets the reason
        send(("reply", i, False, f"{type(e).__name__}: {e}"))


def _load(kt, a: dict) -> tuple[str, dict]:
    from llmos.kernel.thread import in_fresh_thread
    from llmos.kernel.users.cred import ROOT

    k = kt.kernel
    if a.get("name") in k.models:  # already here (a daemon re-attached to this device)
        m = k.models[a["name"]]
        return m.name, kt.call(lambda k: dataclasses.asdict(m.memory.meminfo()))
    prep = in_fresh_thread(lambda: k.prepare_model(ROOT, a["ref"], a.get("name"), a.get("dtype", "float32"),
                                                   a.get("quantize"), a.get("prune", 0.0),
                                                   a.get("prune_heads", 0.0))).result()

    def install(k):
        m = k.install_model(prep)
        return m.name, dataclasses.asdict(m.memory.meminfo())
    return kt.call(install)

