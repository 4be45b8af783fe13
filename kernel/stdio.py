"""A process's stdin and stdout: user turns written to an interactive process, and what
each generated token does to its output (text, stop strings, end of sequence, max tokens, a
full context window, the end of an interactive turn)."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from llmos.kernel import accounting, devices, grammar
from llmos.kernel.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from llmos.kernel.events import Input, Output, StateChanged
from llmos.kernel.proc import Process, State
from llmos.kernel.text import Detokenizer
from llmos.syscalls.abi import tools as tool_format
from llmos.syscalls.abi.logprobs import TokenLogprob
from llmos.syscalls.abi.spec import SpecError, check_text

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.models.loading import LoadedModel
    from llmos.kernel.users.cred import Cred


# --- stdin ------------------------------------------------------------------------------------------
def write(k: "Kernel", cred: "Cred", pid: int, text: str, role: str = "user") -> int:
    """Append a turn to an interactive process's stdin (a user's, or a tool's result); returns
    the output offset where the answer to it begins."""
    return write_turn(k, k.lookup(cred, pid), text, role)


def write_turn(k: "Kernel", p: Process, text: str, role: str = "user") -> int:
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
    if role not in ("user", "tool"):
        raise InvalidArgument(f"a turn written to stdin is a user's or a tool's, not {role!r}", "role")
    m = k.model(p.model)
    new = next_turn(m, p, text, role)
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
    accounting.given(k, p, len(new))
    return p.turn_text_start


def next_turn(m: "LoadedModel", p: Process, text: str, role: str = "user") -> list[int]:
    """The tokens that open a turn of `text` (a user's or a tool result) after what p holds,
    and the answer after it."""
    if p.tokens:
        return m.codec.user_turn(text, after_eos=p.tokens[-1] in m.codec.eos, role=role)
    return m.codec.encode_chat(p.preamble + [{"role": role, "content": text}], p.spec.tools)  # its first turn


def feed(k: "Kernel", p: Process, new: list[int]) -> None:
    """Append input tokens and make the process ready to answer them."""
    if not p.tokens:
        p.usage.prompt_tokens = len(new)
    p.tokens += new
    p.took(False, len(new))
    p.turn_tokens = 0
    p.turn_text_start = len(p.stdout)
    p.state = State.READY
    p.pinned_until = 0.0
    grammar.new_turn(p)
    k.emit(Input(p.pid, tuple(new)))
    k.emit(StateChanged(p.pid))
    if p.device:
        devices.forward(k, p, "feed", list(new))


# --- stdout -----------------------------------------------------------------------------------------
def emit(k: "Kernel", m: "LoadedModel", p: Process, token: int,
         logprob: tuple[float, list[tuple[int, float]]] | None = None) -> None:
    """Append a sampled token: output text, stop rules, end of turn (and its log-probability,
    where the process asked for them)."""
    p.tokens.append(token)
    p.took(True, 1)
    p.out_tokens.append(token)
    p.turn_tokens += 1
    p.usage.generated_tokens += 1
    if p.usage.ttft_s is None:
        p.usage.ttft_s = time.monotonic() - p.created
    k.emit(Output(p.pid, (token,)))
    constrained = grammar.advance(p, token)
    eos = token in m.codec.eos and not p.stop.ignore_eos
    if not eos:
        before = len(p.stdout)
        if p.detok is None:
            p.detok = Detokenizer(m.codec)
        p.stdout += p.detok.step(p.out_tokens)
        if logprob is not None:
            p.logprobs.append(_logprob(m, token, logprob, p.stdout[before:], len(p.stdout)))
        if p.stop.stop and len(p.stdout) > before and _cut_stop(p, before):
            return end_turn(k, p, "stop")
    if constrained is not None and constrained != "grammar":
        k.exit(p, State.KILLED, constrained)
    elif eos:
        end_turn(k, p, "eos")
    elif constrained == "grammar":
        end_turn(k, p, "grammar")
    elif p.turn_tokens >= p.stop.max_tokens:
        end_turn(k, p, grammar.INCOMPLETE if grammar.unfinished(p) else "length")
    elif len(p.tokens) >= m.info.max_context:
        end_turn(k, p, "context window full")
    elif p.term_at is not None:
        end_turn(k, p, "terminated")


def _logprob(m: "LoadedModel", token: int, lp: tuple[float, list[tuple[int, float]]], text: str,
             text_end: int) -> TokenLogprob:
    """A token's logprobs: its text is what it added to the output (so the texts of a process's
    tokens spell its output, a multi-byte character on the token that completes it); an
    alternative's is its own decoding."""
    alt = m.codec.token_text
    return TokenLogprob(token, text, lp[0], tuple((t, alt(t), v) for t, v in lp[1]), text_end)


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
        if p.spec.tools and tool_format.OPEN in p.stdout[p.turn_text_start:]:
            # It waits on a tool: keep its context in memory for a while, so the result continues it at once.
            p.pinned_until = time.monotonic() + k.config.tool_wait_ttl_s
        k.emit(StateChanged(p.pid))
    else:
        k.exit(p, State.EXITED, reason)
