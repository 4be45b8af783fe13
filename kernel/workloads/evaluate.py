"""Evaluation processes: perplexity of a model on text, BLEU and ROUGE of its outputs.

An eval is a task process (kernel/tasks.py): it has a pid, a priority, signals and an exit
status; its stdout carries progress lines and its `results` the metrics, which Wait returns.

- ppl: each unit scores one window through `driver.score` (token ids in, an NLL sum and a
  count out). A document's tokens are cut into windows of `window` + 1 tokens that overlap
  by one, so every token but the document's first is predicted exactly once, with the
  context reset at each window (no stride).
- bleu/rouge: the eval spawns a greedy child process per item (ppid = the eval, at most
  MAX_CHILDREN live at once, so the scheduler batches them with everything else), collects
  and reaps each child's output, and scores all outputs with sacrebleu / rouge-score.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmos.drivers.driver import score_windows
from llmos.kernel.errors import InvalidArgument, KernelError, Overloaded, ResourceExhausted
from llmos.kernel.proc import Signal, SpawnSpec, State, StopRules
from llmos.kernel.workloads import evaldata, scores
from llmos.syscalls.abi.spec import MAX_NEW_TOKENS

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.proc import Process
    from llmos.kernel.text import TextCodec
    from llmos.kernel.users.cred import Cred

METRICS = ("ppl", "bleu", "rouge")
DEFAULT_WINDOW = 512  # tokens scored per unit, at most: a longer forward would stall the decode streams
MAX_CHILDREN = 16
PROGRESS_LINES = 50  # bleu/rouge: about this many progress lines per eval


@dataclass
class EvalSpec:
    """What to evaluate: a model, the data's name (its suffix picks the kind), a metric and its options."""

    model: str
    data_name: str
    metric: str
    max_tokens: int = 256  # bleu/rouge: new tokens per item
    window: int = 0        # ppl: tokens per window; 0 = min(DEFAULT_WINDOW, the model's context - 1)


def check(spec: EvalSpec) -> None:
    """Refuse a bad spec before anything is read."""
    if spec.metric not in METRICS:
        raise InvalidArgument(f"unknown metric {spec.metric!r}; choose one of {', '.join(METRICS)}")
    if not 1 <= spec.max_tokens <= MAX_NEW_TOKENS:
        raise InvalidArgument(f"max_tokens must be in [1, {MAX_NEW_TOKENS}], got {spec.max_tokens}")
    if spec.window < 0:
        raise InvalidArgument(f"window must be 0 (the default) or positive, got {spec.window}")
    if not spec.data_name:
        raise InvalidArgument("give the data to evaluate on")


def prepare(spec: EvalSpec, data: bytes, codec: "TextCodec") -> "PerplexityTask | GenerationTask":
    """Validate and tokenize the data and import the metric's library: slow, so off the kernel
    thread (`codec` is the model's)."""
    check(spec)
    scores.preload(spec.metric)
    if spec.metric == "ppl":
        return PerplexityTask(spec, [codec.encode(doc) for doc in evaldata.documents(spec.data_name, data)])
    return GenerationTask(spec, evaldata.items(spec.data_name, data))


def spawn_eval(kernel: "Kernel", cred: "Cred", task: "PerplexityTask | GenerationTask", priority: int = 0,
               owner: str = "") -> "Process":
    """Start a prepared eval as a process, for the caller; on the kernel thread."""
    m = kernel.model_for(cred, task.spec.model)
    ctx, bound = m.info.max_context, kernel.config.max_unit_tokens
    if isinstance(task, PerplexityTask):
        task.window = task.spec.window or min(DEFAULT_WINDOW, ctx - 1, bound)
        if task.window >= ctx:
            raise InvalidArgument(f"window is {task.window} tokens; the context window of {m.name} is {ctx}")
        if task.window > bound:
            raise InvalidArgument(f"window is {task.window} tokens, over the {bound} tokens a unit of task work "
                                  "may take (max_unit_tokens)")
    task.cred = cred
    return kernel.spawn_task(cred, task.spec.model, task, priority=priority, owner=owner)


class PerplexityTask:
    """Scores documents window by window: one driver.score call per unit."""

    kind = "eval"

    def __init__(self, spec: EvalSpec, docs: list[list[int]]) -> None:
        self.spec, self.docs = spec, docs  # token ids of each document
        self.window = spec.window
        self.pending: list[list[int]] = []  # windows of the current document not yet scored
        self.next_doc = 0
        self.nll, self.count, self.windows = 0.0, 0, 0
        self.unit_tokens = 0  # tokens the last unit computed: charged to the owner's quota
        self.cred: "Cred | None" = None

    def run_unit(self, kernel: "Kernel", proc: "Process") -> bool:
        self.unit_tokens = 0
        while not self.pending:
            if self.next_doc == len(self.docs):
                return self._finish(proc)
            self.pending = score_windows(self.docs[self.next_doc], self.window)[::-1]
            self.next_doc += 1
        window = self.pending.pop()
        nll, n = kernel.driver.score(kernel.model(self.spec.model).driver_name, window)
        self.unit_tokens = len(window)
        self.nll, self.count, self.windows = self.nll + nll, self.count + n, self.windows + 1
        proc.stdout += (f"window {self.windows} (document {self.next_doc}/{len(self.docs)}): {self.count} tokens, "
                        f"ppl {math.exp(self.nll / max(1, self.count)):.4f}\n")
        return False

    def _finish(self, proc: "Process", early: bool = False) -> bool:
        if not self.count and not early:
            raise InvalidArgument(f"{self.spec.data_name}: no document is at least 2 tokens long: nothing to score")
        proc.results = {**scores.perplexity(self.nll, self.count), "windows": float(self.windows),
                        "documents": float(self.next_doc if early else len(self.docs))}
        proc.stdout += f"ppl {proc.results['ppl']:.4f} over {self.count} tokens in {self.windows} windows\n"
        proc.reason = "done" if not early else f"after {self.windows} windows; the results cover those"
        return True

    def terminate(self, kernel: "Kernel", proc: "Process") -> None:
        """TERM: report what has been scored so far."""
        self._finish(proc, early=True)

    def close(self, kernel: "Kernel", proc: "Process", reason: str) -> None:
        self.pending = []


