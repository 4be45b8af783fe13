"""A model's decode steps through torch.compile (inductor, CPU), with eager's bits.

At one row, a step of a small model is mostly the cost of its ops, not their arithmetic
(bench/step_profile.py). Inductor fuses the pointwise work between the products (RoPE, SiLU·mul,
the residual adds) and runs the layers from generated code. What it would compute another way
stays as eager computes it:
- RMSNorm runs as llmos::rms_norm (drivers/csrc/opaque.cpp), an op inductor leaves whole:
  inductor's own norm sums in another order, an ulp away.
- RoPE's cos and sin come from the rotary module, outside the compiled code: inductor's cos is
  not ATen's to the last bit.
- Only products inductor calls as they are, or whose float work is elementwise: the int8 ones,
  on oneDNN's packed weights one llmos op (llmos::int8_linear), on `_int_mm`'s a row maximum,
  divisions, rounding and scaling around the integer product; oneDNN's packed fp32 ones
  (llmos::linear_packed); and llmos's own fp32 ones (llmos::linear_dot, and llmos::block_dot on
  blocks: drivers/blocks.py, drivers/int4.py). Decode attention is llmos::paged_decode, also
  whole. Inductor would lower oneDNN's products itself only with the weights frozen into the
  graph, a minute of compiling per load.

So a compiled step gives eager's logits bit for bit (tests/test_compiled.py) and tokens do not
change. Steps of decode rows only (verify rows included) run compiled: one graph for one row and
one for any larger number of rows, each over any number of pages. Both are compiled when the
model's KV pool is made, from inductor's cache in the model store after the first time. A step
that would need another graph runs eagerly rather than stall on a compile.

Where DecodeStack (drivers/stack.py) serves a step's row count, it runs the step instead: the
same bits, without the graphs' calls (drivers/runner.py).
"""
from __future__ import annotations

import dataclasses
import os
import time
import types
from pathlib import Path

import torch

from llmos.drivers import lean_ops
from llmos.drivers.attention import PagedBatch
from llmos.drivers.choice import RowsGroup
from llmos.drivers.blocks import BlockGroup
from llmos.drivers.lean import LeanDecoder, fused_problem
from llmos.drivers.packed import DotGroup, PackedGroup
from llmos.drivers.quant import Int8Group

MIN_PAGES = 2  # page tables are padded to this width, so that one graph serves every width


def problem(lean: LeanDecoder | None) -> str | None:
    """Why the decode steps of the model behind `lean` cannot be compiled exactly; None if they can."""
    why = fused_problem(lean)
    if why is not None:
        return why
    for p in lean.direct.layers:
        for fn in (p.qkv, p.o, p.gate_up, p.down):
            group = getattr(fn, "__self__", None)
            if not _exact(group):
                return f"its {type(group).__name__} products do not compile exactly"
    return None


def _exact(group: object) -> bool:
    """Whether a product group compiles to eager's bits (a RowsGroup: each of its forms does; a
    step past the row counts its graph was traced for runs eagerly)."""
    if isinstance(group, RowsGroup):
        return all(_exact(form) for form in group.forms)
    return type(group) in (Int8Group, PackedGroup, DotGroup) or isinstance(group, BlockGroup)


