"""Devices with kernels of their own, under this kernel's one process table.

This kernel runs the processes on its own device. Each other device (a CPU device with cores
of its own, another GPU, a node of a Ray cluster) has a kernel of its own, with its own
scheduler, KV pool and step loop next to its driver, reached through a Link. Per-step
tensors never cross a link; what does is control:
- down: a process to adopt (its spec, any tokens it has, and its KV pages if it migrates by
  them), its fork, a turn on its stdin, a signal, a new nice value, a release, a reap;
- up (kernel/news.py): the tokens each process generated, its state, its page counters, the
  device's charges, a summary of its KV pool, and a migrating process's pages.

The process table stays here, so pids, ps, readers, pipes, the journal and quotas work as on
one device. This kernel replays each generated token through its own stdout code
(kernel/stdio.py), exactly as journal recovery does, so a process's text, stop strings and
turn ends come out here as they do there. When a device is lost (kernel/migrate.py), its live
processes are placed again from the tokens held here: same pid, same output offset, their KV
recomputed.
"""
from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from llmos.kernel import placement, recovery
from llmos.kernel.errors import InvalidArgument, Unavailable
from llmos.kernel.memory import MemInfo
from llmos.kernel.proc import Process, State

if TYPE_CHECKING:
    from llmos.drivers.driver import DeviceInfo
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.models.loading import LoadedModel
    from llmos.kernel.users.cred import Cred

MAX_REPLICAS = 64
PLACED_MEMORY = 16384  # prefix page hashes remembered per device from recent placements


class Link(Protocol):
    """How this kernel reaches a device's kernel (llmosd/worker.py: a worker process)."""

    def post(self, op: str, *args: Any) -> None:
        """Send an operation; it runs there in the order posted. Failures come back as messages."""

    def call(self, op: str, *args: Any, timeout: float | None = None) -> Any:
        """Send an operation and wait for its result (not on the kernel thread)."""

    def fetch(self, data: Any) -> Any:
        """KV pages it sent up (bytes, or a handle to them where they wait), as bytes."""


@dataclass
class Replica:
    """What a device last said of its copy of one model."""

    mem: MemInfo
    hashes: frozenset[int] = frozenset()  # chain hashes of the full prefix pages it holds
    last_used: float = field(default_factory=time.monotonic)  # a process last placed there or ran there

    @property
    def free_pages(self) -> int:
        return self.mem.free


@dataclass(eq=False)
class Device:
    """A device with a kernel of its own."""

    # --- set at boot, never replaced
    name: str
    link: Link
    # --- its link's reader thread appends; the kernel thread pops
    inbox: collections.deque = field(default_factory=collections.deque)
    # --- the kernel thread only
    models: dict[str, Replica] = field(default_factory=dict)
    info: "DeviceInfo | None" = None  # its telemetry, as it last sent it
    alive: bool = True
    lost_reason: str = ""


