"""A Ray cluster of devices: `llmosd --cluster auto|ADDRESS` (pip install 'llmos[ray]').

The daemon that serves gRPC and HTTP is the head: it keeps the one process table, the
journal, the readers and the users, and runs its own device in-process. On every other node
of the Ray cluster it places a kernel actor (`NodeKernel`, one per node, by node affinity):
a DeviceServer (llmosd/worker.py) with its own scheduler, KV pool and step loop. The head's
kernel reaches each through a `RayLink` (kernel/devices.py's Link): operations go down as
ordered actor calls, and news comes up through a long poll, so per-step tensors never cross
the network. Actors are detached and named in the `llmos` namespace: a head that restarts
re-attaches to them, with their models still loaded. A thread watches nodes join and leave.
"""
from __future__ import annotations

import itertools
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep a 127.0.0.1 address as given

NAMESPACE = "llmos"
POLL_S = 1.0          # a news long poll waits at most this long
WATCH_S = 1.0         # how often the node list is read
MAX_NEWS = 100_000    # messages an actor keeps for a head that does not poll (one that died)
CONNECT_TIMEOUT_S = 5.0


class LocalCluster:
    """A Ray cluster on this machine (ray.cluster_utils.Cluster): a head with no CPUs and a node
    per entry of `cpus`, every one bound to 127.0.0.1, its files in a short temp dir of its own
    that goes with it. For trying --cluster on one machine; the tests and bench/cluster.py run on it."""

    FAST_HEALTH = {"health_check_period_ms": 500, "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}

    def __init__(self, cpus: list[int]) -> None:
        import shutil

        from ray.cluster_utils import Cluster

        self.tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths live under it
        self._rmtree = lambda: shutil.rmtree(self.tmp, ignore_errors=True)
        self._env = os.environ.get("RAY_TMPDIR")
        os.environ["RAY_TMPDIR"] = self.tmp  # where Cluster writes its address file, whatever temp_dir says
        common = {"node_ip_address": "127.0.0.1", "temp_dir": os.path.join(self.tmp, "ray")}
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": False, "include_log_monitor": False, "no_monitor": True,
            "_system_config": self.FAST_HEALTH, **common})
        try:
            self.nodes = [self.cluster.add_node(num_cpus=n, **common) for n in cpus]
            self.cluster.wait_for_nodes()
        except BaseException:
            self.close()
            raise
        self.address = self.cluster.address

    def close(self) -> None:
        self.cluster.shutdown()
        self._rmtree()
        if self._env is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = self._env

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ClusterError(Exception):
    """--cluster cannot work; the message says why and what to do."""


def connect(address: str) -> Any:
    """Join the Ray cluster at `address` ("auto": the one this machine runs) as a driver."""
    try:
        import ray
    except ImportError:
        raise ClusterError("--cluster needs Ray: pip install 'llmos[ray]'") from None
    if address != "auto":
        host, _, port = address.rpartition(":")
        if not port.isdigit():
            raise ClusterError(f"--cluster {address!r}: expected auto or HOST:PORT (the head's `ray start` address)")
        try:  # ray.init retries a dead address for minutes; say so at once
            socket.create_connection((host, int(port)), CONNECT_TIMEOUT_S).close()
        except OSError as e:
            raise ClusterError(f"no Ray cluster at {address} ({e}); start one with `ray start --head`") from None
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, configure_logging=False)
    except ConnectionError as e:
        raise ClusterError(f"cannot join a Ray cluster at {address}: {e}") from None
    return ray


def node_label(node_id: str) -> str:
    return f"node-{node_id[:8]}"


class NodeKernel:
    """The actor on one node: a DeviceServer, its posts in order, its news for the long poll."""

    def __init__(self, label: str, base: str, threads: int, kcfg, store: str | None, compile: bool = False) -> None:
        from llmos.worker import DeviceServer, DeviceSpec

        self._cond = threading.Condition()
        self._news: list[tuple] = []
        self._order = threading.Lock()
        self._next = 1
        self._pending: dict[int, tuple[str, tuple]] = {}
        self.node = label
        device = f"{label}/{base if base != 'cpu' else 'cpu:0'}"
        self.server = DeviceServer(DeviceSpec(device, base, threads, node=label, compile=compile), kcfg, store,
                                   self._send)

    def _send(self, msg: tuple) -> None:
        if msg[0] == "pages" and msg[3] is not None:  # a migration's KV: into this node's object store,
            import ray                                # fetched straight from here by whoever adopts it
            msg = (*msg[:3], ray.put(msg[3]))
        with self._cond:
            self._news.append(msg)
            del self._news[:-MAX_NEWS]
            self._cond.notify_all()

    def ping(self) -> str:
        return self.node

    def post(self, seq: int, op: str, args: tuple) -> None:
        """Operations run in the order the head numbered them, whatever order Ray delivers them in."""
        with self._order:
            self._pending[seq] = (op, args)
            while self._next in self._pending:
                op, args = self._pending.pop(self._next)
                self.server.post(op, _fetched(args) if op == "adopt" else args)
                self._next += 1

    def call(self, op: str, args: tuple) -> Any:
        return self.server.answer(op, args)

    def attach(self) -> list[str]:
        """A head (re)attached: forget what an earlier one placed here; the models loaded here."""
        with self._order:
            self._next, self._pending = 1, {}
        with self._cond:
            self._news.clear()
        return self.server.answer("reset", ())

    def news(self, timeout: float) -> list[tuple]:
        with self._cond:
            self._cond.wait_for(lambda: self._news, timeout)
            out, self._news = self._news, []
        return out

    def stop(self) -> None:
        self.server.stop()


