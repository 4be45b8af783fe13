"""The llmos kernel: processes, the scheduler, paged KV memory, models, users and the step
loop. It knows nothing of gRPC or HTTP. What each file holds (this package's defs.h):

- kernel.py    Kernel: the process table and every kernel operation; KernelConfig
- proc.py      Process, State, Signal, Usage
- spawn.py     spawn, n choices, fork, task processes
- stdio.py     a process's stdin (write) and stdout (tokens to text, stop rules, turns)
- signals.py   TERM, KILL, STOP, CONT
- pipe.py      Pipe: one process's output into another's stdin
- sched.py     Scheduler, Schedule (the step's slices and the driver's input), SchedConfig
- speculate.py prompt-lookup proposals verified in the decode step; SpecConfig
- step.py      around a forward pass: run a Schedule, apply what it sampled
- tasks.py     the Task protocol and the device share of task units (training, evaluation)
- events.py    what listeners are told: Spawned, Input, Output, StateChanged, Reaped, ...
- recovery.py  the journal's kernel side: events to deltas, and rebuilding after a crash
- stats.py     daemon-wide figures and the token meter
- accounting.py usage accounting: Charged events (tokens, device seconds, processes per user) and
                who may read which; llmosd's usage store keeps them
- thread.py    KernelThread: the one thread that runs the kernel
- mirror.py    ProcMirror: what readers and waiters see, on the event loop
- text.py      TextCodec (prompts, chat templates) and Detokenizer
- errors.py    KernelError and its kinds
- memory/      pages, page tables, the prefix cache, swap
- models/      the model store, loading, LoRA models
- users/       Cred (who may do what), quotas, bearer tokens, callers
- workloads/   training, evaluation, datasets and scores, over the Task protocol
"""
from llmos.kernel.errors import (FailedPrecondition, InvalidArgument, KernelError, NotFound, PermissionDenied,
                                 ResourceExhausted, Unavailable)
from llmos.kernel.kernel import Kernel, KernelConfig
from llmos.kernel.proc import Limits, Process, SamplingParams, Signal, SpawnSpec, State, StopRules
from llmos.kernel.sched import SchedConfig
from llmos.kernel.speculate import SpecConfig
from llmos.kernel.users.cred import ROOT, Cred

__all__ = [
    # kernel.py
    "Kernel", "KernelConfig",
    # proc.py (and the spec it runs, from the syscall ABI)
    "Process", "State", "Signal", "SpawnSpec", "SamplingParams", "StopRules", "Limits",
    # sched.py, speculate.py
    "SchedConfig", "SpecConfig",
    # users/cred.py
    "Cred", "ROOT",
    # errors.py
    "KernelError", "InvalidArgument", "NotFound", "ResourceExhausted", "FailedPrecondition", "Unavailable",
    "PermissionDenied",
]
