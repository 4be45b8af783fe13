"""Kernel: the process table, the loaded models with their KV pools and schedulers, and the
step loop of one llmos instance.

Its methods are the kernel's operations, each a call into the file that owns the idea, like
the `// proc.c` sections of xv6's defs.h: read this class to see everything the kernel does.
Every operation a caller makes takes the caller's Cred (kernel/users/cred.py), and the rules
it implies (visibility, owners, admin-only operations) are decided there and here, never in
a transport. The kernel is single-threaded: callers on other threads go through
llmos.kernel.thread.KernelThread.
"""
from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from llmos.drivers.driver import Driver
from llmos.kernel import accounting, grammar
from llmos.kernel import pipe as pipes
from llmos.kernel import devices, migrate, news, signals, spawn, stdio, step, table, tasks
from llmos.kernel.errors import FailedPrecondition, InvalidArgument, NotFound
from llmos.kernel.events import Event, Listener, ShutdownRequested
from llmos.kernel.memory import MemInfo
from llmos.kernel.models import loading, versions
from llmos.kernel.models.loading import LoadedModel, Prepared
from llmos.kernel.models.registry import Version
from llmos.kernel.models.store import ModelStore
from llmos.kernel.proc import Process, Signal, State
from llmos.kernel.sched import SchedConfig
from llmos.kernel.users.cred import Cred
from llmos.kernel.users.quota import QuotaKeeper, Quotas, UserLimits
from llmos.kernel.users.tokens import TokenInfo, TokenStore
from llmos.syscalls.abi.spec import SamplingParams, SpawnSpec


@dataclass
class KernelConfig:
    """Kernel-wide settings."""

    page_size: int = 16
    kv_memory: int | None = None   # bytes of KV pool per loaded model; None: the device's (models/pool_size.py)
    kv_pages: int | None = None    # overrides kv_memory when set
    swap_memory: int | None = None  # bytes of host swap per model; None: as many pages as the pool, bounded
    swap_pages: int | None = None  # host swap slots per model; overrides swap_memory
    sched: SchedConfig = field(default_factory=SchedConfig)
    max_procs: int = 4096
    keep_exited: int = 1024        # finished processes kept readable before the oldest are reaped
    dmesg_lines: int = 2000
    quantize: str = "none"         # weights of models loaded without a mode of their own
    quotas: Quotas = field(default_factory=Quotas)  # per-user limits (kernel/users/quota.py)
    term_grace_s: float = 10.0     # a process still running this long after TERM is killed
    max_unit_tokens: int = 2048    # most tokens one unit of task work may compute (a micro-batch, a window)
    max_unit_s: float = 30.0       # a task whose unit takes longer is ended: the decode streams wait for it
    data_dirs: tuple[str, ...] = ()  # where an admin may have llmosd read data files (none by default)
    tool_wait_ttl_s: float = 60.0  # a process blocked on a tool's result keeps its pages this long
    placement: str = "cost"        # how spawns choose among devices: cost (kernel/placement.py) or round-robin
    keep_alive_s: float = 0.0      # a model's copy on another device unloads after this long unused; 0: never


