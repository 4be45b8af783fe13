"""A process's stdin and stdout: user turns written to an interactive process, and what
each generated token does to its output (text, stop strings, end of sequence, max tokens, a
full context window, the end of an interactive turn)."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from llmos.kernel.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from llmos.kernel.events import Input, Output, StateChanged
from llmos.kernel.proc import Process, State
from llmos.kernel.text import Detokenizer
from llmos.syscalls.abi.spec import SpecError, check_text

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.models.loading import LoadedModel
    from llmos.kernel.users.cred import Cred


# --- stdin ------------------------------------------------------------------------------------------
def write(k: "Kernel", cred: "Cred", pid: int, text: str) -> int:
    """Append a user turn to an interactive process's stdin; returns the output offset
    where the answer to it begins."""
    return write_turn(k, k.lookup(cred, pid), text)


def write_turn(k: "Kernel", p: Process, text: str) -> int:
    """write() for a process already looked up (a pipe writes through this too)."""
    if not p.interactive:
        raise FailedPrecondition(f"pid {p.pid} is not interactive; spawn it with interactive=true to write to it")
    if p.state.done:
        raise FailedPrecondition(f"pid {p.pid} has already {p.state.value}")
    if p.state != State.BLOCKED:
        raise FailedPrecondition(f"pid {p.pid} is still answering (state {p.state.value}); wait for it to block")
    try:
        check_text(text, "text")
    except SpecError as e:
        raise InvalidArgument(str(e), "text") from None
    m = k.model(p.model)
    new = next_turn(m, p, text)
    if len(p.tokens) + len(new) + 1 > m.info.max_context:
        raise ResourceExhausted(f"pid {p.pid}: the conversation would exceed the context window "
                                f"({len(p.tokens) + len(new)} of {m.info.max_context} tokens)")
    pool = m.memory.pool  # a process larger than the whole pool could never run: it would preempt itself forever
    need = -(-min(len(p.tokens) + len(new) + p.stop.max_tokens, m.info.max_context) // pool.page_size)
    if need > pool.num_pages:
        raise ResourceExhausted(f"pid {p.pid}: the conversation and its answer need up to {need} KV pages, "
                                f"but the pool holds only {pool.num_pages} pages of {pool.page_size} tokens")
    k.quota.check_write(k, p, len(new), time.monotonic())
    feed(k, p, new)
    return p.turn_text_start


def next_turn(m: "LoadedModel", p: Process, text: str) -> list[int]:
    """The tokens that open a user turn of `text` after what p holds, and the answer after it."""
    if p.tokens:
        return m.codec.user_turn(text, after_eos=p.tokens[-1] in m.codec.eos)
    return m.codec.encode_chat(p.preamble + [{"role": "user", "content": text}])  # its first turn


def feed(k: "Kernel", p: Process, new: list[int]) -> None:
    """Append input tokens and make the process ready to answer them."""
    if not p.tokens:
        p.usage.prompt_tokens = len(new)
    p.tokens += new
    p.turn_tokens = 0
    p.turn_text_start = len(p.stdout)
    p.state = State.READY
    k.emit(Input(p.pid, tuple(new)))
    k.emit(StateChanged(p.pid))


# --- stdout -----------------------------------------------------------------------------------------
def emit(k: "Kernel", m: "LoadedModel", p: Process, token: int) -> None:
    """Append a sampled token: output text, stop rules, end of turn."""
    p.tokens.append(token)
    p.out_tokens.append(token)
    p.turn_tokens += 1
    p.usage.generated_tokens += 1
    if p.usage.ttft_s is None:
        p.usage.ttft_s = time.monotonic() - p.created
    k.emit(Output(p.pid, (token,)))
    eos = token in m.codec.eos and not p.stop.ignore_eos
    if not eos:
        before = len(p.stdout)
        if p.detok is None:
            p.detok = Detokenizer(m.codec)
        p.stdout += p.detok.step(p.out_tokens)
        if p.stop.stop and len(p.stdout) > before and _cut_stop(p, before):
            return end_turn(k, p, "stop")
    if eos:
        end_turn(k, p, "eos")
    elif p.turn_tokens >= p.stop.max_tokens:
        end_turn(k, p, "length")
    elif len(p.tokens) >= m.info.max_context:
        end_turn(k, p, "context window full")
    elif p.term_at is not None:
        end_turn(k, p, "terminated")


def _cut_stop(p: Process, before: int) -> bool:
    start = max(p.turn_text_start, before - max(len(s) for s in p.stop.stop))
    hits = [i for i in (p.stdout.find(s, start) for s in p.stop.stop) if i >= 0]
    if hits:
        p.stdout = p.stdout[:min(hits)]
    return bool(hits)


def end_turn(k: "Kernel", p: Process, reason: str) -> None:
    """The answer is complete: an interactive process blocks for its next turn, others exit."""
    if reason != "stop" and p.detok is not None:
        p.stdout += p.detok.step(p.out_tokens, final=True)
    if p.term_at is not None:
        k.exit(p, State.KILLED, "terminated")
    elif p.interactive and reason != "context window full":
        p.state, p.reason = State.BLOCKED, reason
        k.emit(StateChanged(p.pid))
    else:
        k.exit(p, State.EXITED, reason)
