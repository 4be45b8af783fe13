"""Long prompts: paid in chunks of the prefill budget when alone and of the token budget beside
decodes, across page boundaries, and token-exact against transformers' generate() either way."""
import random

import pytest

from llmos.kernel import ROOT, SpawnSpec, StopRules

FAMILIES = ["llama", "qwen2", "mistral"]


def prompt(n, seed):
    rng = random.Random(seed)
    return [rng.randrange(3, 380) for _ in range(n)]


def spawn(k, tokens, n, priority=0):
    return k.spawn(ROOT, SpawnSpec("tiny", tokens=tokens, priority=priority,
                                   stop=StopRules(max_tokens=n, ignore_eos=True)))


def chunks(k, p):
    """Step k until p's prompt is computed; the size of each chunk it was paid in."""
    out, done = [], p.num_computed
    while p.num_computed < len(p.tokens) - 1 and not p.state.done:
        k.step()
        if p.num_computed > done:
            out.append(p.num_computed - done)
            done = p.num_computed
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_a_long_prompt_alone_is_paid_in_prefill_budget_chunks_and_is_exact(make_kernel, family):
    # Chunks of 50 tokens over pages of 16: every chunk but the first starts and ends mid-page.
    k, ref = make_kernel(family, pages=64, page_size=16, budget=8, prefill_budget=50)
    tokens = prompt(301, seed=3)
    p = spawn(k, tokens, 10)
    assert chunks(k, p)[:6] == [50] * 6
    k.run_until_idle()
    assert p.out_tokens == ref.greedy(tokens, 10)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_long_prompt_beside_decodes_is_paid_in_token_budget_chunks_and_is_exact(make_kernel, family):
    k, ref = make_kernel(family, pages=64, page_size=16, budget=23, prefill_budget=200)
    short = prompt(5, seed=4)
    d = spawn(k, short, 40)
    k.step()  # d's prompt: from now on it decodes
    tokens = prompt(250, seed=5)
    p = spawn(k, tokens, 8)
    sizes = chunks(k, p)
    assert sizes[0] == 22 and max(sizes) <= 22  # the budget less d's token, never the prefill budget
    k.run_until_idle()
    assert p.out_tokens == ref.greedy(tokens, 8)
    assert d.out_tokens == ref.greedy(short, 40)


def test_a_higher_priority_arrival_cuts_into_a_long_prompt_and_both_stay_exact(make_kernel):
    k, ref = make_kernel(pages=96, page_size=16, budget=32, prefill_budget=32)
    decoders = [spawn(k, prompt(6, seed=10 + i), 30) for i in range(4)]
    k.step()
    long = spawn(k, prompt(400, seed=6), 6)
    k.step(); k.step()  # the long prompt is mid-prefill
    urgent_tokens = prompt(20, seed=7)
    urgent = spawn(k, urgent_tokens, 6, priority=-5)
    k.step()
    assert urgent.num_computed == 20 and urgent.out_tokens  # its prompt ran in the very next step
    k.run_until_idle()
    assert urgent.out_tokens == ref.greedy(urgent_tokens, 6)
    assert long.out_tokens == ref.greedy(long.tokens[:400], 6)
    for d in decoders:
        assert d.out_tokens == ref.greedy(d.tokens[:6], 30)


def test_the_whole_prompt_in_one_chunk_equals_many_small_ones(make_kernel):
    tokens = prompt(333, seed=8)
    outs = []
    for budget in (400, 37):
        k, ref = make_kernel(pages=64, page_size=16, budget=budget, prefill_budget=budget)
        p = spawn(k, tokens, 12)
        k.run_until_idle()
        outs.append(p.out_tokens)
    assert outs[0] == outs[1] == ref.greedy(tokens, 12)
