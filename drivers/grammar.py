"""Grammars for constrained decoding: what a process may emit, compiled once per tokenizer.

A process carries a GrammarSpec (plain data: a JSON Schema, "any JSON object", a regex, a
Lark/GBNF grammar or a list of choices). A GrammarCompiler, one per loaded model, turns it into
a CompiledGrammar on a worker thread, with a bound on time and size, and keeps the result in a
bounded LRU cache. CompiledGrammar.start() gives the per-process GrammarState
(drivers/grammar_state.py); drivers/grammar_mask.py masks a batch's logits with those states.

The engine is llguidance. Its matcher never raises on bad input: it enters an error state,
whose message (with line and column) this module turns into a GrammarError.
"""
from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

import llguidance
import llguidance.hf
from llguidance.gbnf_to_lark import any_to_lark

from llmos.syscalls.abi.grammar import (KINDS, MAX_CHOICES, MAX_SOURCE_BYTES, GrammarError, GrammarKind, GrammarSpec,
                                        GrammarTooLarge)

__all__ = ["KINDS", "GrammarKind", "GrammarSpec", "GrammarError", "GrammarTooLarge", "GrammarTimeout", "GrammarLimits",
           "GrammarCompiler", "CompiledGrammar", "CompileJob", "engine_error", "engine_grammar"]

if TYPE_CHECKING:
    from llmos.drivers.grammar_state import GrammarState

# Enforced on the waiter: see CompileJob.
COMPILE_TIMEOUT_S = 5.0
CACHE_SIZE = 128  # compiled grammars kept per tokenizer
# Passed to llguidance (LLParserLimits); they bound the work of one compile and of one mask.
MAX_LEXER_FUEL = 1_000_000  # regex work at compile time, about 50k units per ms
MAX_GRAMMAR_SYMBOLS = 500_000
MAX_LEXER_STATES = 50_000  # lexer DFA states built lazily while decoding, 1-2 kB each (engine default 250k)
MAX_STEP_LEXER_FUEL = 200_000  # lexer work of one mask, about 14k units per ms
MAX_STEP_ITEMS = 50_000  # Earley items of one mask, about 20k per ms


class GrammarTimeout(GrammarTooLarge):
    """A compile that ran past GrammarLimits.compile_timeout_s."""


@dataclass(frozen=True)
class GrammarLimits:
    """Every bound on a grammar, defaulting to this module's constants."""

    max_source_bytes: int = MAX_SOURCE_BYTES
    max_choices: int = MAX_CHOICES
    compile_timeout_s: float = COMPILE_TIMEOUT_S
    cache_size: int = CACHE_SIZE
    max_lexer_fuel: int = MAX_LEXER_FUEL
    max_grammar_symbols: int = MAX_GRAMMAR_SYMBOLS
    max_lexer_states: int = MAX_LEXER_STATES
    max_step_lexer_fuel: int = MAX_STEP_LEXER_FUEL
    max_step_items: int = MAX_STEP_ITEMS

    def engine_limits(self) -> llguidance.LLParserLimits:
        return llguidance.LLParserLimits(
            initial_lexer_fuel=self.max_lexer_fuel, max_grammar_size=self.max_grammar_symbols,
            max_lexer_states=self.max_lexer_states, step_lexer_fuel=self.max_step_lexer_fuel,
            step_max_items=self.max_step_items, verbose_errors=False)


DEFAULT_LIMITS = GrammarLimits()

# How llguidance words each limit it enforces, and the limit that says so.
_ENGINE_LIMIT_WORDS = (("initial lexer configuration", "max_lexer_fuel"), ("grammar size", "max_grammar_symbols"),
                       ("too many states", "max_lexer_states"), ("Too many items", "max_step_items"),
                       ("fuel", "max_step_lexer_fuel"))


def engine_error(message: str, limits: GrammarLimits = DEFAULT_LIMITS, what: str = "grammar") -> GrammarError:
    """The GrammarError for an llguidance error message: GrammarTooLarge when it hit a limit."""
    message = message.split("\n<state>", 1)[0].strip()
    for words, name in _ENGINE_LIMIT_WORDS:
        if words in message:
            return GrammarTooLarge(f"{what} is over the limit {name}={getattr(limits, name)}: {message}")
    return GrammarError(f"invalid {what}: {message}")


def engine_grammar(spec: GrammarSpec) -> str:
    """The llguidance grammar definition of a spec; GrammarError if it is not even well formed."""
    json_options = {"whitespace_flexible": spec.flexible_whitespace}
    if spec.kind == "json_object":
        return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=json_options)
    if spec.kind == "json_schema":
        try:
            schema = json.loads(spec.source)
        except json.JSONDecodeError as e:
            raise GrammarError(f"invalid json_schema: not JSON: {e}") from None
        try:
            return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=json_options)
        except ValueError as e:
            raise GrammarError(f"invalid json_schema: {e}") from None
    if spec.kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(spec.source)
    if spec.kind == "choice":
        return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in spec.source))
    try:
        return llguidance.LLMatcher.grammar_from_lark(any_to_lark(spec.source))  # Lark as is; GBNF converted
    except Exception as e:  # the GBNF converter raises bare Exceptions
        raise GrammarError(f"invalid cfg: {e}") from None


