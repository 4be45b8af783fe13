"""Making processes: spawn (a prompt or a chat on a model), n choices of one prompt, fork
(a child that shares its parent's KV pages copy-on-write) and task processes."""
from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from llmos.kernel import accounting, devices, grammar, stdio, tasks
from llmos.kernel.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from llmos.kernel.models import manifest
from llmos.kernel.proc import Process, State
from llmos.syscalls.abi.spec import SamplingParams, SpawnSpec, SpecError, check_nice, check_text

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.models.loading import LoadedModel
    from llmos.kernel.users.cred import Cred

MAX_CHOICES = 16


def spawn(k: "Kernel", cred: "Cred", spec: SpawnSpec, ppid: int = 0) -> Process:
    """A new process running `spec`, owned by the caller (or, for an admin, by spec.owner)."""
    check_accepting(k)
    try:
        spec.check()
    except SpecError as e:
        raise InvalidArgument(str(e), getattr(e, "field", None)) from None
    spec = dataclasses.replace(spec, owner=cred.owner_for(spec.owner))
    cred.check_nice(spec.priority)
    m = k.model_for(cred, spec.model)
    spec = dataclasses.replace(manifest.apply(m.defaults, spec), model=m.name)  # the model's own defaults
    preamble: list[dict] = []
    if spec.messages is not None:
        if spec.interactive and spec.messages[-1]["role"] != "user":
            preamble, ids = list(spec.messages), []  # nothing to answer yet: wait for a user turn
        else:
            ids = m.codec.encode_chat(spec.messages, spec.tools)
    elif spec.prompt is not None:
        ids = m.codec.encode(spec.prompt)
    else:
        ids = list(spec.tokens or [])
    p = Process(pid=0, spec=spec, owner=spec.owner, ppid=ppid, tokens=ids, priority=spec.priority,
                preamble=preamble, adapter=m.adapter, kv_salt=m.kv_salt, model_digest=m.digest)
    p.took(False, len(ids))
    check(k, m, p)
    there = devices.place(k, m, p)
    if there is None:
        grammar.attach(m, p)
    k.admit(p, State.NEW if p.tokens else State.BLOCKED)
    accounting.started(k, p, len(p.tokens))
    if there is not None:
        devices.start(k, there, p)
    return p


def spawn_n(k: "Kernel", cred: "Cred", spec: SpawnSpec, n: int) -> list[Process]:
    """n choices of one prompt: a process and n - 1 forks of it, made with no step between,
    so the prompt's full pages are computed once and shared; choice i samples with seed + i.
    If one cannot be made, none is left behind."""
    if not 1 <= n <= MAX_CHOICES:
        raise InvalidArgument(f"n must be in [1, {MAX_CHOICES}], got {n}", "n")
    first = spawn(k, cred, spec)
    procs = [first]
    try:
        for i in range(1, n):
            s = first.sampling
            sampling = dataclasses.replace(s, seed=s.seed + i) if s.seed is not None else None
            procs.append(fork(k, cred, first.pid, sampling=sampling))
    except Exception:
        for p in procs:
            if not p.state.done:
                k.exit(p, State.KILLED, "another choice of its request could not be made")
            k.reap(cred, p.pid)
        raise
    return procs