def _fetched(args: tuple) -> tuple:
    """An adopt's KV pages, fetched from the object store they wait in; none (it recomputes) if
    the node that held them is gone."""
    import ray

    rec, kv = args
    if kv is not None and isinstance(kv[1], ray.ObjectRef):
        try:
            kv = (kv[0], ray.get(kv[1], timeout=120))
        except Exception:  # noqa: BLE001 - its source died with them
            kv = None
    return rec, kv


class RayLink:
    """The head's end of one node's actor."""

    def __init__(self, ray, actor, label: str) -> None:
        self.ray, self.actor, self.label = ray, actor, label
        self.on_news: Callable[[tuple], None] = lambda msg: None
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        threading.Thread(target=self._read, name=f"llmos-{self.label}-link", daemon=True).start()

    def post(self, op: str, *args: Any) -> None:
        with self._lock:
            self.actor.post.remote(next(self._seq), op, args)

    def call(self, op: str, *args: Any, timeout: float | None = None) -> Any:
        return self.ray.get(self.actor.call.remote(op, args), timeout=timeout)

    def fetch(self, data: Any) -> Any:
        """KV pages this node sent as an object ref, as bytes."""
        return self.ray.get(data, timeout=120) if isinstance(data, self.ray.ObjectRef) else data

    def close(self, kill: bool = True) -> None:
        """Stop reading; a clean shutdown also ends the actor (a crashed head leaves it to re-attach)."""
        self._closed = True
        if kill:
            try:
                self.ray.get(self.actor.stop.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - it is going anyway
                pass
            self.ray.kill(self.actor)

    def _read(self) -> None:
        from ray.exceptions import RayActorError

        while not self._closed:
            try:
                msgs = self.ray.get(self.actor.news.remote(POLL_S), timeout=POLL_S + 30)
            except RayActorError as e:
                if not self._closed:
                    self.on_news(("lost", f"its actor died ({type(e).__name__})"))
                return
            except Exception as e:  # noqa: BLE001 - a poll that timed out or failed: try again, then give up
                if self._closed:
                    return
                if not self._alive():
                    self.on_news(("lost", f"its actor does not answer ({type(e).__name__}: {e})"))
                    return
                continue
            for m in msgs:
                self.on_news(m)

    def _alive(self) -> bool:
        try:
            self.ray.get(self.actor.ping.remote(), timeout=10)
            return True
        except Exception:  # noqa: BLE001
            return False


class ClusterNodes:
    """The head's view of the Ray cluster: an actor and a device per other node, kept current."""

    def __init__(self, ray, kcfg, store: str | None, model: dict | None, log, compile: bool = False) -> None:
        self.ray, self.kcfg, self.store, self.model, self.log = ray, kcfg, store, model, log
        self.compile = compile  # llmosd --compile: every node's decode steps too
        self.own = ray.get_runtime_context().get_node_id()
        self.links: dict[str, RayLink] = {}   # node id -> its link
        self._stop = threading.Event()

    def attach_all(self, add: Callable[[Any, RayLink, Any, list], None]) -> None:
        """An actor on every other live node now (boot: blocks until each is serving)."""
        for n in self.ray.nodes():
            if n["Alive"] and n["NodeID"] != self.own and n["NodeID"] not in self.links:
                self._attach(n, add)

    def watch(self, add: Callable, lost: Callable[[RayLink, str], None]) -> None:
        """Follow nodes joining and leaving, on a thread of its own."""
        def run() -> None:
            while not self._stop.wait(WATCH_S):
                try:
                    nodes = self.ray.nodes()
                except Exception:  # noqa: BLE001 - the GCS is away for a moment
                    continue
                for n in nodes:
                    link = self.links.get(n["NodeID"])
                    if not n["Alive"] and link is not None:
                        del self.links[n["NodeID"]]
                        lost(link, "Ray reports its node dead")
                    elif n["Alive"] and link is None and n["NodeID"] != self.own:
                        try:
                            self._attach(n, add)
                        except Exception as e:  # noqa: BLE001 - tried again at the next look
                            self.log.warning(f"cannot place a kernel on node {node_label(n['NodeID'])}: {e}")
        threading.Thread(target=run, name="llmos-cluster-watch", daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        for link in self.links.values():
            link.close()
        self.links.clear()

    def _attach(self, n: dict, add: Callable) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        node = node_label(n["NodeID"])
        gpus = int(n["Resources"].get("GPU", 0))
        base = "cuda:0" if gpus else "cpu"
        label = f"{node}/{base if gpus else 'cpu:0'}"
        threads = max(1, int(n["Resources"].get("CPU", 1)))
        cls = self.ray.remote(NodeKernel).options(
            name=f"llmos-{n['NodeID']}", namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
            num_cpus=0, num_gpus=1 if gpus else 0, max_concurrency=8,
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
        t0 = time.monotonic()
        actor = cls.remote(node, base, threads, self.kcfg, self.store, self.compile)
        loaded = self.ray.get(actor.attach.remote(), timeout=600)
        link = RayLink(self.ray, actor, label)
        info = link.call("describe", timeout=60)
        replicas = []
        if self.model is not None:
            replicas.append(link.call("load", self.model, timeout=600))
        self.links[n["NodeID"]] = link
        add(link, info, replicas, loaded)
        self.log.info("node attached", extra={"fields": {
            "node": node, "device": label, "threads": threads, "models_kept": loaded,
            "s": round(time.monotonic() - t0, 1)}})
