"""Grammars for constrained decoding (drivers/grammar*.py), on the tiny tokenizer and model.

The reference is transformers' generate() with a LogitsProcessor that drives llguidance's own
matcher and bitmask helpers directly, not our GrammarState or mask_logits.
"""
import json
import re
import threading
import time

import llguidance
import llguidance.hf
import llguidance.numpy
import pytest
import torch
from tiny import VOCAB, tiny_model
from transformers import LogitsProcessor, LogitsProcessorList

from llmos.drivers import grammar as grammar_mod
from llmos.drivers.grammar import (GrammarCompiler, GrammarError, GrammarLimits, GrammarSpec, GrammarTimeout,
                                   GrammarTooLarge)
from llmos.drivers.grammar_mask import mask_logits

EOS = 2
PROMPT = "Hello world, this is llmos speaking."
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "pattern": "^[a-z]{2,8}$"},
    "color": {"enum": ["red", "green", "blue"]},
    "size": {"type": "object", "properties": {"w": {"type": "integer", "minimum": 0, "maximum": 99},
                                              "h": {"type": "boolean"}},
             "required": ["w", "h"], "additionalProperties": False},
    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 2, "maxItems": 3}},
    "required": ["name", "color", "size", "tags"], "additionalProperties": False}
REGEX = r"(yes|no), [0-9]{2}!"
CHOICES = ["red", "green", "blue", "none"]
CALL_GBNF = 'root ::= "call(" arg ("," arg)? ")"\narg ::= [a-z]{1,4}\n'
SUM_LARK = 'start: expr\nexpr: term ("+" term)*\nterm: /[0-9]{1,3}/ | "(" expr ")"\n'
SPECS = {"json_schema": GrammarSpec("json_schema", SCHEMA), "json_object": GrammarSpec("json_object"),
         "regex": GrammarSpec("regex", REGEX), "choice": GrammarSpec("choice", CHOICES),
         "lark": GrammarSpec("cfg", SUM_LARK), "gbnf": GrammarSpec("cfg", CALL_GBNF)}


