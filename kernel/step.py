"""The token step: one forward pass over a model's pool, and what each sampled token does.

`step_model` asks the model's scheduler for this step's slices (decode tokens and prefill
chunks under the token budget), runs them through the driver in one batch, and accounts for
them; `emit` appends a sampled token to its process: output text, stop strings, EOS, max
tokens, a full context window, and the end of an interactive turn. Functions of the kernel
they are given; the kernel's own step loop (kernel/kernel.py) calls them.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from llmos.drivers.driver import SeqSlice, StepInput
from llmos.kernel.proc import Process, State
from llmos.kernel.text import Detokenizer

if TYPE_CHECKING:
    from llmos.kernel import loader
    from llmos.kernel.kernel import Kernel


def step_model(k: "Kernel", m: loader.LoadedModel, now: float, changed: set[int]) -> int:
    """One step of a model's pool: its processes and those of the LoRA models over it."""
    live = [p for p in k.procs.values() if not p.state.done and p.task is None
            and k.models[p.model].pool == m.name]
    if not live:
        return 0
    plan = m.scheduler.schedule(live, now, k.quota.allowance(live, now))
    for p in plan.over_quota:
        k._exit(p, State.KILLED, f"limit: KV pages over max_pages={p.limits.max_pages}")
        changed.add(p.pid)
    seqs = []
    for p, n in plan.runs:
        p.state = State.RUNNING
        p.admitted = p.admitted or now
        start = p.num_computed
        seqs.append(SeqSlice(p.pid, p.tokens[start:start + n], start, m.memory.page_table(p.pid),
                             start + n == len(p.tokens), p.sampling, k.models[p.model].adapter))
    moves = m.memory.ops.take()
    if not seqs and not moves:
        return 0
    try:
        sampled = k.driver.step(m.name, StepInput(seqs, moves))
    except Exception as e:  # noqa: BLE001 - a failed step ends its own batch, nothing more
        step_failed(k, m, plan, e, changed)
        return 0
    for p, n in plan.runs:
        p.num_computed += n
        p.last_run = now
        m.memory.publish(p.pid, p.tokens, p.num_computed)
        m.scheduler.account(p.owner, n)
        k.quota.charge(p.owner, n, now)
        if p.state == State.RUNNING:
            p.state = State.READY
        if p.pid in sampled:
            emit(k, m, p, sampled[p.pid])
            changed.add(p.pid)
        if not p.state.done:
            p.usage.pages_held = m.memory.pages_held(p.pid)
    return sum(n for _, n in plan.runs)


def step_failed(k: "Kernel", m: loader.LoadedModel, plan, error: Exception, changed: set[int]) -> None:
    """The driver failed a step: end the processes in it; those swapped out for it lost
    their pages' contents, so they start over by recompute."""
    k.log(f"model {m.name}: step failed: {type(error).__name__}: {error}", "error")
    for p, _ in plan.runs:
        k._exit(p, State.KILLED, f"driver error: {type(error).__name__}: {error}")
        changed.add(p.pid)
    for p in plan.preempted:
        if m.memory.is_swapped(p.pid):
            m.memory.free(p.pid)
            p.num_computed = 0


def emit(k: "Kernel", m: loader.LoadedModel, p: Process, token: int) -> None:
    """Append a sampled token: output text, stop rules, end of turn."""
    p.tokens.append(token)
    p.out_tokens.append(token)
    p.turn_tokens += 1
    p.usage.generated_tokens += 1
    if p.usage.ttft_s is None:
        p.usage.ttft_s = time.monotonic() - p.created
    eos = token in m.codec.eos and not p.stop.ignore_eos
    if not eos:
        before = len(p.stdout)
        p.stdout += k._detok.setdefault(p.pid, Detokenizer(m.codec)).step(p.out_tokens)
        if p.stop.stop and len(p.stdout) > before and _cut_stop(p, before):
            return end_turn(k, p, "stop")
    if eos:
        end_turn(k, p, "eos")
    elif p.turn_tokens >= p.stop.max_tokens:
        end_turn(k, p, "length")
    elif len(p.tokens) >= m.info.max_context:
        end_turn(k, p, "context window full")


def _cut_stop(p: Process, before: int) -> bool:
    start = max(p.turn_text_start, before - max(len(s) for s in p.stop.stop))
    hits = [i for i in (p.stdout.find(s, start) for s in p.stop.stop) if i >= 0]
    if hits:
        p.stdout = p.stdout[:min(hits)]
    return bool(hits)


def end_turn(k: "Kernel", p: Process, reason: str) -> None:
    if reason != "stop" and p.pid in k._detok:
        p.stdout += k._detok[p.pid].step(p.out_tokens, final=True)
    if p.interactive and reason != "context window full":
        p.state, p.reason = State.BLOCKED, reason
    else:
        k._exit(p, State.EXITED, reason)
