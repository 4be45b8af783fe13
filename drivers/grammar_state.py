"""GrammarState: one process's position in its grammar.

It advances with each accepted token, forks with the process, looks ahead and rolls back for
speculative decoding (the proposals it allows, the mask after each of them) and is rebuilt
from the tokens after a recompute preemption or a crash (replay).
A rejected token leaves it unchanged: the engine would otherwise enter an error state that
nothing, not even a rollback, can leave. Once the grammar is complete the engine takes EOS
without counting it; this state counts it, so that accepted and rollback() agree with the
process's own tokens.
"""
from __future__ import annotations

from typing import Iterable

import llguidance

from llmos.drivers.grammar import CompiledGrammar, engine_error


class GrammarState:
    """Where a process stands in its CompiledGrammar. Used from one thread at a time."""

    def __init__(self, grammar: CompiledGrammar, matcher: llguidance.LLMatcher | None = None, accepted: int = 0,
                 eos_after_end: int = 0):
        self.grammar = grammar
        self.matcher = matcher if matcher is not None else grammar.matcher.deep_copy()  # for grammar_mask only
        self.accepted = accepted  # tokens taken since the start: the most rollback() can undo
        self._eos_after_end = eos_after_end  # the last of them: EOS taken once complete, unknown to the engine

    def accept(self, token: int) -> bool:
        """Advance past token; False (and no change) if the grammar does not allow it here."""
        return self._consume([int(token)]) == 1

    def replay(self, tokens: Iterable[int]) -> bool:
        """Rebuild the state from the start and the given tokens (no masks are computed).

        False if some token is not allowed: the state then stands after the longest allowed prefix.
        """
        tokens = [int(t) for t in tokens]
        self.matcher, self.accepted, self._eos_after_end = self.grammar.matcher.deep_copy(), 0, 0
        return self._consume(tokens) == len(tokens)

    def consume(self, tokens: list[int]) -> int:
        """Advance past as many of tokens, in order, as the grammar allows; returns how many."""
        return self._consume([int(t) for t in tokens])

    def valid_prefix(self, tokens: list[int]) -> int:
        """How many of tokens, in order, the grammar allows from here (the state is left as it was)."""
        taken = self.consume(tokens)
        self.rollback(taken)
        return taken

    def rollback(self, n: int) -> None:
        """Undo the last n accepted tokens."""
        if not 0 <= n <= self.accepted:
            raise ValueError(f"cannot roll back {n} tokens: {self.accepted} accepted")
        eos = min(n, self._eos_after_end)
        if n > eos and not self.matcher.rollback(n - eos):
            raise engine_error(self.matcher.get_error(), self.grammar.limits)
        self._eos_after_end -= eos
        self.accepted -= n

    def _consume(self, tokens: list[int]) -> int:
        taken = self.matcher.try_consume_tokens(tokens) if tokens else 0
        if taken < len(tokens) and self.is_complete():
            eos = self.grammar.eos_token_ids
            while taken < len(tokens) and tokens[taken] in eos:
                taken += 1
                self._eos_after_end += 1
        self.accepted += taken
        return taken

    def fork(self) -> "GrammarState":
        """An independent copy, for a forked child."""
        return GrammarState(self.grammar, self.matcher.deep_copy(), self.accepted, self._eos_after_end)

    def is_complete(self) -> bool:
        """The grammar is satisfied and allows nothing more (but EOS): the process can end."""
        return self.matcher.is_stopped() and not self.matcher.is_error()

    def can_stop(self) -> bool:
        """The grammar is satisfied here, so EOS is allowed (more tokens may be too)."""
        return self.matcher.is_accepting() and not self.matcher.is_error()

    @property
    def error(self) -> str | None:
        """Why the state cannot go on (a per-step limit hit, say), or None."""
        if not self.matcher.is_error():
            return None
        return str(engine_error(self.matcher.get_error(), self.grammar.limits, self.grammar.spec.kind))

    def __repr__(self) -> str:
        return f"GrammarState({self.grammar.spec.kind}, accepted={self.accepted})"
