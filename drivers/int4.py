"""4-bit weights: every Linear weight rounded to a GGUF Q4_1 value and kept as those blocks.

A decode step at one stream reads every weight once, so its time is the weights' bytes over
memory bandwidth. `--quantize int4` rounds each weight as ggml's Q4_1 quantizer does: per 32
inputs of an output, the minimum m and the step d = (max - m) / 15, both stored in fp16, and
q = round((w - m) / d) in 0..15, so that w becomes q·d + m. The LM head is rounded to Q8_0 (q·d,
q in -128..127: in 4 bits, a second rounding of the default model's head cost 6% perplexity).

The rounded model is an fp32 model like any other: its layers are BlockGroups
(drivers/blocks.py; Int4Group, which the measured choice leaves as it is), which keep the blocks (~5 bits a weight with their scales) and multiply
them in fp32 by llmos::block_dot, so the int4 model's tokens are those of generate() on the
rounded fp32 weights, a row's result never depends on its batch, and DecodeStack runs it. The
default model's weights are Q4_1 values already (and its head Q8_0): rounding gives them back
bit for bit, and its fp32 model is served from the same blocks without asking (drivers/choice.py).

This replaced torch's 4-bit kernel (`_weight_int4pack_mm_for_cpu`), which took bf16 activations
and whose time grew with the rows: on the 2-core AMD EPYC (family 26 model 2, Zen 5), fp32 on
the same Q4_1 blocks ran the default model at 208.6 tok/s at one process and 737.7 at 16,
torch's kernel at 169.3 and 573.0 (bench/results/, run 8 of 2026-12-02).
"""
from __future__ import annotations

from torch import nn

from llmos.drivers import ext
from llmos.drivers.blocks import GROUP, BlockGroup, q4_blocks, q8_blocks
from llmos.drivers.driver import QuantizeError
from llmos.drivers.fuse import FusedGroup, replace_linears
from llmos.drivers.packed import MklGroup, PackedLinear

HEADS = ("q8", "int4", "fp32")  # what the LM head can be: Q8_0 blocks (the served mode's), Q4_1, or as it is


class Int4Group(BlockGroup):
    """int4's layers: the weights rounded to Q4_1 (the head to Q8_0) values, served as those
    blocks whichever form the measured choice would pick for fp32 weights (the mode asks for
    their bytes)."""

    form = "int4"


def shape_problem(name: str, lin: nn.Linear) -> str | None:
    """Why this Linear layer cannot be held as blocks, or None."""
    if lin.in_features % GROUP:
        return f"{name} has in_features {lin.in_features}, not a multiple of {GROUP} (the block size)"
    return None


def check_model(model: nn.Module, head: str = HEADS[0]) -> None:
    """Refuse, by name, a model whose 4-bit layers (every Linear but an LM head kept as it is)
    cannot be blocks, or an install without llmos's fused ops."""
    if not ext.available():
        raise QuantizeError("int4 needs llmos's fused ops (llmos::block_dot), which are not built here: "
                            "run make setup (python -m llmos.drivers.ext)")
    skip = _head(model) if head == "fp32" else None
    for name, mod in model.named_modules():
        if type(mod) is nn.Linear and mod is not skip:
            problem = shape_problem(name, mod)
            if problem:
                raise QuantizeError(f"{type(model).__name__} cannot be quantized to int4: {problem}")


def quantize(model: nn.Module, parents: list[nn.Module], head: str = HEADS[0]) -> tuple[int, int]:
    """Replace the model's Linear layers in place by BlockGroups of their rounded weights: Q4_1,
    and the LM head as `head` says (fp32 leaves it a Linear). Returns (layers, groups) replaced."""
    if head not in HEADS:
        raise QuantizeError(f"unknown int4 LM head {head!r}; supported: {', '.join(HEADS)}")
    lm_head = _head(model)
    check_model(model, head)
    if head == "fp32" and lm_head is not None:
        parents = [p for p in parents if lm_head not in p.children()]

    def make(linears: list[nn.Linear]) -> FusedGroup:
        src = MklGroup(linears, set())
        if linears[0] is lm_head and head == "q8":
            return Int4Group(src, q8_blocks(src.weight))
        return Int4Group(src, q4_blocks(src.weight))

    return replace_linears(parents, make, member=PackedLinear)


def _head(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if type(head) is nn.Linear else None