class GenerationTask:
    """Generates an answer per item in child processes, then scores them all at once."""

    kind = "eval"

    def __init__(self, spec: EvalSpec, items: list[evaldata.Item]) -> None:
        self.spec, self.items = spec, items
        self.outputs: list[str | None] = [None] * len(items)
        self.children: dict[int, int] = {}  # live child pid → item index
        self.next_item = 0
        self.done = 0
        self.spawn_refused = False  # a quota or a full table said no: wait for a child to end
        self.cred: "Cred | None" = None  # who started the eval: its children are theirs

    def run_unit(self, kernel: "Kernel", proc: "Process") -> bool:
        before = self.done
        self._collect(kernel)
        self._spawn(kernel, proc)
        n = len(self.items)
        if self.done != before and (self.done == n or self.done // max(1, n // PROGRESS_LINES) !=
                                    before // max(1, n // PROGRESS_LINES)):
            proc.stdout += f"generated {self.done}/{n}\n"
        return self._finish(proc) if self.done == n else False

    def waiting(self, kernel: "Kernel") -> bool:
        """Nothing to collect and nothing that may be spawned: wait for a child to finish."""
        if not self.children or any(kernel.procs[pid].state.done for pid in self.children if pid in kernel.procs):
            return False
        full = len(self.children) >= MAX_CHILDREN or self.next_item == len(self.items) or self.spawn_refused
        return full and all(pid in kernel.procs for pid in self.children)

    def signal(self, kernel: "Kernel", sig: str) -> None:
        """STOP and CONT reach the eval's live children: a stopped eval generates nothing."""
        for pid in self.children:
            if pid in kernel.procs and not kernel.procs[pid].state.done:
                kernel.signal(self.cred, pid, sig)

    def _collect(self, kernel: "Kernel") -> None:
        for pid, i in list(self.children.items()):
            child = kernel.procs.get(pid)
            if child is None:
                raise KernelError(f"item at line {self.items[i].line}: child pid {pid} was reaped by someone else")
            if not child.state.done:
                continue
            if child.state != State.EXITED:
                raise KernelError(f"item at line {self.items[i].line}: child pid {pid} was {child.state.value}: "
                                  f"{child.reason}")
            self.outputs[i] = child.stdout.strip()
            del self.children[pid]
            kernel.reap(self.cred, pid)
            self.done += 1
            self.spawn_refused = False

    def _spawn(self, kernel: "Kernel", proc: "Process") -> None:
        while len(self.children) < MAX_CHILDREN and self.next_item < len(self.items):
            item = self.items[self.next_item]
            try:
                spec = SpawnSpec(self.spec.model, prompt=item.prompt,
                                 messages=list(item.messages) if item.messages else None,
                                 stop=StopRules(max_tokens=self.spec.max_tokens), priority=proc.priority,
                                 owner=proc.owner)
                child = kernel.spawn(self.cred, spec, ppid=proc.pid)
            except (ResourceExhausted, Overloaded) as e:
                if self.children:
                    self.spawn_refused = True  # try again once a child has finished
                    return
                raise type(e)(f"item at line {item.line}: {e}") from None
            except KernelError as e:
                raise type(e)(f"item at line {item.line}: {e}") from None
            self.children[child.pid] = self.next_item
            self.next_item += 1

    def _finish(self, proc: "Process", early: bool = False) -> bool:
        done = [i for i, o in enumerate(self.outputs) if o is not None] if early else range(len(self.items))
        hyps = [self.outputs[i] or "" for i in done]
        refs = [self.items[i].reference for i in done]
        proc.results = {**scores.SCORERS[self.spec.metric](hyps, refs), "items": float(len(hyps))} if hyps else {}
        shown = " ".join(f"{k} {v:.4f}" for k, v in proc.results.items() if k != "items")
        proc.stdout += f"{shown} over {len(hyps)} items\n" if hyps else "no item was generated\n"
        proc.reason = "done" if not early else f"after {len(hyps)}/{len(self.items)} items; the results cover those"
        return True

    def terminate(self, kernel: "Kernel", proc: "Process") -> None:
        """TERM: stop generating and score the items already answered."""
        self.close(kernel, proc, "terminated")
        self._finish(proc, early=True)

    def close(self, kernel: "Kernel", proc: "Process", reason: str) -> None:
        """The eval ended early (a signal, an error): its live children end with it."""
        for pid in list(self.children):
            if pid in kernel.procs:
                kernel.signal(self.cred, pid, Signal.KILL)
        self.children.clear()
