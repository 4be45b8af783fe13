"""Process: one token sequence bound to a model, with a pid, a state machine, signals,
limits and counters (like xv6's proc.h). Fields are grouped by who may touch them."""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llmos.kernel.speculate import Lookup
from llmos.syscalls.abi.logprobs import TokenLogprob
from llmos.syscalls.abi.spec import Limits, SamplingParams, SpawnSpec, StopRules

if TYPE_CHECKING:
    from llmos.drivers.grammar import CompileJob
    from llmos.drivers.grammar_state import GrammarState
    from llmos.kernel.tasks import Task
    from llmos.kernel.text import Detokenizer

__all__ = ["State", "Signal", "Usage", "Process", "Limits", "SamplingParams", "SpawnSpec", "StopRules"]


class State(str, enum.Enum):
    NEW = "new"          # spawned, not yet admitted into memory
    READY = "ready"      # owed tokens, waiting for the scheduler
    RUNNING = "running"  # scheduled in the current step
    BLOCKED = "blocked"  # an interactive process waiting for input on stdin
    STOPPED = "stopped"  # paused by SIGSTOP
    EXITED = "exited"    # finished on its own (eos, stop string, max tokens)
    KILLED = "killed"    # ended by a signal, a limit or an error

    @property
    def done(self) -> bool:
        return self in (State.EXITED, State.KILLED)


class Signal(str, enum.Enum):
    TERM = "TERM"
    KILL = "KILL"
    STOP = "STOP"
    CONT = "CONT"


@dataclass
class Usage:
    """Counters kept for every process."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    cached_tokens: int = 0     # prompt tokens served from the prefix cache or a fork
    ttft_s: float | None = None
    pages_held: int = 0
    swaps: int = 0
    preemptions: int = 0


@dataclass(eq=False)
class Process:
    """The kernel's view of one LLM process."""

    # --- set when the process is made, never changed: who it is and what it was asked to be
    pid: int
    spec: SpawnSpec          # what Spawn (or Fork) named; the journal keeps it
    owner: str = ""          # the user it runs as and is charged to
    ppid: int = 0
    created: float = field(default_factory=time.monotonic)
    adapter: str = ""        # the LoRA model its tokens run under ("" = a base model)
    kv_salt: int = 0         # the prefix-cache namespace of its KV (a LoRA model's own)
    model_digest: str = ""   # the stored version of its model it runs on (the journal keeps it)
    task: "Task | None" = None  # non-token work (kernel/tasks.py): training, evaluation

    # --- the kernel thread only: its tokens, state and output
    tokens: list[int] = field(default_factory=list)  # everything the model has seen or said
    priority: int = 0        # nice: lower runs first, -20..19
    preamble: list[dict] = field(default_factory=list)  # chat messages awaiting the first user turn
    state: State = State.NEW
    resume_state: State = State.READY  # where SIGCONT returns a stopped process
    reason: str = ""
    num_computed: int = 0    # tokens whose KV is in pages
    out_tokens: list[int] = field(default_factory=list)  # generated tokens, all turns
    turn_tokens: int = 0     # tokens generated in the current turn
    stdout: str = ""         # generated text, all turns
    turn_text_start: int = 0  # where this turn's text begins in stdout (stop strings search from here)
    detok: "Detokenizer | None" = None  # turns out_tokens into stdout
    logprobs: list[TokenLogprob] = field(default_factory=list)  # per output token, if its sampling asks (append-only)
    grammar: "GrammarState | None" = None  # where this turn's output stands in spec.grammar
    grammar_job: "CompileJob | None" = None  # its grammar while it compiles: not scheduled until then
    term_at: float | None = None  # when TERM arrived: it ends at its next token (a task: its next unit)
    pinned_until: float = 0.0  # its pages are not taken before this (blocked on a tool's result)
    detached: bool = False   # reaped as soon as it ends (nobody will wait for it)
    results: dict[str, float] = field(default_factory=dict)  # a task's structured results (eval metrics)
    lookup: Lookup = field(default_factory=Lookup)  # its proposer for speculative decoding (kernel/speculate.py)
    device: str = ""         # the device kernel running it (kernel/devices.py); "" = this kernel's own
    chunks: list[list] = field(default_factory=list)  # [generated, count] runs of its tokens, in order
    moves: int = 0           # migrations so far: news from a device it has left is stale
    incoming: str = ""       # a device its KV pages are on their way from (kernel/migrate.py): it waits

    # --- the kernel thread only: counters and times
    usage: Usage = field(default_factory=Usage)
    admitted: float | None = None
    finished: float | None = None
    last_run: float = 0.0    # when the scheduler last gave it tokens (for aging)

    @property
    def model(self) -> str:
        return self.spec.model

    @property
    def sampling(self) -> SamplingParams:
        return self.spec.sampling

    @property
    def stop(self) -> StopRules:
        return self.spec.stop

    @property
    def limits(self) -> Limits:
        return self.spec.limits

    @property
    def interactive(self) -> bool:
        return self.spec.interactive

    @property
    def owed(self) -> int:
        """Tokens the model still has to run before this process can sample again."""
        return len(self.tokens) - self.num_computed

    @property
    def here(self) -> bool:
        """Whether it runs on this kernel's own device now (kernel/devices.py)."""
        return not self.device and not self.incoming

    @property
    def runnable(self) -> bool:
        return self.state in (State.NEW, State.READY, State.RUNNING)

    def took(self, generated: bool, n: int) -> None:
        """n tokens were appended: generated, or input (what a migration replays, in order)."""
        if self.chunks and self.chunks[-1][0] == generated:
            self.chunks[-1][1] += n
        elif n:
            self.chunks.append([generated, n])

    def exit(self, state: State, reason: str) -> None:
        self.state, self.reason = state, reason
        self.finished = time.monotonic()
