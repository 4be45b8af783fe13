"""Process: one token sequence bound to a model, with a pid, a state machine, signals,
limits and counters (like xv6's proc.c)."""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from llmos.drivers.driver import SamplingParams


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
class StopRules:
    """When generation ends: max new tokens, stop strings, end-of-sequence tokens."""

    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False


@dataclass
class Limits:
    """Per-process resource limits; None means unlimited."""

    max_pages: int | None = None
    max_wall_s: float | None = None


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

    pid: int
    model: str
    tokens: list[int]  # everything the model has seen or said: prompt, output, later input
    ppid: int = 0
    owner: str = "root"
    priority: int = 0  # nice: lower runs first, -20..19
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: StopRules = field(default_factory=StopRules)
    limits: Limits = field(default_factory=Limits)
    interactive: bool = False
    preamble: list[dict] = field(default_factory=list)  # chat messages awaiting the first user turn
    state: State = State.NEW
    resume_state: State = State.READY  # where SIGCONT returns a stopped process
    reason: str = ""
    num_computed: int = 0  # tokens whose KV is in pages
    out_tokens: list[int] = field(default_factory=list)  # generated tokens, all turns
    turn_tokens: int = 0   # tokens generated in the current turn
    stdout: str = ""       # generated text, all turns
    usage: Usage = field(default_factory=Usage)
    created: float = field(default_factory=time.monotonic)
    admitted: float | None = None
    finished: float | None = None
    last_run: float = 0.0  # when the scheduler last gave it tokens (for aging)
    turn_text_start: int = 0  # where this turn's text begins in stdout (stop strings search from here)
    task: object | None = None  # non-token work (kernel/tasks.py Task): training, evaluation
    results: dict[str, float] = field(default_factory=dict)  # a task's structured results (eval metrics)
    kv_salt: int = 0  # prefix-cache namespace of its KV: a LoRA model's own (set by the kernel from the model)

    @property
    def owed(self) -> int:
        """Tokens the model still has to run before this process can sample again."""
        return len(self.tokens) - self.num_computed

    @property
    def runnable(self) -> bool:
        return self.state in (State.NEW, State.READY, State.RUNNING)

    def exit(self, state: State, reason: str) -> None:
        self.state, self.reason = state, reason
        self.finished = time.monotonic()
