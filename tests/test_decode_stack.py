"""Decode steps as one C++ call (llmos.DecodeStack, drivers/stack.py): the stacked layers give the
direct path's logits bit for bit, in fp32, int8 and int4, at one row and at several, over one
page and over many, with proposals verified in the step, with q/k/v biases and sliding windows;
so the tokens stay those of generate() (on the same quantized weights). Bad arguments are
refused with a message, and the profiler still sees the products inside the call."""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from llmos.drivers import ext, stack
from llmos.kernel import ROOT, SpawnSpec, SpecConfig, StopRules
from workload import assert_repeats_match_generate, run_mixed_batches

pytestmark = pytest.mark.skipif(not ext.available(), reason="the fused ops are not built (make setup)")

WIDE = dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3)  # the default
# model's widths, so that every op runs at the sizes it serves


def served(k):
    """The model's StackedDecode, or a skip where this CPU's measured forms leave it none."""
    runner = k.driver.runners["tiny"]
    if runner.stack is None:
        pytest.skip("this CPU serves the products in forms DecodeStack does not run")
    assert "decode steps in one C++ call" in k.models["tiny"].info.kernels
    return runner


def spawn_all(k, batch, n):
    return [k.spawn(ROOT, SpawnSpec("tiny", tokens=t, stop=StopRules(max_tokens=n, ignore_eos=True))) for t in batch]


@pytest.mark.parametrize("family,quantize", [("llama", None), ("llama", "int8"), ("llama", "int4"),
                                             ("qwen2", None), ("mistral", "int8")])
def test_stacked_steps_give_the_direct_paths_logits_bit_for_bit(make_kernel, family, quantize):
    over = dict(WIDE, sliding_window=6) if family == "mistral" else WIDE  # a window shorter than the contexts
    k, _ = make_kernel(family=family, page_size=4, budget=32, quantize=quantize, **over)
    runner = served(k)
    st, seen, forward = runner.stack, [], runner.forward

    def both(meta, ids, pos, keep):  # the direct path first; the stacked step then writes the same KV again
        runner.stack = None
        want = forward(meta, ids, pos, keep)
        runner.stack = st
        before = st.steps
        got = forward(meta, ids, pos, keep)
        if meta.decode_rows is not None and not meta.prefills:
            seen.append((len(ids), meta.decode_pages.shape[1], st.steps > before, torch.equal(got, want)))
        return got
    runner.forward = both
    run_mixed_batches(k)
    assert seen and all(eq for *_, eq in seen), [s for s in seen if not s[-1]]
    assert {r for r, *_ in seen} >= {1, 2, 3, 4}
    assert any(p == 1 for _, p, *_ in seen) and any(p > 2 for _, p, *_ in seen)
    assert all(ran for _, _, ran, _ in seen) or not st.serves_every_row_count()


@pytest.mark.parametrize("quantize", ["int4", "int8", None])
def test_stacked_decoding_matches_generate_with_and_without_speculation(make_kernel, quantize):
    spec = SpecConfig(enabled=True, min_rate=0.0, row_cost=0.0, learn_cost=False)
    for speculate in (None, spec):
        k, ref = make_kernel(page_size=4, budget=32, quantize=quantize, speculate=speculate)
        runner = served(k)
        assert_repeats_match_generate(k, ref, label=f"speculate={speculate is not None}")
        assert runner.stack.steps > 0


def test_the_profiler_sees_the_products_and_attention_inside_the_call(make_kernel):
    k, _ = make_kernel(page_size=4, quantize="int8", **WIDE)
    runner = served(k)
    p = spawn_all(k, [[5, 6, 7, 8, 9]], 40)[0]
    while p.usage.generated_tokens < 2:
        k.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        k.step()
    calls = {e.key: e.count for e in prof.key_averages()}
    layers = runner.model.config.num_hidden_layers
    assert calls.get("llmos::paged_decode") == layers
    assert calls.get("llmos::int8_dot", 0) >= 4 * layers  # q/k/v, o, gate/up and down of every layer
    k.run_until_idle()


def test_bad_arguments_are_refused_with_a_message(make_kernel):
    k, _ = make_kernel(page_size=4, quantize="int8", **WIDE)
    runner = served(k)
    p = spawn_all(k, [[5, 6, 7]], 3)[0]
    k.run_until_idle()
    assert p.state.done
    kv = runner.kv
    built = runner.stack._build(1, kv)
    hidden = runner.model.config.hidden_size
    d = runner.lean.direct.layers[0].head_dim
    h, cos, sin = torch.zeros(1, 1, hidden), torch.ones(1, 1, d), torch.zeros(1, 1, d)
    pages, lens = torch.zeros(1, 1, dtype=torch.long), torch.ones(1, dtype=torch.long)
    slots = kv[0][0].shape[0] * kv[0][0].shape[1]
    with pytest.raises(RuntimeError, match=f"a slot is outside the pool of {slots}"):
        built.run(h, cos, sin, torch.tensor([slots]), pages, lens)
    with pytest.raises(RuntimeError, match="a page id is out of the pool"):
        built.run(h, cos, sin, torch.tensor([0]), torch.tensor([[10 ** 6]]), lens)
    with pytest.raises(RuntimeError, match="h must be float32"):
        built.run(torch.zeros(1, 1, hidden + 1), cos, sin, torch.tensor([0]), pages, lens)
    with pytest.raises(RuntimeError, match="do not describe whole layers"):
        torch.classes.llmos.DecodeStack([], [t for pair in kv for t in pair], [1], [1.0])
    with torch.inference_mode():  # the pool still serves
        q = spawn_all(k, [[5, 6, 7]], 3)[0]
        k.run_until_idle()
    assert q.out_tokens == p.out_tokens


def test_without_the_fused_ops_there_is_no_stack_and_tokens_stay(make_kernel, monkeypatch):
    monkeypatch.setattr(ext, "available", lambda: False)
    assert stack.problem(None) == "not a Llama-shaped model (no direct path)"
    k, ref = make_kernel(quantize="int8")
    assert k.driver.runners["tiny"].stack is None
    assert "DecodeStack" not in k.models["tiny"].info.kernels
    p = spawn_all(k, [[5, 6, 7]], 6)[0]
    k.run_until_idle()
    assert p.out_tokens == ref.greedy([5, 6, 7], 6)
