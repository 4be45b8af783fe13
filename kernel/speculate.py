"""Exact speculative decoding with no draft model: prompt lookup over a process's own tokens.

Each step, a decoding process whose last n tokens (n = ngram down to 1) occurred before in
its context proposes the k tokens that followed them then (`Lookup.propose`). The scheduler
adds those proposals as extra rows of the process's slice, out of what the step's token
budget has left once every process has its own tokens (`draft`): speculation never takes a
row another process was owed. The driver samples every row and keeps the proposals while
each equals what the target model itself draws at its position (drivers/sampler.py
`accept`), plus the one token after them; kernel/step.py emits those and rolls the memory
back past the rejected rows (`MemoryManager.truncate`).

A process whose proposals are mostly rejected stops proposing for a while (`Lookup.record`).
A grammar-constrained process proposes only what its grammar allows, and the driver masks
each of its rows as the grammar stands after the proposals before it (drivers/grammar_mask.py);
its grammar state itself advances only by the tokens kept, through stdio.emit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmos.kernel.memory import MemoryManager
    from llmos.kernel.proc import Process
    from llmos.kernel.sched import Schedule

MAX_DRAFT = 16


@dataclass
class SpecConfig:
    """Speculation knobs (llmosd --speculate)."""

    enabled: bool = False
    max_draft: int = 4       # proposals per verify step of one process, at most (k)
    ngram: int = 3           # the longest suffix looked up (n)
    min_rate: float = 0.3    # accepted per proposed (moving average) under which a process stops proposing
    cooldown: int = 32       # tokens it then decodes plainly before it tries again (doubling each time)
    max_rows: int = 16       # no proposal makes a step larger than this many rows in all
    # What one more row costs, relative to a step of one row (bench/speculate.py measures it: about
    # 0.06 on a 2-core CPU, where rows are compute; far less on a GPU, where a step reads the weights once).
    # It is the prior: with learn_cost, a pool's own decode steps (RowCost) say what a row costs
    # wherever it has run steps of both sizes.
    row_cost: float = 0.06
    learn_cost: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.max_draft <= MAX_DRAFT:
            raise ValueError(f"max_draft must be in [1, {MAX_DRAFT}], got {self.max_draft}")
        if not 1 <= self.ngram <= 8:
            raise ValueError(f"ngram must be in [1, 8], got {self.ngram}")
        if not 0.0 <= self.min_rate <= 1.0 or self.cooldown < 1 or self.max_rows < 0 or not self.row_cost >= 0:
            raise ValueError("min_rate must be in [0, 1], cooldown at least 1, max_rows and row_cost at least 0")


@dataclass
class Lookup:
    """One process's proposer: an index of the n-grams of its tokens, and how well it has guessed."""

    ngram: int = 3
    index: dict[tuple[int, ...], int] = field(default_factory=dict, repr=False)  # n-gram -> end of its latest use
    indexed: int = 0         # n-grams ending before this position are in the index
    verifies: int = 0        # verify steps run
    drafted: int = 0         # tokens proposed
    accepted: int = 0        # proposals the target model kept
    rate: float = 1.0        # moving average of accepted per proposed
    off_until: int = 0       # no proposals before the sequence is this long
    cooldown: int = 0

    def propose(self, tokens: list[int], k: int) -> list[int]:
        """Up to k tokens that followed the longest recent earlier occurrence of tokens' suffix."""
        end = len(tokens)
        if k <= 0 or end < 2 or end < self.off_until:
            return []
        if end < self.indexed:  # not the sequence it indexed (cannot happen: tokens only grow)
            self.index.clear()
            self.indexed = 0
        for e in range(max(self.indexed, 1), end):  # n-grams ending at e, for e < end
            for n in range(1, min(self.ngram, e) + 1):
                self.index[tuple(tokens[e - n:e])] = e
        self.indexed = end
        for n in range(min(self.ngram, end - 1), 0, -1):
            e = self.index.get(tuple(tokens[end - n:end]))
            if e is not None:
                return tokens[e:min(e + k, end)]
        return []

    def size(self, max_draft: int) -> int:
        """How many proposals to ask for now: fewer as acceptance falls."""
        return max(1, min(max_draft, round(self.rate * max_draft) + 1))

    def record(self, drafted: int, accepted: int, at: int, cfg: SpecConfig) -> None:
        """A verify step of `drafted` proposals kept `accepted`; `at` is the sequence length now."""
        self.verifies += 1
        self.drafted += drafted
        self.accepted += accepted
        self.rate = 0.7 * self.rate + 0.3 * (accepted / drafted)
        if self.rate < cfg.min_rate:
            self.cooldown = min(2 * self.cooldown, 1024) if self.cooldown else cfg.cooldown
            self.off_until = at + self.cooldown
            self.rate = 2 * cfg.min_rate if cfg.min_rate else 1.0  # a fresh start when it tries again
        elif accepted == drafted:
            self.cooldown = 0


