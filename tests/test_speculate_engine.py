"""Speculative decoding end to end on tiny models: greedy output equals transformers' generate()
on every path (rollbacks across page boundaries, batches, chunked prefill, forks, swap, stop
rules), logprobs are the target's, seeded sampling draws the same tokens, unseeded sampling
the same distribution, and only emitted tokens reach the events the journal records."""
import collections
import random

import pytest
import torch
from conftest import Reference
from daemon import start_daemon
from tiny import tiny_model

from llmos.drivers.cpu import CPUDriver
from llmos.kernel import ROOT, Kernel, KernelConfig, SchedConfig, SpawnSpec, SpecConfig, StopRules
from llmos.kernel.events import Output
from llmos.kernel.proc import SamplingParams

SPEC = SpecConfig(enabled=True, min_rate=0.0, row_cost=0.0, learn_cost=False)  # never off, rows free: every step verifies what it can
REPEAT = [10, 11, 12, 13, 14, 15, 16] * 3      # a prompt that makes lookup propose at once


@pytest.fixture
def spec_kernel(tokenizer):
    """A kernel with speculation on, over a tiny model whose attention is weak (o_proj scaled
    down): it repeats itself, so proposals are often right, yet its tokens still depend on the KV."""
    def make(family="llama", attention=0.05, speculate=SPEC, pages=64, page_size=4, budget=64):
        model = tiny_model(family)
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.mul_(attention)
        ref = Reference(model)
        k = Kernel(CPUDriver(), KernelConfig(page_size=page_size, kv_pages=pages,
                                             sched=SchedConfig(token_budget=budget, speculate=speculate)))
        k.adopt_model("tiny", model, tokenizer)
        verifies = []
        step = k.driver.step

        def recording(name, batch):  # every verify: (start, proposals, kept)
            out = step(name, batch)
            verifies.extend((s.start_pos, len(s.draft), len(out.accepted.get(s.seq_id, [])))
                            for s in batch.seqs if s.draft)
            return out
        k.driver.step = recording
        k.verifies = verifies
        return k, ref
    return make


