"""A process's output grammar (SpawnSpec.grammar): compiled before the process runs,
advanced with each token it generates, forked with it, started afresh at each of its turns,
and rebuilt from its tokens after a crash (recovery replays them through here).

The Spawn syscall compiles off the kernel thread first (compile()), so the grammar is ready
when the kernel spawns; a spawn that finds it still compiling leaves the process out of the
batch (`grammar_job`) until it is. The sampler masks each constrained row with its state
(drivers/grammar_mask.py); a turn ends with reason "grammar" when the grammar is complete.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from llmos.kernel.errors import InvalidArgument
from llmos.kernel.proc import Process, State
from llmos.syscalls.abi.grammar import GrammarError

if TYPE_CHECKING:
    from llmos.drivers.grammar import CompiledGrammar
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.models.loading import LoadedModel
    from llmos.kernel.thread import KernelThread
    from llmos.kernel.users.cred import Cred
    from llmos.syscalls.abi.grammar import GrammarSpec
    from llmos.syscalls.abi.spec import SpawnSpec

INCOMPLETE = "length: the grammar was not complete"


async def ready(kt: "KernelThread", cred: "Cred", spec: "SpawnSpec") -> None:
    """Before a syscall spawns `spec`: compile its grammar on the grammar engine's threads (the
    kernel thread and the event loop never wait on it), so errors come back before any process
    exists and the process is ready to run as soon as it does."""
    if spec.grammar is not None:
        try:
            spec.grammar.check()
        except GrammarError as e:
            raise InvalidArgument(str(e), "grammar") from None
        await asyncio.to_thread(compile, kt.kernel.model_for(cred, spec.model), spec.grammar)


def compile(m: "LoadedModel", spec: "GrammarSpec") -> "CompiledGrammar":
    """Compile for m's tokenizer, waiting within the compile limit (any thread; cached after)."""
    try:
        return m.codec.grammars().compile(spec)
    except GrammarError as e:
        raise InvalidArgument(str(e), "grammar") from None


def attach(m: "LoadedModel", p: Process) -> None:
    """Give a new process its grammar state, or the compile it waits on."""
    if p.spec.grammar is None:
        return
    try:
        job = m.codec.grammars().submit(p.spec.grammar)
        ready = job.poll()
    except GrammarError as e:
        raise InvalidArgument(str(e), "grammar") from None
    if ready is not None:
        p.grammar = ready.start()
    else:
        p.grammar_job = job


def poll(k: "Kernel") -> None:
    """Start the processes whose grammar has compiled; end those whose compile failed."""
    for p in [q for q in k.procs.values() if q.grammar_job is not None and not q.state.done]:
        try:
            ready = p.grammar_job.poll()
        except GrammarError as e:
            p.grammar_job = None
            k.exit(p, State.KILLED, f"grammar: {e}")
            continue
        if ready is not None:
            p.grammar, p.grammar_job = ready.start(), None
            p.grammar.replay(p.out_tokens[len(p.out_tokens) - p.turn_tokens:])  # what this turn made already


def advance(p: Process, token: int) -> str | None:
    """Take a generated token into the grammar: "grammar" once it is complete, a reason to
    end the process if the token broke it, else None."""
    if p.grammar is None:
        return None
    if not p.grammar.accept(token):
        return f"grammar: token {token} is not allowed here ({p.grammar.error or 'rejected'})"
    return "grammar" if p.grammar.is_complete() else None


def new_turn(p: Process) -> None:
    """Each turn's output follows the grammar from its start."""
    if p.grammar is not None:
        p.grammar = p.grammar.grammar.start()


def fork(parent: Process, child: Process) -> None:
    child.grammar = parent.grammar.fork() if parent.grammar is not None else None
    child.grammar_job = parent.grammar_job


def unfinished(p: Process) -> bool:
    """Whether a turn ending now leaves its grammar incomplete."""
    return p.grammar is not None and not p.grammar.can_stop()