def fork(k: "Kernel", cred: "Cred", pid: int, text: str | None = None, sampling: SamplingParams | None = None,
         max_tokens: int | None = None) -> Process:
    """A child that shares the parent's KV pages copy-on-write and goes on from its tokens."""
    check_accepting(k)
    parent = k.lookup(cred, pid)
    if parent.state.done:
        raise FailedPrecondition(f"pid {pid} has already {parent.state.value}; only a live process can fork")
    if parent.task is not None:
        raise FailedPrecondition(f"pid {pid} is a {parent.task.kind} process; only a token process can fork")
    if parent.incoming and parent.device:
        raise FailedPrecondition(f"pid {pid} is migrating to {parent.device}; fork it once it has arrived there")
    m = k.model(parent.model)
    stop = dataclasses.replace(parent.stop, stop=list(parent.stop.stop),
                               max_tokens=parent.stop.max_tokens if max_tokens is None else max_tokens)
    spec = dataclasses.replace(parent.spec, sampling=sampling or parent.sampling, stop=stop)
    try:
        spec.sampling.check()
        spec.stop.check()
        check_text(text or "", "text")
    except SpecError as e:
        raise InvalidArgument(str(e), getattr(e, "field", None)) from None
    child = Process(pid=0, spec=spec, owner=parent.owner, ppid=pid, tokens=list(parent.tokens),
                    priority=parent.priority, preamble=list(parent.preamble), adapter=parent.adapter,
                    kv_salt=parent.kv_salt, model_digest=parent.model_digest, device=parent.device,
                    chunks=[list(c) for c in parent.chunks])
    if text:
        more = stdio.next_turn(m, child, text) if parent.interactive else m.codec.encode_more(text)
        child.tokens += more
        child.took(False, len(more))
    check(k, m, child)
    grammar.fork(parent, child)
    k.admit(child, State.NEW if child.tokens else State.BLOCKED)
    accounting.started(k, child, len(child.tokens) - len(parent.tokens))
    if parent.pid in m.memory.tables:
        m.memory.fork(parent.pid, child.pid)
        child.num_computed = parent.num_computed
        child.usage.cached_tokens = child.num_computed
    elif child.device:  # it stays on its parent's device, where their pages are shared
        devices.forward(k, parent, "fork", child.pid, text, dataclasses.asdict(spec.sampling), spec.stop.max_tokens)
    k.log(f"pid {pid} forked pid {child.pid}")
    return child


def spawn_task(k: "Kernel", cred: "Cred", model: str, task: "tasks.Task", priority: int = 0,
               owner: str = "") -> Process:
    """A process that runs `task` (kernel/tasks.py) on `model` instead of sampling tokens."""
    check_accepting(k)
    m = k.model_for(cred, model)
    try:
        check_nice(priority)
    except SpecError as e:
        raise InvalidArgument(str(e), getattr(e, "field", None)) from None
    cred.check_nice(priority)
    owner = cred.owner_for(owner)
    p = Process(pid=0, spec=SpawnSpec(model=m.name, priority=priority, owner=owner), owner=owner, task=task,
                priority=priority, model_digest=m.digest)
    if not any(q.task is not None and not q.state.done for q in k.procs.values()):
        # Decode time spent while no task existed is no credit for the first one to come.
        k.device_share = tasks.DeviceShare()
    k.admit(p, State.READY)
    accounting.started(k, p, 0)
    return p


def check_accepting(k: "Kernel") -> None:
    if not k.accepting:
        raise Unavailable("llmosd is shutting down and takes no new work")


def check(k: "Kernel", m: "LoadedModel", p: Process) -> None:
    """Refuse, with the limit named, what could never run on this model, or what the owner's quota forbids."""
    stop = p.stop
    if not p.tokens and not p.interactive:
        raise InvalidArgument("the prompt is empty")
    bad = [t for t in p.tokens if not 0 <= t < m.info.vocab_size]
    if bad:
        raise InvalidArgument(f"token id {bad[0]} is outside the vocabulary [0, {m.info.vocab_size})")
    ctx = m.info.max_context
    if len(p.tokens) >= ctx:
        raise InvalidArgument(f"the prompt is {len(p.tokens)} tokens; the context window of {m.name} is {ctx}")
    pool = m.memory.pool
    need = -(-min(len(p.tokens) + stop.max_tokens, ctx) // pool.page_size)
    if need > pool.num_pages:
        raise ResourceExhausted(f"the process needs up to {need} KV pages ({len(p.tokens)} prompt + "
                                f"{stop.max_tokens} new tokens), but the pool holds only {pool.num_pages} "
                                f"pages of {pool.page_size} tokens")
    if p.limits.max_pages is not None and -(-len(p.tokens) // pool.page_size) > p.limits.max_pages:
        raise ResourceExhausted(f"the prompt alone needs {-(-len(p.tokens) // pool.page_size)} KV pages; "
                                f"max_pages is {p.limits.max_pages}")
    k.quota.check_admit(k, p, time.monotonic())
