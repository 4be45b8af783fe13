"""Kernel: owns the process table, the loaded models with their KV memory and schedulers,
and runs the step loop. It is single-threaded: callers that live on other threads go
through llmos.kernel.thread.KernelThread."""
from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from llmos.drivers.driver import QUANT_MODES, Driver, SamplingParams
from llmos.kernel import adapters, loader
from llmos.kernel.errors import (FailedPrecondition, InvalidArgument, KernelError, NotFound, Overloaded,
                                  ResourceExhausted)
from llmos.kernel.memory import MemInfo
from llmos.kernel.models import ModelStore
from llmos.kernel.proc import Limits, Process, Signal, State, StopRules
from llmos.kernel.quota import QuotaKeeper, Quotas
from llmos.kernel.sched import SchedConfig
from llmos.kernel.text import Detokenizer
from llmos.kernel import step as token_step
from llmos.kernel import tasks


@dataclass
class KernelConfig:
    """Kernel-wide settings."""

    page_size: int = 16
    kv_memory: int = 1 << 30       # bytes of KV pool per loaded model
    kv_pages: int | None = None    # overrides kv_memory when set
    swap_pages: int | None = None  # host swap slots per model; default: as many as the pool
    sched: SchedConfig = field(default_factory=SchedConfig)
    max_procs: int = 4096
    keep_exited: int = 1024        # finished processes kept readable before the oldest are reaped
    dmesg_lines: int = 2000
    quantize: str = "none"         # weights of models loaded without a mode of their own
    quotas: Quotas = field(default_factory=Quotas)  # per-user limits (kernel/quota.py)