# --- placement --------------------------------------------------------------------------------------
def place(k: "Kernel", m: "LoadedModel", p: Process, exclude: str = "") -> Device | None:
    """The device a new process runs on (None: this kernel's own), by kernel/placement.py's cost;
    never a drained device (nor `exclude`), and this kernel's own if every other is."""
    if not k.devices or not movable(m, p):
        return None
    off = k.drained | {exclude}
    here = [d for d in k.devices if d.alive and m.name in d.models and d.name not in off]
    if not here:
        return None
    if k.config.placement == "round-robin":
        order = ([None] if k.device_name not in off else []) + here
        k.placed_count += 1
        return order[k.placed_count % len(order)]
    ps = m.memory.page_size
    hashes = m.memory.prefix_hashes(p.tokens, p.kv_salt)
    need = -(-len(p.tokens) // ps)
    live = collections.Counter(q.device for q in k.procs.values() if not q.state.done and q.model == m.name)
    cached = max(m.memory.cached_pages(hashes), _placed(k, "", hashes))
    own = placement.Candidate("", len(p.tokens), cached * ps, live[""], m.memory.pool.num_free, need)
    others = []
    for d in here:
        cached = max(placement.cached_prefix(hashes, d.models[m.name].hashes), _placed(k, d.name, hashes))
        others.append(placement.Candidate(d.name, len(p.tokens), cached * ps, live[d.name],
                                          d.models[m.name].free_pages, need))
    best = placement.choose([own, *others] if k.device_name not in off else others)
    chosen = next((d for d in here if d.name == best.device), None)
    _remember(k, best.device, hashes)
    return chosen


def _placed(k: "Kernel", device: str, hashes: Sequence[int]) -> int:
    """Pages of this prompt's prefix that processes placed on `device` lately hold or are computing:
    what its prefix cache will hold before its summary says so."""
    return placement.cached_prefix(hashes, k.placed_prefixes.get(device, {}))


def _remember(k: "Kernel", device: str, hashes: Sequence[int]) -> None:
    recent = k.placed_prefixes.setdefault(device, {})
    for h in hashes:
        recent.pop(h, None)
        recent[h] = None
    while len(recent) > PLACED_MEMORY:
        del recent[next(iter(recent))]


def movable(m: "LoadedModel", p: Process) -> bool:
    """Whether a process can run on another device's kernel: a token process of a base model,
    with no grammar (compiled here) and no log-probabilities (computed there, not sent up)."""
    return (p.task is None and not m.base and p.spec.grammar is None and not p.sampling.logprobs
            and not m.preset_of)


def start(k: "Kernel", d: Device, p: Process) -> None:
    """p, just admitted here (or placed again), runs on d from now on: it recomputes there."""
    p.device = d.name
    if p.model in d.models:
        d.models[p.model].last_used = time.monotonic()
    d.link.post("adopt", record(p), None)


def spread(k: "Kernel") -> int:
    """Place the live processes this kernel holds and has not started (journal recovery after a
    restart brings them all back here) on the cheapest devices; returns how many went elsewhere."""
    moved = 0
    for p in sorted(k.procs.values(), key=lambda q: q.pid):
        m = k.models.get(p.model)
        if m is None or not p.here or p.state.done or p.num_computed or m.memory.pages_held(p.pid):
            continue
        there = place(k, m, p)
        if there is not None:
            start(k, there, p)
            moved += 1
    return moved


def record(p: Process) -> dict:
    """What a device's kernel needs to adopt p: a journal record of it, as recovery reads one
    (its first input, then each run of generated or input tokens), and its epoch."""
    runs = list(p.chunks)
    first = runs.pop(0)[1] if runs and not runs[0][0] else 0
    spec = recovery.spec_of(p, p.tokens[:first])
    spec["model_digest"] = ""  # there, it runs on the copy loaded under the same name
    chunks, at = [], first
    for generated, n in runs:
        chunks.append((generated, p.tokens[at:at + n]))
        at += n
    return {"pid": p.pid, "spec": spec, "chunks": chunks, "status": dataclasses.asdict(recovery.status_of(p)),
            "epoch": p.moves}


def forward(k: "Kernel", p: Process, op: str, *args: Any) -> None:
    """Pass an operation on p to the device running it."""
    d = device_of(k, p)
    if d is not None and d.alive:
        d.link.post(op, p.pid, *args)


def device_of(k: "Kernel", p: Process) -> Device | None:
    return next((d for d in k.devices if d.name == p.device), None) if p.device else None


def busy(k: "Kernel") -> bool:
    """Whether a process runs elsewhere now (this kernel's has_work does not count them)."""
    return any(not p.here and p.runnable for p in k.procs.values())


def has_news(k: "Kernel") -> bool:
    return any(d.inbox for d in k.devices)


def find(k: "Kernel", name: str) -> Device | None:
    """The device named, or the first of the node named (None: this kernel's own);
    InvalidArgument naming the devices if there is none."""
    if name == k.device_name:
        return None
    for d in k.devices:
        if d.alive and (d.name == name or d.name.startswith(name + "/")):
            return d
    alive = ", ".join([k.device_name, *(d.name for d in k.devices if d.alive)])
    raise InvalidArgument(f"no device {name[:64]!r}; devices are {alive}", "device")


# --- replicas -------------------------------------------------------------------------------------------
def targets(k: "Kernel", replicas: int, names: Sequence[str]) -> list[Device]:
    """The devices a load with `replicas` copies (or on the named devices) adds copies on:
    this kernel's own device always holds the first."""
    if names:
        known = {d.name: d for d in k.devices if d.alive}
        if len(names) > MAX_REPLICAS:
            raise InvalidArgument(f"{len(names)} devices named; at most {MAX_REPLICAS}", "devices")
        bad = [n for n in names if n not in known and n != k.device_name]
        if bad:
            raise InvalidArgument(f"no device {bad[0][:64]!r}; devices are {', '.join([k.device_name, *known])}",
                                  "devices")
        return [known[n] for n in dict.fromkeys(names) if n in known]
    if not 0 <= replicas <= MAX_REPLICAS:
        raise InvalidArgument(f"replicas must be in [0, {MAX_REPLICAS}], got {replicas}", "replicas")
    alive = [d for d in k.devices if d.alive]
    if replicas > len(alive) + 1:
        raise InvalidArgument(f"{replicas} replicas asked, but this daemon has {len(alive) + 1} device(s)",
                              "replicas")
    return alive[:max(0, replicas - 1)]


def load_replicas(cred: "Cred", devices: Sequence[Device], args: dict,
                  timeout: float = 600.0) -> list[tuple[Device, str, Replica]]:
    """Load a copy of a model on each device (blocks: call it off the kernel thread). `args` are
    the load's own (ref, name, dtype, quantize, prune, prune_heads); an admin's act."""
    cred.check("load")
    out = []
    for d in devices:
        try:
            name, mem = d.link.call("load", args, timeout=timeout)
        except Exception as e:  # noqa: BLE001 - the device says why
            raise Unavailable(f"device {d.name}: cannot load {args.get('ref')!r}: {e}") from None
        out.append((d, name, Replica(MemInfo(**mem))))
    return out


def add_replicas(k: "Kernel", loaded: list[tuple[Device, str, Replica]]) -> None:
    for d, name, replica in loaded:
        d.models[name] = replica
        k.log(f"model {name}: a replica on {d.name}")


def idle_replicas(k: "Kernel") -> bool:
    """Whether a copy on another device waits out its keep-alive (the kernel thread must tick)."""
    return bool(k.config.keep_alive_s) and any(d.alive and d.models for d in k.devices)


def expire(k: "Kernel", now: float) -> None:
    """Unload the copies on other devices that no process has used for keep_alive_s (this
    kernel's own copy stays: unloading it is an admin's `llmos unload`)."""
    ttl = k.config.keep_alive_s
    if not ttl:
        return
    busy = {(p.device, p.model) for p in k.procs.values() if p.device and not p.state.done}
    for d in k.devices:
        for name, r in list(d.models.items()):
            if (d.name, name) not in busy and now - r.last_used > ttl and d.alive:
                del d.models[name]
                d.link.post("unload", name)
                k.log(f"model {name}: its replica on {d.name} unloaded, idle for {ttl:g} s (keep-alive)")


def unload(k: "Kernel", name: str) -> None:
    for d in k.devices:
        if d.models.pop(name, None) is not None and d.alive:
            d.link.post("unload", name)


def where(k: "Kernel", name: str) -> list[str]:
    """The devices serving a model, this kernel's own first."""
    return [k.device_name, *(d.name for d in k.devices if d.alive and name in d.models)]



def describe(k: "Kernel") -> list["DeviceInfo"]:
    """Every device's telemetry, this kernel's own first (the others' as they last sent it)."""
    from llmos.drivers.driver import DeviceInfo

    out = [own(k)]
    for d in k.devices:
        kind, _, index = d.name.partition(":")
        if d.alive and d.info is not None:
            out.append(d.info)
        else:
            out.append(DeviceInfo(name=d.name, kind=kind, index=int(index or 0), total_memory=0, free_memory=0,
                                  telemetry_error=d.lost_reason or "no telemetry yet"))
    return out


def pools(k: "Kernel", name: str = "", own: bool = True) -> list[tuple[str, str, MemInfo]]:
    """(model, device, its pool) of every KV pool (or of model `name`'s): this kernel's (unless
    not `own`), then the other devices' copies."""
    out = [(m.name, k.device_name, m.memory.meminfo()) for m in sorted(k.pools(), key=lambda m: m.name)
           if own and (not name or m.name == name)]
    for d in k.devices:
        out += [(n, d.name, r.mem) for n, r in sorted(d.models.items()) if d.alive and (not name or n == name)]
    return out


def kv_bytes(k: "Kernel", name: str, mem: MemInfo) -> int:
    """Bytes of a pool of `name`'s KV pages: a copy elsewhere has pages of the same size as here."""
    m = k.models.get(name)
    return 0 if m is None or not m.memory.pool.num_pages else m.kv_bytes * mem.total // m.memory.pool.num_pages


def own(k: "Kernel") -> "DeviceInfo":
    """This kernel's own device's telemetry, its index that of its --device label (cpu:1 is index 1)."""
    info = k.driver.describe()
    index = k.device_name.partition(":")[2]
    return dataclasses.replace(info, index=int(index)) if index.isdigit() else info