@dataclass
class RowCost:
    """Step time by rows, learned from one pool's decode steps (every slice one token, plus any
    proposals): what a step of R rows costs over one of R - 1, wherever steps of sizes around
    both have been seen often enough. The machine decides, not a constant."""

    seconds: dict[int, float] = field(default_factory=dict)  # rows -> moving average of a step's seconds
    seen: dict[int, int] = field(default_factory=dict)
    min_seen: int = 3
    record_limit: int = 4096  # steps of more rows are not recorded (not SpecConfig.max_rows: a bound on the dicts)

    def record(self, rows: int, seconds: float) -> None:
        if not 1 <= rows <= self.record_limit or not seconds > 0:
            return
        old = self.seconds.get(rows)
        self.seconds[rows] = seconds if old is None else 0.9 * old + 0.1 * seconds
        self.seen[rows] = self.seen.get(rows, 0) + 1

    def marginal(self, rows: int) -> float | None:
        """T(rows) / T(rows - 1) - 1, interpolated between the row counts seen; None outside them."""
        known = sorted(r for r, n in self.seen.items() if n >= self.min_seen)
        if len(known) < 2 or rows - 1 < known[0] or rows > known[-1]:
            return None
        return max(0.0, self._at(rows, known) / self._at(rows - 1, known) - 1.0)

    def _at(self, rows: int, known: list[int]) -> float:
        hi = next(r for r in known if r >= rows)
        if hi == rows:
            return self.seconds[rows]
        lo = max(r for r in known if r < rows)
        f = (rows - lo) / (hi - lo)
        return self.seconds[lo] + f * (self.seconds[hi] - self.seconds[lo])


def draft(plan: "Schedule", mem: "MemoryManager", cfg: SpecConfig, budget: int, max_context: int,
          allowance: dict[str, int] | None = None, cost: RowCost | None = None) -> None:
    """Add proposals to the decoding slices of `plan` (its runs so far), out of the `budget`
    tokens the step has left, without evicting anything: where the pages for them are not
    free, or the process's limits forbid, it simply does not speculate this step. Rows are
    added only where the tokens they are expected to win pay for what they add to the step's
    time, which every process in it waits for (`_pays`; `cost`, where given, says what a row
    costs on this pool)."""
    rows = plan.num_tokens
    tokens = float(sum(1 for p, n in plan.runs if p.num_computed + n == len(p.tokens)))  # what the step samples
    room = min(budget, cfg.max_rows - rows)
    for p, n in plan.runs:
        if room <= 0:
            break
        if not _eligible(p, n):
            continue
        k = min(p.lookup.size(cfg.max_draft), room, p.stop.max_tokens - p.turn_tokens - 1,
                max_context - len(p.tokens) - 1)
        if allowance is not None and p.owner in allowance:
            k = min(k, allowance[p.owner])
        if p.limits.max_pages is not None:
            k = min(k, p.limits.max_pages * mem.page_size - len(p.tokens))
        if p.lookup.ngram != cfg.ngram:
            p.lookup = Lookup(cfg.ngram)
        guess = p.lookup.propose(p.tokens, k)
        if p.grammar is not None:  # only what the grammar allows: the rest could never be kept
            guess = guess[:p.grammar.valid_prefix(guess)]
        while guess and not _pays(p.lookup.rate, len(guess), tokens, rows, cfg.row_cost,
                                  cost.marginal(rows + len(guess)) if cost is not None else None):
            guess = guess[:-1]
        while guess and not mem.allocate(p.pid, p.num_computed, p.num_computed + n + len(guess)):
            guess = guess[:-1]
        if not guess:
            continue
        plan.drafts[p.pid] = guess
        rows += len(guess)
        room -= len(guess)
        tokens += _expected(p.lookup.rate, len(guess))
        if allowance is not None and p.owner in allowance:
            allowance[p.owner] -= len(guess)


def _expected(rate: float, k: int) -> float:
    """Proposals expected to be kept of k, each kept with probability `rate` once those before it are."""
    return sum(rate ** i for i in range(1, k + 1))


def _pays(rate: float, k: int, tokens: float, rows: int, row_cost: float, learned: float | None = None) -> bool:
    """Whether the k-th proposal's row raises the step's throughput. A step of R rows takes about
    T1 (1 + c (R - 1)); the row adds c / (1 + c (R - 1)) to it (or what was `learned` of this
    pool's steps), and wins a token with probability rate^k, which adds rate^k / tokens to what
    the step yields."""
    before = tokens + _expected(rate, k - 1)
    added = learned if learned is not None else row_cost / (1 + row_cost * (rows + k - 2))
    return rate ** k / max(before, 1.0) >= added


def _eligible(p: "Process", n: int) -> bool:
    """A process decoding its next token, its grammar (if any) ready, that has not opted out."""
    return (n == 1 and p.owed == 1 and (p.grammar is not None or not p.spec.grammar) and p.term_at is None
            and p.spec.speculate)