def run_checked(k):
    """Run to the end, checking the page tables after every step: a resident process holds
    exactly the pages of its computed tokens, and no page past them is in the prefix cache."""
    m = k.models["tiny"]
    mm = m.memory
    while k.has_work():
        k.step()
        for p in k.procs.values():
            if p.pid in mm.tables and not p.state.done:
                table = mm.tables[p.pid]
                assert len(table) == -(-p.num_computed // mm.page_size), p.pid
                assert mm.tokens[p.pid] == p.num_computed
                full = p.num_computed // mm.page_size
                assert all(mm.pool.page_hash[pg] is None or i < full for i, pg in enumerate(table) if
                           mm.pool.ref_count[pg] == 1)
        used = sum(len(t) for t in mm.tables.values())
        assert used >= mm.pool.num_pages - mm.pool.num_free


def spawn(k, tokens, n, **kw):
    return k.spawn(ROOT, SpawnSpec("tiny", tokens=tokens, stop=StopRules(max_tokens=n, ignore_eos=True), **kw))


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_greedy_equals_generate_with_rollbacks_across_page_boundaries(spec_kernel, family):
    k, ref = spec_kernel(family, page_size=4)
    rng = random.Random(3)
    prompts = [REPEAT, REPEAT[3:] + [40, 41], [rng.randrange(3, 380) for _ in range(9)]]
    procs = [spawn(k, t, 40) for t in prompts]
    run_checked(k)
    for t, p in zip(prompts, procs):
        assert p.out_tokens == ref.greedy(t, 40), p.pid
    assert sum(kept for _, _, kept in k.verifies) > 10  # proposals were accepted...
    size = 4
    crossed_kept = [v for v in k.verifies if (v[0] + v[2]) // size > v[0] // size]
    crossed_rolled = [v for v in k.verifies if v[2] < v[1] and (v[0] + v[1]) // size > (v[0] + v[2] + 1) // size]
    assert crossed_kept and crossed_rolled  # ...into a new page, and rejected rows were rolled back off one


def test_a_random_model_rejects_nearly_everything_and_stays_exact(spec_kernel):
    k, ref = spec_kernel(attention=1.0, page_size=4, budget=16)
    rng = random.Random(5)
    prompts = [[rng.randrange(3, 380) for _ in range(rng.randrange(2, 30))] for _ in range(5)] + [REPEAT]
    procs = [spawn(k, t, 24) for t in prompts]  # chunked prefill beside verifies
    run_checked(k)
    for t, p in zip(prompts, procs):
        assert p.out_tokens == ref.greedy(t, 24)
    assert len(k.verifies) > 5


def test_the_off_switch_stops_proposing_when_they_are_rejected(spec_kernel):
    k, ref = spec_kernel(attention=1.0, speculate=SpecConfig(enabled=True, min_rate=0.9, cooldown=1000, row_cost=0,
                                                                              learn_cost=False))
    p = spawn(k, REPEAT, 30)
    run_checked(k)
    assert p.out_tokens == ref.greedy(REPEAT, 30)
    assert 1 <= p.lookup.verifies <= 3 and p.lookup.off_until > len(p.tokens)


def test_stop_rules_end_a_verified_run_where_they_would_have(spec_kernel, tokenizer):
    for stop in (StopRules(max_tokens=7, ignore_eos=True), StopRules(max_tokens=60, ignore_eos=False),
                 StopRules(max_tokens=60, stop=["e"], ignore_eos=True)):
        outs = []
        for speculate in (SPEC, SpecConfig()):
            k, ref = spec_kernel(speculate=speculate)
            p = k.spawn(ROOT, SpawnSpec("tiny", tokens=REPEAT, stop=stop))
            run_checked(k)
            outs.append((p.out_tokens, p.stdout, p.reason, p.usage.generated_tokens))
        assert outs[0] == outs[1], stop
        if stop.max_tokens == 7:
            assert len(outs[0][0]) == 7 and outs[0][0] == ref.greedy(REPEAT, 7)


def test_interactive_turns_fork_and_swap(spec_kernel, tokenizer):
    k, ref = spec_kernel(pages=24, page_size=4, budget=32)  # a small pool: swapping under pressure
    chat = k.spawn(ROOT, SpawnSpec("tiny", tokens=REPEAT, interactive=True,
                                   stop=StopRules(max_tokens=12, ignore_eos=True)))
    others = [spawn(k, REPEAT[i:] + REPEAT[:i], 30) for i in (2, 4)]
    for _ in range(4):
        k.step()
    at_fork = list(others[0].tokens)
    child = k.fork(ROOT, others[0].pid, max_tokens=10)
    run_checked(k)
    assert chat.state.value == "blocked" and chat.out_tokens == ref.greedy(REPEAT, 12)
    before = list(chat.tokens)
    k.write(ROOT, chat.pid, "and again")
    turn = list(chat.tokens)
    run_checked(k)
    assert chat.tokens[:len(before)] == before and chat.out_tokens[12:] == ref.greedy(turn, 12)
    for i, p in zip((2, 4), others):
        assert p.out_tokens == ref.greedy(REPEAT[i:] + REPEAT[:i], 30)
    assert child.out_tokens == ref.greedy(at_fork, 10)
    assert sum(p.usage.swaps + p.usage.preemptions for p in others + [chat, child]) > 0
    assert any(kept for *_, kept in k.verifies)


def test_logprobs_are_the_targets_and_only_emitted_tokens_are_output_events(spec_kernel):
    lp = SamplingParams(logprobs=True, top_logprobs=3)
    runs = []
    for speculate in (SPEC, SpecConfig()):
        k, _ = spec_kernel(speculate=speculate)
        seen = collections.defaultdict(list)
        k.listeners.append(lambda events, seen=seen: [seen[e.pid].extend(e.tokens) for e in events
                                                      if isinstance(e, Output)])
        p = spawn(k, REPEAT, 30, sampling=lp)
        run_checked(k)
        assert seen[p.pid] == p.out_tokens and len(p.logprobs) == 30
        runs.append(p)
    a, b = runs
    assert a.out_tokens == b.out_tokens and a.lookup.accepted > 0
    for x, y in zip(a.logprobs, b.logprobs):
        assert x.token == y.token and x.text == y.text and abs(x.logprob - y.logprob) < 1e-4
        assert [t for t, *_ in x.top] == [t for t, *_ in y.top]


def test_seeded_sampling_draws_the_same_tokens_with_or_without_speculation(spec_kernel):
    for seed in range(4):
        outs = []
        for speculate in (SPEC, SpecConfig()):
            k, _ = spec_kernel(speculate=speculate)
            p = spawn(k, REPEAT, 24, sampling=SamplingParams(temperature=0.8, top_k=50, top_p=0.95, seed=seed))
            run_checked(k)
            outs.append(p.out_tokens)
            accepted = p.lookup.accepted
        assert outs[0] == outs[1], seed
    assert accepted == 0  # (the run without speculation)


def test_unseeded_sampling_keeps_the_distribution(spec_kernel):
    """Chi-square of the joint frequencies of the second and third tokens, with against without
    speculation, over 300 runs each (in most runs with it, a verify row drew them)."""
    counts, kept = [], 0
    for speculate in (SpecConfig(enabled=True, min_rate=0.0, max_rows=512, row_cost=0.0, learn_cost=False),
                      SpecConfig()):
        k, ref = spec_kernel(speculate=speculate, pages=512, budget=512)
        chain = [10] + ref.greedy([10], 29)  # what the model says, then its middle again: lookup is often right
        prompt = chain + chain[10:20]
        procs = [spawn(k, prompt, 4, sampling=SamplingParams(temperature=0.3)) for _ in range(300)]
        k.run_until_idle()
        counts.append(collections.Counter(tuple(p.out_tokens[1:3]) for p in procs))
        kept += sum(p.lookup.accepted for p in procs)
    assert kept > 50
    keys = [key for key in set(counts[0]) | set(counts[1]) if counts[0][key] + counts[1][key] >= 10]
    chi = sum((counts[0][key] - counts[1][key]) ** 2 / (counts[0][key] + counts[1][key]) for key in keys)
    # Two samples of equal size: sum (a - b)^2 / (a + b) is chi-square with len(keys) - 1 degrees of freedom.
    dof = max(len(keys) - 1, 1)
    # Wilson–Hilferty's chi-square quantile at p = 1e-4 (z = 3.72): a run this far apart is a
    # real difference, not the luck of 600 unseeded draws (a skewed sampler lands in the hundreds).
    limit = dof * (1 - 2 / (9 * dof) + 3.72 * (2 / (9 * dof)) ** 0.5) ** 3
    assert len(keys) >= 3 and chi < limit, (chi, dof, limit)


def test_llmosd_speculate_flag_and_the_per_spawn_opt_out(tmp_path, tiny_model_dir):
    """Through a real daemon started with --speculate: a process that speculates and one that
    opted out answer the same (on this random model, [5, 6] * 4 + [5] is a prompt whose
    continuation lookup guesses right: see the kernel tests above)."""
    d = start_daemon(tmp_path / "state", str(tiny_model_dir), "--kv-pages", "128", "--page-size", "4", "--speculate")
    try:
        with d.client(timeout=60) as c:
            outs = []
            for speculate in (True, False):
                pid = c.spawn("tiny-llama", tokens=[5, 6] * 4 + [5], max_tokens=24, ignore_eos=True,
                              speculate=speculate)
                outs.append(c.wait(pid).output)
        assert outs[0] == outs[1] and outs[0]
    finally:
        d.stop_cleanly()


RECORDS = {"type": "array", "minItems": 4, "maxItems": 4, "items": {  # output that repeats its own structure
    "type": "object", "properties": {"name": {"enum": ["red", "green"]}, "n": {"type": "integer", "minimum": 0,
                                                                           "maximum": 9}},
    "required": ["name", "n"], "additionalProperties": False}}


@pytest.mark.parametrize("kind", ["records", "json_schema", "regex", "cfg"])
def test_constrained_processes_speculate_and_equal_generate_with_the_grammar(spec_kernel, kind):
    """Proposals of a constrained process are trimmed to what its grammar allows, each verify row
    is masked as the grammar stands after the proposals before it, and only kept tokens advance
    the grammar: greedy output equals generate() with the grammar, across page boundaries."""
    from test_constrained import check
    from test_grammar import REGEX, SCHEMA, SUM_LARK, reference

    from llmos.syscalls.abi.grammar import GrammarSpec

    spec = {"records": GrammarSpec("json_schema", RECORDS), "json_schema": GrammarSpec("json_schema", SCHEMA),
            "regex": GrammarSpec("regex", REGEX), "cfg": GrammarSpec("cfg", SUM_LARK)}[kind]
    k, ref = spec_kernel(pages=256, page_size=4, budget=32)
    codec = k.models["tiny"].codec
    compiled = codec.grammars().compile(spec)
    prompts = [REPEAT, [5, 6, 7], list(range(20, 40))]
    procs = [k.spawn(ROOT, SpawnSpec("tiny", tokens=t, grammar=spec, stop=StopRules(max_tokens=120)))
             for t in prompts]
    run_checked(k)
    for t, p in zip(prompts, procs):
        check(p, reference(ref.model, codec.tokenizer, t, compiled, 120))
        assert p.grammar is not None and p.grammar.accepted == p.turn_tokens  # the grammar took exactly what was kept
    proposed = sum(n for _, n, _ in k.verifies)
    kept = sum(kept for _, _, kept in k.verifies)
    assert proposed > 0 or kind == "regex"  # its 8 tokens leave little to look up
    if kind == "records":  # its structure repeats: most proposals are what the grammar forces anyway
        assert kept >= 10 and kept / proposed > 0.3, (kept, proposed)



def test_a_seeded_constrained_process_draws_the_same_tokens_with_or_without_speculation(spec_kernel):
    from llmos.syscalls.abi.grammar import GrammarSpec

    spec = GrammarSpec("json_schema", RECORDS)
    kept = 0
    for seed in range(3):
        outs = []
        for speculate in (SPEC, SpecConfig()):
            k, _ = spec_kernel(speculate=speculate, pages=256)
            p = k.spawn(ROOT, SpawnSpec("tiny", tokens=REPEAT, grammar=spec, stop=StopRules(max_tokens=120),
                                        sampling=SamplingParams(temperature=0.8, top_k=50, seed=seed)))
            run_checked(k)
            outs.append((p.out_tokens, p.reason))
            kept += p.lookup.accepted
        assert outs[0] == outs[1], seed
        assert outs[0][1] == "grammar"
    assert kept > 10