class CompiledDecode:
    """The direct path's layers of one model, compiled for steps of decode rows."""

    def __init__(self, lean: LeanDecoder, cache_dir: str | None = None) -> None:
        if cache_dir and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:  # inductor's cache is per process
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(cache_dir).parent / "inductor")
        self.lean = lean
        self.plans = lean.direct.layers
        # A code object of its own: dynamo keeps compiled graphs per code object, so no other
        # model's graphs are tried on this one's inputs. Their guards can then be the grad mode
        # and the shapes and dtypes of the step's own tensors alone (the layers, their plans and
        # weights never change), checked in a fraction of the time that every module attribute
        # and weight would take.
        code = _layers.__code__.replace()
        fn = types.FunctionType(code, _layers.__globals__, _layers.__name__)
        self.fn = torch.compile(fn, dynamic=False, options={"guard_filter_fn": _step_guards})
        self.compile_s: float | None = None
        self.steps = 0  # steps the compiled graphs ran
        self.eager_steps = 0  # steps that would have needed a graph not compiled at warm-up

    def warm(self, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """Compile both graphs on a fresh pool (its page 0 is written: no process holds it yet);
        returns the seconds it took."""
        t0 = time.perf_counter()
        hidden = self.lean.embed.weight.shape[1]
        with torch.inference_mode():
            for rows in (1, 2):
                batch = PagedBatch(kv=kv, slot_mapping=torch.arange(rows), decode_rows=torch.arange(rows),
                                   decode_pages=torch.zeros(rows, MIN_PAGES, dtype=torch.long),
                                   decode_lens=torch.ones(rows, dtype=torch.long), prefills=[])
                h = torch.zeros(1, rows, hidden, dtype=self.lean.embed.weight.dtype)
                cos, sin = self.lean.rotary(h, torch.zeros(1, rows, dtype=torch.long))
                self._run(h, cos, sin, self.lean.direct.turn(cos, sin), batch, compile_ok=True)
        self.compile_s = time.perf_counter() - t0
        return self.compile_s

    def __call__(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: PagedBatch) -> torch.Tensor:
        """The layers over a batch of decode rows, compiled; eager where no graph fits."""
        pages = batch.decode_pages
        if pages.shape[1] < MIN_PAGES:  # masked columns past a row's length change no bit
            pages = torch.cat((pages, pages.new_zeros(pages.shape[0], MIN_PAGES - pages.shape[1])), 1)
        batch = dataclasses.replace(batch, decode_pages=pages, _masks={})  # the graphs build their own masks
        turn = self.lean.direct.turn(cos, sin)
        out = self._run(h, cos, sin, turn, batch, compile_ok=False)
        if out is None:
            self.eager_steps += 1
            return self.lean.run_layers(self.plans, h, cos, sin, turn, batch)
        self.steps += 1
        return out

    def _run(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, turn: lean_ops.Turn, batch: PagedBatch,
             compile_ok: bool) -> torch.Tensor | None:
        rows = h.shape[1]
        if rows > 1:
            for t, dims in ((h, (1,)), (cos, (1,)), (sin, (1,)), (turn[0], (0,)), (turn[1], (0,)),
                            (batch.slot_mapping, (0,)), (batch.decode_rows, (0,)), (batch.decode_pages, (0, 1)),
                            (batch.decode_lens, (0,))):
                torch._dynamo.mark_dynamic(t, dims)
        else:
            torch._dynamo.mark_dynamic(batch.decode_pages, 1)
        if compile_ok:
            return self.fn(self.lean, self.plans, h, cos, sin, turn, batch)
        try:
            with torch.compiler.set_stance("fail_on_recompile"):
                return self.fn(self.lean, self.plans, h, cos, sin, turn, batch)
        except RuntimeError as e:
            if "recompil" not in str(e).lower():
                raise
            return None


def _step_guards(entries: list) -> list[bool]:
    """Which of dynamo's guards to keep: the grad mode, dynamic shapes' relations, and the
    shapes and dtypes of tensors the step passes (not those of the model's weights)."""
    return [e.guard_type in ("GLOBAL_STATE", "SHAPE_ENV")
            or (e.guard_type == "TENSOR_MATCH" and not e.name.startswith(("lean", "plans")))
            for e in entries]


def _layers(lean: LeanDecoder, plans: list[lean_ops.LayerPlan], h: torch.Tensor, cos: torch.Tensor,
            sin: torch.Tensor, turn: lean_ops.Turn, batch: PagedBatch) -> torch.Tensor:
    return lean.run_layers(plans, h, cos, sin, turn, batch)