class Kernel:
    """The process table, models and step loop of one llmos instance."""

    def __init__(self, driver: Driver, config: KernelConfig | None = None, store: ModelStore | None = None,
                 tokens: TokenStore | None = None) -> None:
        # --- set at boot, never replaced
        self.driver = driver
        self.config = config or KernelConfig()
        self.store = store      # the model store (kernel/models/store.py)
        self.tokens = tokens    # the bearer tokens (kernel/users/tokens.py), if this kernel has users over TCP
        self.listeners: list[Listener] = []  # called on the kernel thread with each batch of events
        self.devices: list[devices.Device] = []  # other devices' kernels running processes of this table
        own = str(getattr(driver, "device", "cpu"))
        self.device_name = own if ":" in own else f"{own}:0"  # this kernel's own device: cpu:0, cuda:1
        # --- the kernel thread only
        self.procs: dict[int, Process] = {}
        self.models: dict[str, LoadedModel] = {}
        self.pipes: dict[int, pipes.Pipe] = {}
        self.ring: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=self.config.dmesg_lines)
        self.quota = QuotaKeeper(self.config.quotas)
        self.device_share = tasks.DeviceShare()  # device time of token steps against task units
        self.device_time = accounting.DeviceTime()  # device seconds since boot (kernel/accounting.py)
        self.accepting = True   # False once shutdown has begun: no new processes
        self.steps = 0
        self.drained: frozenset[str] = frozenset()  # devices placement passes over (kernel/devices.py)
        self.placed_prefixes: dict[str, dict[int, None]] = {}  # device -> prefix hashes placed there lately
        self.placed_count = 0
        self.held: set[int] = set()  # pids stopped on other devices while their owners are over quota (news.py)
        self.exited: collections.deque[int] = collections.deque()  # finished pids, oldest first (table.py)
        self.next_pid = 1
        self._next_pipe = 1
        self._events: list[Event] = []
        self._batching = 0

    # --- processes (kernel/spawn.py, stdio.py, signals.py, pipe.py) --------------------------------
    def spawn(self, cred: Cred, spec: SpawnSpec, ppid: int = 0) -> Process:
        """A new process running spec, owned by the caller (an admin may name spec.owner);
        `ppid` is for the kernel's own (an eval's children)."""
        return spawn.spawn(self, cred, spec, ppid)

    def spawn_n(self, cred: Cred, spec: SpawnSpec, n: int) -> list[Process]:
        """n choices of one prompt: a process and n - 1 forks of it, sharing its pages."""
        return spawn.spawn_n(self, cred, spec, n)

    def fork(self, cred: Cred, pid: int, text: str | None = None, sampling: SamplingParams | None = None,
             max_tokens: int | None = None) -> Process:
        """A child sharing pid's KV pages copy-on-write, optionally with more input."""
        return spawn.fork(self, cred, pid, text, sampling, max_tokens)

    def spawn_task(self, cred: Cred, model: str, task: "tasks.Task", priority: int = 0, owner: str = "") -> Process:
        """A process that runs `task` (kernel/tasks.py) on `model` instead of sampling tokens."""
        return spawn.spawn_task(self, cred, model, task, priority, owner)

    def write(self, cred: Cred, pid: int, text: str, role: str = "user") -> int:
        """A turn on an interactive process's stdin (a user's, or a tool result with
        role="tool"); the offset where its answer begins."""
        return stdio.write(self, cred, pid, text, role)

    def signal(self, cred: Cred, pid: int, sig: Signal | str) -> Process:
        """TERM, KILL, STOP or CONT."""
        return signals.signal(self, cred, pid, sig)

    def renice(self, cred: Cred, pid: int, nice: int) -> Process:
        """A new nice value: anyone may raise theirs; only an admin may go below 0 or below
        what the process started with."""
        return signals.renice(self, cred, pid, nice)

    def detach(self, cred: Cred, pid: int) -> Process:
        """Nobody will wait for pid: it is reaped as soon as it ends (now, if it has)."""
        return table.detach(self, cred, pid)

    def pipe(self, cred: Cred, src: int, dst: int) -> pipes.Pipe:
        """src's output into interactive dst's stdin when src ends."""
        return pipes.open_pipe(self, cred, src, dst)

    def reap(self, cred: Cred, pid: int) -> Process:
        """Forget a finished process (its output stays readable until then)."""
        return table.reap(self, cred, pid)

    def lookup(self, cred: Cred, pid: int) -> Process:
        """The process pid, if the caller may see it; NotFound, as for no such pid, if not."""
        p = self.procs.get(pid)
        cred.check_visible(pid, p.owner if p is not None else None)
        return p

    def ps(self, cred: Cred, model: str = "", states: Sequence[str] = (), owner: str = "",
           live_only: bool = False) -> list[Process]:
        """The processes the caller may see, filtered."""
        return table.ps(self, cred, model, states, owner, live_only)

    def live(self, model: str | None = None) -> int:
        """Live processes, all of them or those on one model."""
        return sum(1 for p in self.procs.values() if not p.state.done and (model is None or p.model == model))

    # --- models (kernel/models/) -----------------------------------------------------------------
    def load_model(self, cred: Cred, ref: str, name: str | None = None, dtype: str = "float32",
                   quantize: str | None = None, prune: float = 0.0, prune_heads: float = 0.0) -> LoadedModel:
        """Load and serve a model (both halves; use the halves to keep the kernel thread free)."""
        return self.install_model(self.prepare_model(cred, ref, name, dtype, quantize, prune, prune_heads))

    def prepare_model(self, cred: Cred, ref: str, name: str | None = None, dtype: str = "float32",
                      quantize: str | None = None, prune: float = 0.0,
                      prune_heads: float = 0.0) -> "Prepared | LoadedModel":
        """The slow half of a load (convert, read weights, prune, quantize); callable from any
        thread. Admins load new weights; anyone a preset of weights already loaded."""
        spawn.check_accepting(self)
        return loading.prepare_model(self, cred, ref, name, dtype, quantize, prune, prune_heads)

    def install_model(self, prep: "Prepared | LoadedModel") -> LoadedModel:
        """The quick half: a KV pool and a scheduler for a prepared model."""
        return loading.install_model(self, prep)

    def adopt_model(self, name: str, model, tokenizer) -> LoadedModel:
        """Serve an already-built transformers model (tests and in-process use)."""
        return loading.adopt(self, name, model, tokenizer)

    def unload_model(self, cred: Cred, name: str) -> None:
        """Admins unload any model; a user only a LoRA model of their own."""
        m = self.model_for(cred, name)
        if not cred.admin and not m.owner:
            cred.check("unload")
        cred.check_owns(f"model {name!r}", m.owner)
        loading.unload_model(self, name)
        devices.unload(self, m.name)

    def model(self, name: str) -> LoadedModel:
        """A loaded model by name (`NAME:latest` is `NAME`), for the kernel's own use; NotFound
        names what is loaded."""
        m = self.models.get(name.removesuffix(":latest"))
        if m is None:
            raise loading.not_loaded(self, name)
        return m

    def model_for(self, cred: Cred, name: str) -> LoadedModel:
        """A loaded model the caller may use: another user's model does not exist for them."""
        m = self.models.get(name.removesuffix(":latest"))
        if m is None or not cred.sees_model(m.owner):
            raise loading.not_loaded(self, name, cred.sees_model)
        return m

    def list_models(self, cred: Cred) -> tuple[list[tuple[LoadedModel, int, str]], list[versions.Entry]]:
        """What the caller may see: (model, live processes, its source) for each loaded model,
        and each stored version under each of its names. Only admins see where models were
        loaded from."""
        loaded = [(m, self.live(n), m.source if cred.admin else "") for n, m in sorted(self.models.items())
                  if cred.sees_model(m.owner)]
        return loaded, versions.entries(self, cred)

    def create_model(self, cred: Cred, ref: str, manifest: str) -> versions.Entry:
        """Build version NAME[:TAG] from a manifest file's text (kernel/models/manifest.py);
        served at once when it is a preset of a loaded model."""
        return versions.create(self, cred, ref, manifest)

    def tag_model(self, cred: Cred, src: str, dst: str) -> versions.Entry:
        """Name a stored version again, sharing its weights."""
        return versions.tag(self, cred, src, dst)

    def remove_model(self, cred: Cred, ref: str) -> tuple[Version, int, int]:
        """Remove a tag; its blobs go once nothing refers to them. (version, versions removed, bytes freed)"""
        return versions.remove(self, cred, ref)

    def show_model(self, cred: Cred, ref: str) -> tuple[versions.Entry, str]:
        """A stored version and the manifest file that describes it."""
        return versions.show(self, cred, ref)

    # --- devices (kernel/devices.py) ----------------------------------------------------------------
    def replica_targets(self, cred: Cred, replicas: int = 0, names: Sequence[str] = ()) -> list[devices.Device]:
        """The other devices a load with `replicas` copies (or on the named devices) adds copies on;
        copies beyond this kernel's own device are an admin's to load."""
        out = devices.targets(self, replicas, names)
        if out:
            cred.check("load")
        return out

    def add_replicas(self, loaded: list[tuple[devices.Device, str, devices.Replica]]) -> None:
        """Serve the copies devices.load_replicas loaded: placement may now choose them."""
        devices.add_replicas(self, loaded)

    def migrate(self, cred: Cred, pid: int, to: str, by: str = "auto") -> tuple[Process, str, str]:
        """Move a live process to another device at this step boundary (its owner or an admin),
        by its KV pages or its tokens (kernel/migrate.py); (the process, the device it left, how)."""
        p = self.lookup(cred, pid)
        return (p, *migrate.migrate(self, p, to, by))

    def drain(self, cred: Cred, device: str, undo: bool = False) -> list[tuple[int, str]]:
        """Move every process off a device and place nothing new there (undo: place there again)."""
        cred.check("drain")
        return migrate.drain(self, device, undo)

    def where(self, name: str) -> list[str]:
        """The devices holding a copy of a loaded model, this kernel's own first."""
        return devices.where(self, name) if self.devices else [self.device_name]

    def meminfo(self, cred: Cred, model: str) -> MemInfo:
        return self.model_for(cred, model).memory.meminfo()

    def memory_map(self, cred: Cred, model: str = "") -> list[tuple[str, str, MemInfo]]:
        """(model, device, pool) of every KV pool the caller may see, this kernel's and the other
        devices'; or of one model (a LoRA model's is its base's)."""
        if model:
            m = self.model_for(cred, model)
            return [(model, self.device_name, m.memory.meminfo()), *devices.pools(self, m.name, own=False)]
        return [(n, d, mem) for n, d, mem in devices.pools(self) if cred.sees_model(self.models[n].owner)]

    # --- the system ------------------------------------------------------------------------------
    def log(self, msg: str, level: str = "info") -> None:
        self.ring.append((time.time(), level, msg))

    def dmesg(self, cred: Cred, since: float = 0.0, limit: int = 0) -> list[tuple[float, str, str]]:
        """The kernel log's last `limit` lines (0: all) since a unix time."""
        cred.check("dmesg")
        if limit < 0:
            raise InvalidArgument(f"limit must be 0 (all) or positive, got {limit}")
        lines = [line for line in self.ring if line[0] >= since]
        return lines[-limit:] if limit else lines

    def request_shutdown(self, cred: Cred, grace: float | None = None) -> None:
        """Ask the daemon to stop (a ShutdownRequested event); `grace` overrides its grace period."""
        cred.check("shutdown")
        if grace is not None and not grace >= 0:
            raise InvalidArgument(f"grace must be 0 or more seconds, got {grace}")
        self.emit(ShutdownRequested(grace))

    def close(self) -> None:
        """Shutdown has begun: take no new processes."""
        self.accepting = False

    # --- users (kernel/users/) -------------------------------------------------------------------
    def whoami(self, cred: Cred) -> tuple[UserLimits, UserLimits]:
        """The caller's quota limits and what they use of each now."""
        return self.quota.quotas.limits(cred.user), self.quota.usage(self, cred.user, time.monotonic())

    def create_token(self, cred: Cred, name: str, user: str = "", admin: bool = False) -> tuple[TokenInfo, str]:
        """A new bearer token and its secret (shown only now)."""
        return self._token_store(cred).create(name, user, admin)

    def list_tokens(self, cred: Cred) -> list[TokenInfo]:
        return self._token_store(cred).list()

    def revoke_token(self, cred: Cred, name_or_id: str) -> TokenInfo:
        info = self._token_store(cred).revoke(name_or_id)
        if info is None:
            raise NotFound(f"no token named or numbered {name_or_id!r}")
        return info

    def usage_query(self, cred: Cred, user: str = "", model: str = "", since: str = "", by: str = "",
                    now: float | None = None) -> "accounting.UsageQuery":
        """What the caller may read of the usage records (kernel/accounting.py): their own, or
        for an admin anyone's; the daemon's usage store answers it."""
        return accounting.usage_query(cred, user, model, since, by, time.time() if now is None else now)

    def _token_store(self, cred: Cred) -> TokenStore:
        cred.check("tokens")
        if self.tokens is None:
            raise FailedPrecondition("this daemon has no token store")
        return self.tokens

    # --- the step loop ---------------------------------------------------------------------------
    def step(self) -> int:
        """One round: each KV pool schedules, runs one forward pass and applies what it
        sampled; then at most one unit of task work. Returns the tokens computed."""
        now = time.monotonic()
        total = 0
        with self.batch():
            news.poll(self)
            step.enforce_time_limits(self, now)
            grammar.poll(self)
            for m in self.pools():
                total += step.pool_step(self, m, now)
            if total:
                took = time.monotonic() - now
                self.device_share.add(task=False, seconds=took)
                self.device_time.step_seconds += took
            tasks.run_unit(self, now, token_work=total > 0)
            self.steps += 1
        return total

    def run_until_idle(self, max_steps: int = 1_000_000) -> None:
        for _ in range(max_steps):
            if not self.has_work():
                return
            self.step()

    def has_work(self) -> bool:
        now = time.monotonic()  # work held back by its owner's tokens-per-minute quota waits
        return devices.has_news(self) or any(
            (p.runnable and p.task is not None) or
            (p.runnable and p.owed > 0 and p.here and not self.quota.throttled(p.owner, now))
            for p in self.procs.values())

    def pools(self) -> list[LoadedModel]:
        """The models that own a KV pool (LoRA models run in their base's)."""
        return [m for m in self.models.values() if not m.base]

    def pool_procs(self, m: LoadedModel) -> list[Process]:
        """The live token processes scheduled in m's pool: its own and its LoRA models'."""
        return [p for p in self.procs.values() if not p.state.done and p.task is None and p.grammar_job is None
                and p.here and self.models[p.model].pool == m.name]

    # --- for the kernel's own files: the process table and the events --------------------------------
    def admit(self, p: Process, state: State = State.NEW) -> Process:
        """Give a new process a pid and a place in the table."""
        return table.admit(self, p, state)

    def exit(self, p: Process, state: State, reason: str) -> None:
        """End a process (like xv6's exit): its pages go back, it stays readable until reaped."""
        table.exit(self, p, state, reason)

    def emit(self, event: Event) -> None:
        """Tell the listeners: at once, or at the end of the batch (a step) in progress."""
        self._events.append(event)
        if not self._batching:
            self._flush()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Hold events until the end of the block, then deliver them together."""
        self._batching += 1
        try:
            yield
        finally:
            self._batching -= 1
            if not self._batching:
                self._flush()

    def _flush(self) -> None:
        self._batching += 1  # a pipe that writes emits more: they join this batch
        try:
            if self.pipes:
                pipes.pump(self)
        finally:
            self._batching -= 1
        events, self._events = self._events, []
        if events:
            for fn in self.listeners:
                fn(events)

    def new_pipe_id(self) -> int:
        self._next_pipe += 1
        return self._next_pipe - 1

    # --- recovery: kernel/recovery.py rebuilds processes after a crash through these --------------------
    def restore(self, p: Process) -> None:
        """Put a journaled process back under its own pid; new pids continue above it."""
        table.restore(self, p)

    def reserve_pids(self, next_pid: int) -> None:
        """New pids start at next_pid or above (pids of reaped processes are never reused)."""
        self.next_pid = max(self.next_pid, next_pid)