@dataclass(frozen=True, eq=False)
class CompiledGrammar:
    """A spec compiled for one tokenizer. Immutable and shared by every process that uses it."""

    spec: GrammarSpec
    text: str  # the llguidance grammar definition
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    limits: GrammarLimits
    compile_s: float
    matcher: llguidance.LLMatcher = field(repr=False)  # pristine: only ever deep-copied

    def start(self) -> "GrammarState":
        """A fresh state at the grammar's start."""
        from llmos.drivers.grammar_state import GrammarState
        return GrammarState(self)


@dataclass(eq=False)
class CompileJob:
    """A compile in flight. poll() never blocks; result() blocks until the deadline at most.

    The deadline is enforced on the waiter, not the worker: Python cannot stop a thread.
    The worker's own work is bounded by MAX_SOURCE_BYTES and llguidance's fuel limits, so a
    compile past its deadline still ends soon; its result is then dropped, not cached.
    """

    spec: GrammarSpec
    future: Future
    deadline: float  # time.monotonic()
    timeout_s: float

    def poll(self) -> CompiledGrammar | None:
        """The grammar when done, None while compiling; raises GrammarError or GrammarTimeout."""
        if self.future.done():
            return self.future.result()
        if time.monotonic() >= self.deadline:
            raise self._timeout()
        return None

    def result(self) -> CompiledGrammar:
        try:
            return self.future.result(timeout=max(0.0, self.deadline - time.monotonic()))
        except FutureTimeout:
            raise self._timeout() from None

    def _timeout(self) -> GrammarTimeout:
        return GrammarTimeout(f"compiling the {self.spec.kind} grammar ran past the limit "
                              f"compile_timeout_s={self.timeout_s:g}")


@cache
def _workers() -> ThreadPoolExecutor:
    # llguidance drops the GIL while it compiles, so threads compile in parallel with decoding.
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="llmos-grammar")


class GrammarCompiler:
    """Compiles GrammarSpecs for one HF tokenizer on worker threads, caching the results (LRU).

    vocab_size is the model's (its logits' width), which may exceed len(tokenizer): ids past
    the tokenizer's are never allowed. Building the compiler costs about 0.4 s for a 49k
    vocabulary, so make one per loaded model.
    """

    def __init__(self, tokenizer, vocab_size: int | None = None, eos_token_ids: list[int] | None = None,
                 limits: GrammarLimits = DEFAULT_LIMITS):
        self.vocab_size = max(vocab_size or 0, len(tokenizer))
        eos = eos_token_ids if eos_token_ids else [tokenizer.eos_token_id]
        self.eos_token_ids = tuple(int(t) for t in eos)
        self.limits = limits
        self._tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=self.vocab_size,
                                                       eos_token=list(self.eos_token_ids))
        self._engine_limits = limits.engine_limits()
        self._lock = threading.Lock()
        self._cache: OrderedDict[GrammarSpec, CompiledGrammar] = OrderedDict()  # guarded by _lock
        self._pending: dict[GrammarSpec, Future] = {}  # guarded by _lock

    def submit(self, spec: GrammarSpec) -> CompileJob:
        """Start compiling (or find the cached grammar). Spec errors raise here, at once."""
        spec.check(self.limits)
        timeout = self.limits.compile_timeout_s
        started = False
        with self._lock:
            fut = self._pending.get(spec)
            if fut is None:
                fut = Future()
                if spec in self._cache:
                    self._cache.move_to_end(spec)
                    fut.set_result(self._cache[spec])
                else:
                    fut = self._pending[spec] = _workers().submit(self._build, spec)
                    started = True
        if started:  # outside the lock: a compile already done runs its callback here, at once
            fut.add_done_callback(lambda f: self._settle(spec, f))
        return CompileJob(spec, fut, time.monotonic() + timeout, timeout)

    def compile(self, spec: GrammarSpec) -> CompiledGrammar:
        """Compile, waiting at most limits.compile_timeout_s."""
        return self.submit(spec).result()

    def cached(self) -> list[GrammarSpec]:
        """The cached specs, least recently used first."""
        with self._lock:
            return list(self._cache)

    def _build(self, spec: GrammarSpec) -> CompiledGrammar:
        t0 = time.perf_counter()
        text = engine_grammar(spec)
        try:
            matcher = llguidance.LLMatcher(self._tokenizer, text, log_level=0, limits=self._engine_limits)
        except Exception as e:  # "Raises: never" for grammar errors, but a misuse would land here
            raise GrammarError(f"invalid {spec.kind}: {e}") from None
        if matcher.is_error():
            raise engine_error(matcher.get_error(), self.limits, spec.kind)
        # The first mask builds the lexer states every copy shares; doing it here keeps that off the
        # sampler, and a grammar over the per-step limits fails now rather than mid-batch.
        probe = matcher.deep_copy()
        probe.compute_bitmask()
        if probe.is_error():
            raise engine_error(probe.get_error(), self.limits, spec.kind)
        return CompiledGrammar(spec, text, self.vocab_size, self.eos_token_ids, self.limits,
                               time.perf_counter() - t0, matcher)

    def _settle(self, spec: GrammarSpec, fut: Future) -> None:
        with self._lock:
            self._pending.pop(spec, None)
            if fut.cancelled() or fut.exception() is not None:
                return
            grammar = fut.result()
            if grammar.compile_s > self.limits.compile_timeout_s:
                return  # slower than the limit: a retry must time out the same way, not find it cached
            self._cache[spec] = grammar
            while len(self._cache) > self.limits.cache_size:
                self._cache.popitem(last=False)
