"""Constrained processes in the kernel: greedy output under a grammar equals transformers'
generate() with a LogitsProcessor applying the same grammar (llguidance's own matcher), in
every batch kind the kernel tests: mixed lengths, forks, prefix hits, swap, recompute
preemption, and after a crash (the journal)."""
import json
import re

import pytest

from llmos.journal_db import attach
from llmos.kernel import ROOT, InvalidArgument, SpawnSpec, State, StopRules
from llmos.kernel import grammar as kgrammar
from llmos.syscalls.abi.grammar import GrammarSpec
from test_grammar import CHOICES, REGEX, SCHEMA, SUM_LARK, reference

SPECS = {"json_schema": GrammarSpec("json_schema", SCHEMA), "regex": GrammarSpec("regex", REGEX),
         "choice": GrammarSpec("choice", CHOICES), "cfg": GrammarSpec("cfg", SUM_LARK)}
PROMPTS = [[5, 6, 7], list(range(20, 57)), [9, 8, 7, 6, 5, 4, 3]]
N = 120


def expected(k, ref, tokens, spec):
    """transformers' greedy output with the grammar; the kernel ends on completion, before the
    EOS generate() then adds, and on EOS where the grammar let it stop."""
    compiled = k.models["tiny"].codec.grammars().compile(spec)
    out = reference(ref.model, k.models["tiny"].codec.tokenizer, tokens, compiled, N)
    return out


def check(p, want):
    """p ran to the same tokens as the reference, ending as the grammar says."""
    if p.reason == "grammar":
        assert p.out_tokens + [2] == want, (p.out_tokens, want)
    else:
        assert p.reason in ("eos", "length: the grammar was not complete"), p.reason
        assert p.out_tokens == want


def spawn(k, tokens, spec, **over):
    return k.spawn(ROOT, SpawnSpec("tiny", tokens=tokens, grammar=spec, stop=StopRules(max_tokens=N), **over))


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_a_mixed_batch_equals_generate_with_the_grammar(make_kernel, kind):
    k, ref = make_kernel(pages=256, budget=16)  # chunked prefill beside decodes
    spec = SPECS[kind]
    procs = [spawn(k, t, spec) for t in PROMPTS]
    plain = k.spawn(ROOT, SpawnSpec("tiny", tokens=[5, 6, 7], stop=StopRules(max_tokens=12, ignore_eos=True)))
    k.run_until_idle()
    for p, t in zip(procs, PROMPTS):
        check(p, expected(k, ref, t, spec))
    assert plain.out_tokens == ref.greedy([5, 6, 7], 12)  # the unconstrained row is untouched
    text = k.models["tiny"].codec.decode(procs[0].out_tokens)
    if kind == "json_schema":
        obj = json.loads(text)
        assert set(obj) == set(SCHEMA["properties"]) and obj["color"] in ("red", "green", "blue")
    elif kind == "regex":
        assert re.fullmatch(REGEX, text)
    elif kind == "choice":
        assert text in CHOICES


def test_forks_prefix_hits_and_preemption_keep_the_grammar(make_kernel):
    spec = SPECS["json_schema"]
    for preempt in ("swap", "recompute"):
        k, ref = make_kernel(pages=48, page_size=4, budget=32, preempt=preempt)  # too small for all at once
        want = expected(k, ref, PROMPTS[1], spec)
        first = spawn(k, PROMPTS[1], spec)
        while len(first.out_tokens) < 4:  # (its grammar compiles off the kernel thread first)
            k.step()
        before = list(first.out_tokens)
        child = k.fork(ROOT, first.pid)  # mid-output: the child inherits the grammar's state
        again = spawn(k, PROMPTS[1], spec)  # a prefix hit on first's pages
        others = [spawn(k, t, spec) for t in (PROMPTS[0], PROMPTS[2])]
        k.run_until_idle()
        for p in (first, again):
            check(p, want)
        child.out_tokens[:0] = before  # a child's own output starts where it forked
        check(child, want)
        for p, t in zip(others, (PROMPTS[0], PROMPTS[2])):
            check(p, expected(k, ref, t, spec))
        assert sum(p.usage.preemptions for p in k.procs.values()) > 0, preempt


def test_a_crash_rebuilds_the_grammar_from_the_journal(make_kernel, tmp_path):
    spec = SPECS["json_schema"]
    k, ref = make_kernel(pages=256)
    journal = attach(k, tmp_path / "journal.db")
    p = spawn(k, PROMPTS[0], spec)
    while len(p.out_tokens) < 4:  # (its grammar compiles off the kernel thread first)
        k.step()
    assert journal.flush()
    k.listeners.clear()
    journal.close()  # what kill -9 leaves
    k2, _ = make_kernel(pages=256)
    journal2 = attach(k2, tmp_path / "journal.db")
    q = k2.procs[p.pid]
    assert q.grammar is not None and q.grammar.accepted == len(q.out_tokens) > 0
    k2.run_until_idle()
    check(q, expected(k2, ref, PROMPTS[0], spec))
    journal2.close()


def test_an_interactive_process_follows_its_grammar_every_turn(make_kernel):
    k, _ = make_kernel(pages=256)
    p = k.spawn(ROOT, SpawnSpec("tiny", messages=[{"role": "user", "content": "Pick one"}], interactive=True,
                                grammar=SPECS["choice"], stop=StopRules(max_tokens=20)))
    k.run_until_idle()
    first = p.stdout
    assert p.state == State.BLOCKED and p.reason == "grammar" and first in CHOICES
    k.write(ROOT, p.pid, "Again")
    k.run_until_idle()
    assert p.reason == "grammar" and p.stdout[len(first):] in CHOICES


def test_a_grammar_that_cannot_finish_in_time_ends_on_length_and_says_so(make_kernel):
    k, _ = make_kernel()
    long = GrammarSpec("json_schema", {"type": "object", "properties": {"s": {"type": "string", "minLength": 200}},
                                       "required": ["s"]})
    p = k.spawn(ROOT, SpawnSpec("tiny", tokens=[5, 6], grammar=long, stop=StopRules(max_tokens=10)))
    k.run_until_idle()
    assert (p.state, p.reason) == (State.EXITED, "length: the grammar was not complete") and len(p.out_tokens) == 10


def test_bad_grammars_are_refused_quoting_the_engine(make_kernel):
    """The syscalls compile first (kernel/grammar.py compile(), off the kernel thread): a bad
    grammar is INVALID_ARGUMENT before any process exists. A kernel caller that spawns
    without compiling gets the same error at once, or (for a compile still running) a
    process that never runs and ends killed with it."""
    k, _ = make_kernel()
    m = k.models["tiny"]
    for spec, words in [(GrammarSpec("regex", "(unclosed"), "invalid regex"),
                        (GrammarSpec("json_schema", "{not json"), "not JSON"),
                        (GrammarSpec("cfg", "start: foo"), "unknown name"),
                        (GrammarSpec("choice", ()), "at least one choice"),
                        (GrammarSpec("regex", "x" * 70000), "max_source_bytes=65536")]:
        with pytest.raises(InvalidArgument, match=re.escape(words)) as e:
            kgrammar.compile(m, spec)
        assert e.value.param == "grammar"
        try:
            p = spawn(k, [5, 6], spec)
        except InvalidArgument as e:
            assert words in str(e) and e.param == "grammar"
            continue
        k.run_until_idle()
        assert p.state == State.KILLED and words in p.reason and p.out_tokens == [], p.reason