@pytest.fixture(scope="module")
def compiler(tokenizer):
    return GrammarCompiler(tokenizer, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def prompt(tokenizer):
    return tokenizer.encode(PROMPT, add_special_tokens=False)


def ids(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def allowed(state, width=VOCAB):
    logits = torch.zeros(1, width)
    assert mask_logits(logits, [state]) == {}
    return torch.isfinite(logits[0]).nonzero().flatten().tolist()


def masked_greedy(model, prompt, states, n):
    """Our sampler's loop: one batched forward per step (KV cached), argmax of masked logits."""
    outs, done = [[] for _ in states], [False] * len(states)
    inputs, past = torch.tensor([prompt] * len(states)), None
    with torch.no_grad():
        for _ in range(n):
            r = model(input_ids=inputs, past_key_values=past, use_cache=True)
            past, logits = r.past_key_values, r.logits[:, -1, :].float()
            assert mask_logits(logits, states) == {}
            nxt = logits.argmax(-1).tolist()
            for i, t in enumerate(nxt):
                if not done[i]:
                    outs[i].append(t)
                    done[i] = t == EOS
                    if not done[i] and states[i] is not None:
                        assert states[i].accept(t)
            if all(done):
                break
            inputs = torch.tensor([[t] for t in nxt])
    return outs


class LibraryProcessor(LogitsProcessor):
    """generate()'s processor: llguidance's matcher on the compiled grammar text, its bitmask helpers."""

    def __init__(self, tokenizer, grammar_text):
        self.matcher = llguidance.LLMatcher(llguidance.hf.from_tokenizer(tokenizer, n_vocab=VOCAB), grammar_text,
                                            log_level=0)
        self.started = False

    def __call__(self, input_ids, scores):
        if self.started:
            assert self.matcher.consume_token(int(input_ids[0, -1])), self.matcher.get_error()
        self.started = True
        bitmask = llguidance.numpy.allocate_token_bitmask(1, VOCAB)
        llguidance.numpy.fill_next_token_bitmask(self.matcher, bitmask)
        out = scores.detach().float().clone().numpy()
        llguidance.numpy.apply_token_bitmask_inplace(out, bitmask)
        return torch.from_numpy(out)


def reference(model, tokenizer, prompt, grammar, n):
    processors = LogitsProcessorList([LibraryProcessor(tokenizer, grammar.text)] if grammar else [])
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, eos_token_id=EOS, pad_token_id=0,
                             logits_processor=processors)
    return out[0, len(prompt):].tolist()


def text_of(tokenizer, out):
    assert out[-1] == EOS, "the grammar should have ended the output"
    return tokenizer.decode(out[:-1])


# -- outputs are valid by construction -----------------------------------------------------------

def test_json_schema_output_is_valid(compiler, model, tokenizer, prompt):
    state = compiler.compile(SPECS["json_schema"]).start()
    out = masked_greedy(model, prompt, [state], 120)[0]
    doc = json.loads(text_of(tokenizer, out))
    assert list(doc) == ["name", "color", "size", "tags"]
    assert re.fullmatch(r"[a-z]{2,8}", doc["name"]) and doc["color"] in ("red", "green", "blue")
    assert set(doc["size"]) == {"w", "h"} and 0 <= doc["size"]["w"] <= 99 and isinstance(doc["size"]["h"], bool)
    assert 2 <= len(doc["tags"]) <= 3 and set(doc["tags"]) <= {"a", "b", "c"}
    assert state.is_complete() and state.can_stop()


def test_regex_choice_and_cfg_outputs_are_valid(compiler, model, tokenizer, prompt):
    kinds = ["regex", "choice", "gbnf", "lark"]
    states = [compiler.compile(SPECS[k]).start() for k in kinds]
    outs = dict(zip(kinds, masked_greedy(model, prompt, states, 40)))
    assert re.fullmatch(REGEX, text_of(tokenizer, outs["regex"]))
    assert text_of(tokenizer, outs["choice"]) in CHOICES
    assert re.fullmatch(r"call\([a-z]{1,4}(,[a-z]{1,4})?\)", text_of(tokenizer, outs["gbnf"]))
    total = text_of(tokenizer, outs["lark"])
    assert re.fullmatch(r"[0-9()+]+", total) and eval(total) >= 0  # noqa: S307 (digits, + and parentheses only)
    assert all(s.can_stop() for s in states)


def test_any_json_object(compiler, tokenizer):
    state = compiler.compile(GrammarSpec("json_object")).start()
    assert not state.accept(ids(tokenizer, "[")[0])
    assert state.replay(ids(tokenizer, '{"a":[1,{"b":null}],"c":"x"}'))
    assert state.is_complete() and allowed(state) == [EOS]
    assert not compiler.compile(GrammarSpec("json_object")).start().replay(ids(tokenizer, '{"a":}'))


# -- exactness: our masked loop equals transformers' generate() ----------------------------------

@pytest.mark.parametrize("kind", list(SPECS))
def test_greedy_equals_generate_with_processor(compiler, model, tokenizer, prompt, kind):
    grammar = compiler.compile(SPECS[kind])
    ours = masked_greedy(model, prompt, [grammar.start()], 120)[0]
    assert ours == reference(model, tokenizer, prompt, grammar, 120)


def test_mixed_batch_equals_generate_row_by_row(compiler, model, tokenizer, prompt):
    grammars = [None, compiler.compile(SPECS["json_schema"]), None, compiler.compile(SPECS["regex"]),
                compiler.compile(SPECS["choice"])]
    outs = masked_greedy(model, prompt, [g.start() if g else None for g in grammars], 24)
    for g, out in zip(grammars, outs):
        assert out == reference(model, tokenizer, prompt, g, 24)[:len(out)]
    assert outs[0] == outs[2] and EOS not in outs[0]  # unconstrained rows ran free


def test_rows_without_grammar_are_untouched(compiler):
    logits = torch.randn(4, VOCAB)
    before = logits.clone()
    assert mask_logits(logits, [None] * 4) == {}
    assert torch.equal(logits, before)
    assert mask_logits(logits, [None, compiler.compile(SPECS["regex"]).start(), None, None]) == {}
    assert torch.equal(logits[[0, 2, 3]], before[[0, 2, 3]])
    assert torch.isinf(logits[1]).sum() == VOCAB - 2  # "y" or "n" only


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpu_and_device_bit_paths_agree(dtype):
    from llmos.drivers.grammar_mask import _apply_numpy, _apply_torch
    gen = torch.Generator().manual_seed(0)
    bitmask = torch.randint(-2**31, 2**31 - 1, (3, 12), dtype=torch.int32, generator=gen)
    wide = torch.randn(5, VOCAB + 20, generator=gen).to(dtype)
    logits = wide[:, :VOCAB + 10]  # wider than the mask, and a strided view like a model's last-position logits
    a, b = wide.clone()[:, :VOCAB + 10], wide.clone()[:, :VOCAB + 10]
    assert not a.is_contiguous()
    _apply_numpy(a, [0, 2, 3], bitmask)
    _apply_torch(b, [0, 2, 3], bitmask)
    assert torch.equal(a, b) and torch.equal(a[[1, 4]], logits[[1, 4]])
    want = [bool(int(bitmask[1, t // 32]) >> (t % 32) & 1) for t in range(VOCAB)] + [False] * 10
    assert torch.isfinite(a[2].float()).tolist() == want


def test_padded_vocabulary_is_never_allowed(compiler, tokenizer):
    assert len(tokenizer) < VOCAB
    state = compiler.compile(GrammarSpec("json_object")).start()
    for t in ids(tokenizer, '{"k":[true,"v"]}'):
        assert max(allowed(state, width=VOCAB + 40)) < len(tokenizer)
        assert state.accept(t)


# -- state: accept, ending, fork, rollback, replay -------------------------------------------------

def test_ending_complete_versus_can_stop(compiler, tokenizer):
    state = compiler.compile(GrammarSpec("choice", ["no", "none"])).start()
    assert EOS not in allowed(state) and not state.can_stop()
    assert state.replay(ids(tokenizer, "no"))
    assert state.can_stop() and not state.is_complete() and EOS in allowed(state) and len(allowed(state)) > 1
    assert state.accept(EOS) and state.is_complete() and state.accepted == 3  # "n", "o", EOS
    state.rollback(1)
    assert state.can_stop() and not state.is_complete()
    none = ids(tokenizer, "none")
    assert state.replay(none)
    assert state.is_complete() and allowed(state) == [EOS]
    assert state.accept(EOS) and state.accept(EOS) and state.accepted == len(none) + 2
    assert not state.accept(ids(tokenizer, "n")[0])
    state.rollback(2)
    assert state.is_complete() and state.accepted == len(none)
    state.rollback(1)
    assert not state.can_stop() and allowed(state) == [ids(tokenizer, "e")[0]]
    assert state.replay(none + [EOS, EOS]) and state.fork().accepted == len(none) + 2


def test_rejected_token_changes_nothing(compiler, tokenizer):
    state = compiler.compile(SPECS["regex"]).start()
    assert state.accept(ids(tokenizer, "y")[0])
    before = allowed(state)
    assert not state.accept(ids(tokenizer, "n")[0])
    assert state.error is None and state.accepted == 1 and allowed(state) == before


def test_fork_rollback_and_replay_agree(compiler, tokenizer):
    grammar = compiler.compile(SPECS["json_schema"])
    doc = ids(tokenizer, '{"name":"ab","color":"blue","size":{"w":42,"h":true},"tags":["c","a"]}')

    def at(tokens):
        s = grammar.start()
        assert s.replay(tokens)
        return allowed(s), s.can_stop(), s.is_complete()

    parent = grammar.start()
    for t in doc[:10]:
        assert parent.accept(t)
    child = parent.fork()
    for t in doc[10:]:
        assert parent.accept(t)
    assert (allowed(child), child.accepted) == (at(doc[:10])[0], 10)
    assert parent.is_complete() and at(doc) == (allowed(parent), True, True)
    parent.rollback(len(doc) - 7)
    assert parent.accepted == 7 and (allowed(parent), parent.can_stop(), parent.is_complete()) == at(doc[:7])
    for t in doc[7:]:
        assert parent.accept(t)
    assert parent.is_complete()
    with pytest.raises(ValueError, match="cannot roll back"):
        child.rollback(11)
    assert child.accept(doc[10]) and child.accepted == 11  # the refused rollback left it usable


def test_replay_stops_at_the_first_bad_token(compiler, tokenizer):
    state = compiler.compile(SPECS["regex"]).start()
    good, bad = ids(tokenizer, "no, 4"), ids(tokenizer, "x")
    assert not state.replay(good + bad + good)
    assert state.accepted == len(good) and state.error is None
    assert state.replay([]) and state.accepted == 0


# -- bad input and limits ---------------------------------------------------------------------------

def library_message(text, tokenizer):
    return llguidance.LLMatcher.validate_grammar(text, llguidance.hf.from_tokenizer(tokenizer, n_vocab=VOCAB))


LARK_BAD, BAD_TYPE = 'start: foo\nfoo: "a" bar\n', '{"type": "strin"}'
UNSAT = '{"type": "string", "minLength": 5, "maxLength": 2}'


@pytest.mark.parametrize("spec, library_text, words", [
    (GrammarSpec("regex", "ab(c"), llguidance.LLMatcher.grammar_from_regex("ab(c"), "unclosed group"),
    (GrammarSpec("cfg", LARK_BAD), llguidance.LLMatcher.grammar_from_lark(LARK_BAD), 'at 2(6): unknown name: "bar"'),
    (GrammarSpec("json_schema", BAD_TYPE), llguidance.LLMatcher.grammar_from_json_schema(BAD_TYPE), "Invalid type: strin"),
    (GrammarSpec("json_schema", UNSAT), llguidance.LLMatcher.grammar_from_json_schema(UNSAT), "Unsatisfiable"),
])
def test_invalid_grammar_quotes_the_library(compiler, tokenizer, spec, library_text, words):
    quoted = library_message(library_text, tokenizer)
    assert words in quoted
    with pytest.raises(GrammarError) as err:
        compiler.compile(spec)
    assert quoted.splitlines()[0] in str(err.value) and not isinstance(err.value, GrammarTooLarge)


def test_malformed_json_and_gbnf_name_the_position(compiler):
    with pytest.raises(GrammarError, match=r"not JSON: .*line 1 column 19"):
        compiler.compile(GrammarSpec("json_schema", '{"type": "string",'))
    with pytest.raises(GrammarError, match=r"Expected '\)' at line 1"):
        compiler.compile(GrammarSpec("cfg", 'root ::= "a" ('))


@pytest.mark.parametrize("spec, limit", [
    (GrammarSpec("regex", "a" * (grammar_mod.MAX_SOURCE_BYTES + 1)), "max_source_bytes=65536"),
    (GrammarSpec("choice", [str(i) for i in range(grammar_mod.MAX_CHOICES + 1)]), "max_choices=1024"),
])
def test_over_the_size_limits_names_the_limit(compiler, spec, limit):
    with pytest.raises(GrammarTooLarge, match=limit):
        spec.check()
    with pytest.raises(GrammarTooLarge, match=limit):
        compiler.submit(spec)


@pytest.mark.parametrize("spec", [GrammarSpec("nope", "x"), GrammarSpec("choice", []), GrammarSpec("regex", ""),
                                  GrammarSpec("regex", ("a",))])
def test_malformed_spec(spec):
    with pytest.raises(GrammarError):
        spec.check()


def test_over_the_engine_limits_names_the_limit(tokenizer):
    small = GrammarCompiler(tokenizer, vocab_size=VOCAB, limits=GrammarLimits(max_lexer_fuel=1000))
    with pytest.raises(GrammarTooLarge, match=r"max_lexer_fuel=1000: initial lexer configuration"):
        small.compile(GrammarSpec("json_schema", {"enum": [f"choice {i}" for i in range(300)]}))


def test_per_step_limit_ends_the_row_with_eos_and_a_reason(tokenizer):
    small = GrammarCompiler(tokenizer, vocab_size=VOCAB, limits=GrammarLimits(max_lexer_states=50))
    state = small.compile(GrammarSpec("regex", "(a|b)*a(a|b){20}")).start()
    a, b = ids(tokenizer, "a")[0], ids(tokenizer, "b")[0]
    for i in range(60):  # the sampler's order: mask, then accept; the lexer grows a state per new byte context
        logits = torch.zeros(2, VOCAB)
        dead = mask_logits(logits, [None, state])
        if dead:
            break
        assert state.accept([a, a, b, a, b, b, b][i % 7])
    assert state.error and "max_lexer_states=50" in state.error
    assert dead == {1: state.error}
    assert torch.isfinite(logits[1]).nonzero().flatten().tolist() == [EOS] and torch.isfinite(logits[0]).all()


def test_a_row_no_token_continues_allows_only_eos(compiler, monkeypatch):
    from llmos.drivers import grammar_mask
    real = grammar_mask.fill_bitmask
    monkeypatch.setattr(grammar_mask, "fill_bitmask", lambda states, ahead=None: real(states, ahead).zero_())
    logits = torch.zeros(2, VOCAB)
    assert mask_logits(logits, [compiler.compile(SPECS["regex"]).start(), None]) == {
        0: "no token of the vocabulary continues the grammar"}
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [EOS] and torch.isfinite(logits[1]).all()


def test_rows_ahead_are_masked_as_the_grammar_stands_after_their_tokens_and_the_state_is_untouched(compiler):
    from llmos.drivers.grammar_mask import fill_bitmask
    state = compiler.compile(SPECS["regex"]).start()
    ok = allowed(state)
    first = ok[0]
    after = state.fork()
    assert after.accept(first)
    second = allowed(after)[0]
    bad = next(t for t in range(VOCAB) if t not in set(ok))
    masks = fill_bitmask([state, state, state, state], [[], [first], [first, second], [bad]])
    want = fill_bitmask([state, after])
    assert torch.equal(masks[0], want[0]) and torch.equal(masks[1], want[1]) and not torch.equal(masks[0], masks[1])
    assert (masks[3] == -1).all()  # tokens the grammar does not take: every token allowed, none is kept
    assert state.accepted == 0 and allowed(state) == ok  # walked forward and back
    assert state.valid_prefix([first, second, bad]) == 2 and state.valid_prefix([bad, first]) == 0
    assert state.accepted == 0


def test_unsatisfiable_within_the_budget_is_never_complete_and_never_all_inf(compiler, model, prompt):
    state = compiler.compile(GrammarSpec("json_schema", {"type": "string", "minLength": 200})).start()
    out = masked_greedy(model, prompt, [state], 30)[0]
    assert len(out) == 30 and EOS not in out
    assert not state.is_complete() and not state.can_stop() and state.error is None
    assert EOS not in allowed(state) and len(allowed(state)) > 0


# -- compiling off the caller's thread: timeout, cache -------------------------------------------

def slow(monkeypatch, seconds, calls=None):
    real = grammar_mod.engine_grammar

    def engine_grammar(spec):
        if calls is not None:
            calls.append(spec)
        time.sleep(seconds)
        return real(spec)
    monkeypatch.setattr(grammar_mod, "engine_grammar", engine_grammar)


def test_compile_timeout_names_the_limit_and_does_not_block(tokenizer, monkeypatch):
    quick = GrammarCompiler(tokenizer, vocab_size=VOCAB, limits=GrammarLimits(compile_timeout_s=0.05))
    slow(monkeypatch, 0.4)
    job = quick.submit(GrammarSpec("regex", "[0-9]+"))
    t0 = time.monotonic()
    assert job.poll() is None and time.monotonic() - t0 < 0.02
    with pytest.raises(GrammarTimeout, match=r"compile_timeout_s=0.05"):
        job.result()
    assert time.monotonic() - t0 < 0.3
    with pytest.raises(GrammarTimeout):
        job.poll()
    job.future.result(timeout=5)
    time.sleep(0.05)
    assert quick.cached() == []  # too slow to keep: a retry would time out the same way


def test_cache_is_bounded_lru_and_shares_inflight_compiles(tokenizer, monkeypatch):
    lru = GrammarCompiler(tokenizer, vocab_size=VOCAB, limits=GrammarLimits(cache_size=2))
    a, b, c = (GrammarSpec("regex", r) for r in ("a+", "b+", "c+"))
    ga = lru.compile(a)
    assert lru.compile(GrammarSpec("regex", "a+")) is ga
    lru.compile(b), lru.compile(a), lru.compile(c)
    assert lru.cached() == [a, c]  # b was least recently used
    assert lru.compile(b) is not None and lru.cached() == [c, b]
    calls = []
    slow(monkeypatch, 0.2, calls)
    d = GrammarSpec("json_schema", {"type": "integer"})
    jobs = [lru.submit(d) for _ in range(3)]
    results = [None] * 3
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, jobs[i].result())) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results[0] is results[1] is results[2]


def test_spec_from_dict_equals_spec_from_text():
    assert GrammarSpec("json_schema", SCHEMA) == GrammarSpec("json_schema", json.dumps(SCHEMA))
    assert hash(GrammarSpec("choice", ["x", "y"])) == hash(GrammarSpec("choice", ("x", "y")))