class Kernel:
    """The process table, models and step loop of one llmos instance."""

    def __init__(self, driver: Driver, config: KernelConfig | None = None, store: ModelStore | None = None) -> None:
        self.driver = driver
        self.config = config or KernelConfig()
        self.store = store
        self.procs: dict[int, Process] = {}
        self.models: dict[str, loader.LoadedModel] = {}
        self.ring: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=self.config.dmesg_lines)
        self.listeners: list[Callable[[set[int]], None]] = []
        self._detok: dict[int, Detokenizer] = {}
        self._exited: collections.deque[int] = collections.deque()
        self._next_pid = 1
        self.steps = 0
        self.quota = QuotaKeeper(self.config.quotas)
        self.device_share = tasks.DeviceShare()  # device time of token steps against task units

    # --- logging ---------------------------------------------------------------------------
    def log(self, msg: str, level: str = "info") -> None:
        self.ring.append((time.time(), level, msg))

    # --- models ----------------------------------------------------------------------------
    def load_model(self, ref: str, name: str | None = None, dtype: str = "float32",
                   quantize: str | None = None) -> loader.LoadedModel:
        prep = self.prepare_model(ref, name, dtype, quantize)
        return prep if isinstance(prep, loader.LoadedModel) else self.install_model(prep)

    def prepare_model(self, ref: str, name: str | None = None, dtype: str = "float32",
                      quantize: str | None = None) -> "loader.Prepared | loader.LoadedModel":
        """The slow half of a load (convert, read weights, quantize); callable from any thread.
        Returns the loaded model itself when the name is already serving."""
        if self.store is None:
            raise FailedPrecondition("this kernel has no model store to load from")
        try:
            stored = self.store.adapter(ref)
            if stored is not None:  # a LoRA model, served over its base (kernel/adapters.py)
                name = name or loader.default_name(ref)
                return adapters.prepare(self, stored, name, dtype, quantize)
            quantize = loader.check_quantize(self.config.quantize if quantize is None else quantize)
            name = name or loader.default_name(ref, quantize)
            if name in self.models:
                return self.models[name]
            return loader.prepare(self, ref, name, dtype, quantize)
        except KernelError:
            raise
        except Exception as e:  # noqa: BLE001 - unreadable: a corrupt config, weights or tokenizer, a bad path
            if name and name not in self.models:
                self.driver.unload(name)  # the weights it read before failing
            raise InvalidArgument(f"cannot load the model {ref[:200]!r}: {type(e).__name__}: "
                                  f"{' '.join(str(e).split())[:500]}") from None

    def install_model(self, prep: loader.Prepared) -> loader.LoadedModel:
        """The quick half: a KV pool and a scheduler for a prepared model."""
        if prep.name not in self.models:
            self.models[prep.name] = (adapters.install if prep.base else loader.install)(self, prep)
        return self.models[prep.name]

    def adopt_model(self, name: str, model, tokenizer) -> loader.LoadedModel:
        """Serve an already-built transformers model (tests and in-process use)."""
        m = loader.adopt(self, name, model, tokenizer)
        self.models[name] = m
        return m

    def unload_model(self, name: str) -> None:
        self._model(name)  # NotFound names what is loaded
        live = [p.pid for p in self.procs.values() if p.model == name and not p.state.done]
        if live:
            raise FailedPrecondition(f"model {name!r} is in use by {len(live)} live process(es), e.g. pid {live[0]}")
        adapters.check_unload(self, name)
        self.driver.unload(name)
        del self.models[name]
        self.log(f"unloaded model {name}")

    def meminfo(self, model: str) -> MemInfo:
        return self._model(model).memory.meminfo()

    # --- processes ---------------------------------------------------------------------------
    def spawn(self, model: str, prompt: str | None = None, messages: list[dict] | None = None,
              tokens: list[int] | None = None, sampling: SamplingParams | None = None,
              stop: StopRules | None = None, limits: Limits | None = None, priority: int = 0,
              owner: str = "root", interactive: bool = False, ppid: int = 0) -> Process:
        m = self._model(model)
        given = sum(1 for x in [prompt, messages, tokens] if x is not None)
        if given > 1 or (given == 0 and not interactive):
            raise InvalidArgument("give exactly one of prompt, messages or tokens "
                                  "(an interactive process may give none and wait for input)")
        preamble: list[dict] = []
        if messages is not None:
            _check_messages(messages)
            if interactive and messages[-1]["role"] != "user":
                preamble, ids = list(messages), []  # nothing to answer yet: wait for a user turn
            else:
                ids = m.codec.encode_chat(messages)
        elif prompt is not None:
            ids = m.codec.encode(prompt)
        else:
            ids = list(tokens or [])
        p = Process(pid=0, model=model, tokens=ids, ppid=ppid, owner=owner, priority=priority,
                    sampling=sampling or SamplingParams(), stop=stop or StopRules(), limits=limits or Limits(),
                    interactive=interactive, preamble=preamble, kv_salt=m.kv_salt)
        self._check_spawn(m, p)
        return self._admit(p, State.NEW if p.tokens else State.BLOCKED)

    def fork(self, pid: int, text: str | None = None, sampling: SamplingParams | None = None,
             max_tokens: int | None = None) -> Process:
        """A child that shares the parent's KV pages copy-on-write and goes on from its tokens."""
        parent = self._proc(pid)
        if parent.state.done:
            raise FailedPrecondition(f"pid {pid} has already {parent.state.value}; only a live process can fork")
        m = self._model(parent.model)
        child = Process(pid=0, model=parent.model, tokens=list(parent.tokens), ppid=pid, owner=parent.owner,
                        priority=parent.priority, sampling=sampling or parent.sampling,
                        stop=StopRules(max_tokens if max_tokens is not None else parent.stop.max_tokens,
                                       list(parent.stop.stop), parent.stop.ignore_eos),
                        limits=parent.limits, interactive=parent.interactive, kv_salt=parent.kv_salt)
        if text and parent.interactive:
            child.tokens += m.codec.user_turn(text, after_eos=child.tokens[-1] in m.codec.eos)
        elif text:
            child.tokens += m.codec.encode_more(text)
        self._check_spawn(m, child)
        self._admit(child)
        if parent.pid in m.memory.tables:
            m.memory.fork(parent.pid, child.pid)
            child.num_computed = parent.num_computed
            child.usage.cached_tokens = parent.num_computed
        self.log(f"pid {pid} forked pid {child.pid}")
        return child

    def write(self, pid: int, text: str) -> None:
        """Append a user turn to an interactive process's stdin."""
        p = self._proc(pid)
        if not p.interactive:
            raise FailedPrecondition(f"pid {pid} is not interactive; spawn it with interactive=true to write to it")
        if p.state.done:
            raise FailedPrecondition(f"pid {pid} has already {p.state.value}")
        if p.state != State.BLOCKED:
            raise FailedPrecondition(f"pid {pid} is still answering (state {p.state.value}); wait for it to block")
        m = self._model(p.model)
        if p.tokens:
            new = m.codec.user_turn(text, after_eos=p.tokens[-1] in m.codec.eos)
        else:  # the first turn of a process that started waiting for input
            new = m.codec.encode_chat(p.preamble + [{"role": "user", "content": text}])
        if len(p.tokens) + len(new) + 1 > m.info.max_context:
            raise ResourceExhausted(f"pid {pid}: the conversation would exceed the context window "
                                    f"({len(p.tokens) + len(new)} of {m.info.max_context} tokens)")
        pool = m.memory.pool  # a process larger than the whole pool could never run: it would preempt itself forever
        need = -(-min(len(p.tokens) + len(new) + p.stop.max_tokens, m.info.max_context) // pool.page_size)
        if need > pool.num_pages:
            raise ResourceExhausted(f"pid {pid}: the conversation and its answer need up to {need} KV pages, "
                                    f"but the pool holds only {pool.num_pages} pages of {pool.page_size} tokens")
        self.quota.check_write(self, p, len(new), time.monotonic())
        self._feed(p, new)
        self._notify({pid})

    def _feed(self, p: Process, new: list[int]) -> None:
        if not p.tokens:
            p.usage.prompt_tokens = len(new)
        p.tokens += new
        p.turn_tokens = 0
        p.turn_text_start = len(p.stdout)
        p.state = State.READY

    def signal(self, pid: int, sig: Signal | str) -> Process:
        p = self._proc(pid)
        try:
            sig = Signal(sig)
        except ValueError:
            raise InvalidArgument(f"unknown signal {sig!r}; use TERM, KILL, STOP or CONT") from None
        if p.state.done:
            return p
        if sig in (Signal.TERM, Signal.KILL):
            self._exit(p, State.KILLED, f"signal {sig.value}")
        elif sig == Signal.STOP:
            p.resume_state = p.state if p.state != State.RUNNING else State.READY
            p.state = State.STOPPED
        elif p.state == State.STOPPED:
            p.state = p.resume_state
        if p.task is not None and sig in (Signal.STOP, Signal.CONT):
            tasks.forward_signal(p.task, self, sig.value)
        self._notify({pid})
        return p

    def reap(self, pid: int) -> Process:
        """Forget a finished process (its output stays readable until then)."""
        p = self._proc(pid)
        if not p.state.done:
            raise FailedPrecondition(f"pid {pid} is still {p.state.value}")
        del self.procs[pid]
        self._notify({pid})
        return p

    def has_work(self) -> bool:
        now = time.monotonic()  # work held back by its owner's tokens-per-minute quota waits
        return any((p.runnable and p.task is not None) or
                   (p.runnable and p.owed > 0 and not self.quota.throttled(p.owner, now)) for p in self.procs.values())

    # --- recovery: kernel/journal.py rebuilds processes after a crash through these ------------------
    def restore(self, p: Process) -> None:
        """Put a journaled process back under its own pid; new pids continue above it."""
        if p.pid in self.procs:
            raise FailedPrecondition(f"pid {p.pid} is already in the process table")
        self.procs[p.pid] = p
        self.reserve_pids(p.pid + 1)
        p.kv_salt = self.models[p.model].kv_salt if p.model in self.models else 0

    def reserve_pids(self, next_pid: int) -> None:
        """New pids start at next_pid or above (pids of reaped processes are never reused)."""
        self._next_pid = max(self._next_pid, next_pid)

    def replay(self, p: Process, tokens: list[int], generated: bool) -> None:
        """Re-append journaled tokens: input (a user turn), or generated output, whose text,
        stop strings and turn ends then come out exactly as they did the first time."""
        if not generated:
            return self._feed(p, tokens)
        m = self._model(p.model)
        for t in tokens:
            token_step.emit(self, m, p, t)

    def end(self, p: Process, state: State, reason: str) -> None:
        """End a restored process as its journal says it ended (a signal, a limit, an error)."""
        self._exit(p, state, reason)

    # --- the step loop ---------------------------------------------------------------------------
    def step(self) -> int:
        """One scheduling round over every model; returns the number of tokens computed."""
        now = time.monotonic()
        changed: set[int] = set()
        for p in list(self.procs.values()):
            if p.limits.max_wall_s is not None and not p.state.done and now - p.created > p.limits.max_wall_s:
                self._exit(p, State.KILLED, f"limit: wall time over {p.limits.max_wall_s:g} s")
                changed.add(p.pid)
        total = 0
        for m in list(self.models.values()):
            total += token_step.step_model(self, m, now, changed)
        if total:
            self.device_share.add(task=False, seconds=time.monotonic() - now)
        tasks.run_unit(self, now, token_work=total > 0, changed=changed)
        self.steps += 1
        if changed:
            self._notify(changed)
        return total

    def run_until_idle(self, max_steps: int = 1_000_000) -> None:
        for _ in range(max_steps):
            if not self.has_work():
                return
            self.step()

    def spawn_task(self, model: str, task: "tasks.Task", priority: int = 0, owner: str = "root") -> Process:
        """A process that runs `task` (kernel/tasks.py) on `model` instead of sampling tokens."""
        self._model(model)
        if not -20 <= priority <= 19:
            raise InvalidArgument(f"priority (nice) must be in [-20, 19], got {priority}")
        p = Process(pid=0, model=model, tokens=[], owner=owner, priority=priority, task=task)
        if not any(q.task is not None and not q.state.done for q in self.procs.values()):
            # Decode time spent while no task existed is no credit for the first one to come.
            self.device_share = tasks.DeviceShare()
        return self._admit(p, State.READY)

    def _exit(self, p: Process, state: State, reason: str) -> None:
        p.exit(state, reason)
        if p.task is not None:
            try:
                p.task.close(self, p, reason)
            except Exception as e:  # noqa: BLE001 - the process is ending anyway
                self.log(f"pid {p.pid}: closing its task failed: {type(e).__name__}: {e}", "error")
        m = self.models.get(p.model)
        if m is not None:
            m.memory.free(p.pid)
        p.usage.pages_held = 0
        self._detok.pop(p.pid, None)
        self.log(f"pid {p.pid} {state.value}: {reason}")
        # Finished processes stay readable, but only the newest keep_exited of them.
        self._exited.append(p.pid)
        while len(self._exited) > self.config.keep_exited:
            old = self._exited.popleft()
            if old in self.procs and self.procs[old].state.done:
                del self.procs[old]
                self._notify({old})

    def _admit(self, p: Process, state: State = State.NEW) -> Process:
        live = sum(1 for q in self.procs.values() if not q.state.done)
        if live >= self.config.max_procs:
            raise Overloaded(f"process table full: {live} live processes (max_procs={self.config.max_procs})")
        p.pid = self._next_pid
        self._next_pid += 1
        p.usage.prompt_tokens = len(p.tokens)
        p.state = state  # NEW until the scheduler first gives it tokens
        if state == State.BLOCKED:
            p.reason = "waiting for input"
        self.procs[p.pid] = p
        self._notify({p.pid})
        return p

    def _check_spawn(self, m: loader.LoadedModel, p: Process) -> None:
        loader.check_request(m, p, self.config)
        self.quota.check_admit(self, p, time.monotonic())

    def _notify(self, pids: set[int]) -> None:
        for fn in self.listeners:
            fn(pids)

    def model(self, name: str) -> loader.LoadedModel:
        """A loaded model by name; NotFound names what is loaded."""
        return self._model(name)

    def _model(self, name: str) -> loader.LoadedModel:
        if name not in self.models:
            loaded = ", ".join(sorted(self.models)) or "none"
            base, _, mode = name.rpartition(":")
            hint = f"; load it with `llmos load {base} --quantize {mode}`" if base and mode in QUANT_MODES else ""
            raise NotFound(f"model {name!r} is not loaded (loaded: {loaded}){hint}")
        return self.models[name]

    def _proc(self, pid: int) -> Process:
        if pid not in self.procs:
            raise NotFound(f"no process with pid {pid}")
        return self.procs[pid]


def _check_messages(messages: list[dict]) -> list[dict]:
    if not messages:
        raise InvalidArgument("messages is empty; give at least one message")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("content"), str) or \
                msg.get("role") not in ("system", "user", "assistant", "tool"):
            raise InvalidArgument(f"message {i} needs a role (system, user, assistant or tool) and string content")
    return messages
