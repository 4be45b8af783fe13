"""Decode steps through torch.compile (drivers/compiled.py): the compiled layers give eager's
logits bit for bit, at one row and at several, over one page and over many, with proposals
verified in the step, so the tokens stay those of generate() (on the same int8 or 4-bit weights, or fp32's); a model
whose steps cannot be compiled exactly stays eager and says why."""
import pytest
import torch

from llmos.drivers import ext, stack
from llmos.drivers.choice import RowsGroup
from llmos.kernel import ROOT, SpawnSpec, SpecConfig, StopRules
from workload import assert_repeats_match_generate, run_mixed_batches

pytestmark = pytest.mark.skipif(not ext.available(), reason="the fused ops are not built (make setup)")


@pytest.fixture(autouse=True)
def graphs_not_stack(monkeypatch):
    """Steps as the compiled graphs run them: where DecodeStack serves every row count
    (drivers/stack.py), nothing would be left to compile."""
    monkeypatch.setattr(stack, "problem", lambda lean: "off: these tests are of the compiled graphs")


def by_rows(k):
    """Whether some product changes form with the row count (drivers/choice.py): a step of more
    rows than its graph was traced for then runs eagerly, and that is allowed."""
    return any(isinstance(m, RowsGroup) for m in k.driver.runners["tiny"].model.modules())


def spawn_all(k, batch, n):
    return [k.spawn(ROOT, SpawnSpec("tiny", tokens=t, stop=StopRules(max_tokens=n, ignore_eos=True))) for t in batch]


WIDE = dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3)  # the default
# model's widths, so that every op runs at the sizes it serves


@pytest.mark.parametrize("quantize", ["int4", "int8", None])
def test_compiled_steps_give_eager_logits_bit_for_bit(make_kernel, quantize):
    k, _ = make_kernel(page_size=4, budget=32, quantize=quantize, compile=True, **WIDE)
    runner = k.driver.runners["tiny"]
    compiled = runner.compiled
    if quantize is None and compiled is None:  # fp32 shapes this CPU measured faster in MKL's form
        assert "products do not compile exactly" in k.models["tiny"].info.kernels
        pytest.skip("this CPU serves some fp32 shapes in a form that does not compile exactly")
    assert compiled is not None and compiled.compile_s > 0
    assert "decode steps compiled" in k.models["tiny"].info.kernels
    seen, forward = [], runner.forward

    def both(meta, ids, pos, keep):  # eager first, then the compiled step writes the same KV again
        runner.compiled = None
        want = forward(meta, ids, pos, keep)
        runner.compiled = compiled
        got = forward(meta, ids, pos, keep)
        if meta.decode_rows is not None and not meta.prefills:
            seen.append((len(ids), meta.decode_pages.shape[1], torch.equal(got, want)))
        return got
    runner.forward = both
    run_mixed_batches(k)
    assert seen and all(eq for _, _, eq in seen), [s for s in seen if not s[2]]
    assert {r for r, _, _ in seen} >= {1, 2, 3, 4}
    assert any(p == 1 for _, p, _ in seen) and any(p > 2 for _, p, _ in seen)
    assert compiled.steps >= len(seen) and (compiled.eager_steps == 0 or by_rows(k))


@pytest.mark.parametrize("quantize", ["int4", "int8", None])
def test_compiled_decoding_matches_generate_with_and_without_speculation(make_kernel, quantize):
    spec = SpecConfig(enabled=True, min_rate=0.0, row_cost=0.0, learn_cost=False)
    for speculate in (None, spec):
        k, ref = make_kernel(page_size=4, budget=32, quantize=quantize, compile=True, speculate=speculate)
        assert_repeats_match_generate(k, ref, label=f"speculate={speculate is not None}")
        compiled = k.driver.runners["tiny"].compiled
        assert compiled is not None or quantize is None  # fp32: only where every shape is packed
        assert compiled is None or (compiled.steps > 0 and (compiled.eager_steps == 0 or by_rows(k)))


def test_without_the_fused_ops_decode_steps_stay_eager_and_say_why(make_kernel, monkeypatch):
    monkeypatch.setattr(ext, "available", lambda: False)  # as where `make setup` could not build them
    k, ref = make_kernel(quantize="int8", compile=True)
    assert k.driver.runners["tiny"].compiled is None
    assert "decode steps eager: the fused ops are not built" in k.models["tiny"].info.kernels
    p = spawn_all(k, [[5, 6, 7]], 6)[0]
    k.run_until_idle()
    assert p.out_tokens == ref.greedy([5, 6, 7], 6)


def test_without_the_flag_nothing_compiles(make_kernel):
    k, _ = make_kernel(quantize="int4")
    assert k.driver.runners["tiny"].compiled is None
    assert "decode steps" not in k.models["tiny"].info.kernels
