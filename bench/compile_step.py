"""torch.compile (inductor, CPU) over a whole decode step of the lean forward, against eager.

An experiment for issue #14's "lean step" lever, kept so that it can be rerun on another
machine: the direct path of drivers/lean.py, for a batch of decode rows only, written as one
function (every layer, the KV writes and the paged attention; the LM head stays eager, as
inductor's oneDNN int8 lowering wants its packed weight to be a constant) and compiled with the
page count dynamic. The kernel steps N processes with the eager forward and with the compiled
one in alternating rounds, and the compiled logits are compared with eager's bit for bit.

    python bench/compile_step.py --modes int4,int8 --procs 1 [--rounds 8] [--json out.json]

This compiles everything, the norms and RoPE's cos/sin included, and its logits are not bit-equal
to eager's. What llmosd --compile serves is drivers/compiled.py: the same layers with those parts
left as eager computes them, bit-equal (tests/test_compiled.py), measured as the
llmos_int4_compiled rows of bench/throughput.py.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.common import MODEL, chat, default_store, end_all  # noqa: E402


def decode_fn(lean):
    """The lean direct forward of decode rows, without the LM head, as one traceable function."""
    from llmos.drivers import lean_ops
    d = lean.direct

    def decode(ids, pos, slots, pages, lens, kv):
        rows, size = ids.shape[0], kv[0][0].shape[1]
        h = lean.embed(ids[None])
        cos, sin = lean.rotary(h, pos[None])
        turn = d.turn(cos, sin)  # the default model's RoPE is the fused one (drivers/lean_ops.py)
        mask = (torch.arange(pages.shape[1] * size) < lens[:, None])[:, None, None, :]
        for (k_pool, v_pool), p in zip(kv, d.layers):
            qkv = p.qkv(p.norm1(h)).view(rows, -1, p.head_dim)
            qk = lean_ops.rope(qkv[:, :p.qk_heads], turn)
            q, k, v = qk[:, :p.q_heads], qk[:, p.q_heads:], qkv[:, p.qk_heads:]
            heads = k.shape[1]
            k_pool.view(-1, heads, p.head_dim).index_copy_(0, slots, k)
            v_pool.view(-1, heads, p.head_dim).index_copy_(0, slots, v)
            kd = k_pool.index_select(0, pages.flatten()).view(rows, -1, heads, p.head_dim).transpose(1, 2)
            vd = v_pool.index_select(0, pages.flatten()).view(rows, -1, heads, p.head_dim).transpose(1, 2)
            o = F.scaled_dot_product_attention(q[:, :, None, :], kd, vd, attn_mask=mask, scale=p.scaling,
                                               enable_gqa=True)
            h = h + p.o(o.reshape(1, rows, -1))
            h = h + p.down(p.act(p.gate_up(p.norm2(h))))
        return d.norm(h)
    return decode


def measure(k, mode: str, procs: int, rounds: int) -> dict:
    from llmos.kernel import ROOT, SpawnSpec, StopRules

    m = k.load_model(ROOT, MODEL, quantize=None if mode == "fp32" else mode)
    runner = k.driver.runners[m.name]
    eager_forward, head = runner.forward, runner.lean.direct.head
    eager = decode_fn(runner.lean)
    if mode == "int8":
        torch._inductor.config.freezing = True  # the oneDNN int8 lowering takes packed weights as constants
    compiled = torch.compile(eager, dynamic=False)
    use = {"fn": None}

    def forward(meta, ids, pos, keep):
        if use["fn"] is None or meta.prefills or meta.decode_rows is None:
            return eager_forward(meta, ids, pos, keep)
        pages = meta.decode_pages
        if use["fn"] is compiled:
            torch._dynamo.mark_dynamic(pages, 1)
        with torch.inference_mode():
            return head(use["fn"](torch.tensor(ids), torch.tensor(pos), meta.slot_mapping, pages,
                                  meta.decode_lens, meta.kv))[0]
    runner.forward = forward
    ps = [k.spawn(ROOT, SpawnSpec(m.name, messages=chat("What is the capital of France?"),
                                  stop=StopRules(max_tokens=100_000, ignore_eos=True))) for _ in range(procs)]
    out = {"mode": mode, "procs": procs}
    try:
        for _ in range(4):
            k.step()
        use["fn"] = compiled
        t = time.perf_counter()
        k.step()
        out["compile_s"] = round(time.perf_counter() - t, 1)
        if ps[0].state.done:
            return out | {"error": ps[0].reason}
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(rounds):  # alternating, so a slow spell of the shared machine hits both
            for name, fn in (("eager", None), ("compiled", compiled)):
                use["fn"] = fn
                for _ in range(10):
                    t = time.perf_counter()
                    k.step()
                    times[name].append(time.perf_counter() - t)
        with torch.inference_mode():
            meta_pages = torch.arange(8)[None]
            torch._dynamo.mark_dynamic(meta_pages, 1)
            args = (torch.tensor([42]), torch.tensor([100]), torch.tensor([100]), meta_pages, torch.tensor([101]),
                    runner.kv)
            a, b = eager(*args), compiled(*args)
        for name, xs in times.items():
            out[f"{name}_median_ms"] = round(statistics.median(xs) * 1e3, 2)
            out[f"{name}_min_ms"] = round(min(xs) * 1e3, 2)
        out["speedup_median"] = round(out["eager_median_ms"] / out["compiled_median_ms"], 3)
        out["speedup_min"] = round(out["eager_min_ms"] / out["compiled_min_ms"], 3)
        out["bit_equal"] = bool(torch.equal(a, b))
        out["max_abs_diff"] = float((a - b).abs().max())
        return out
    finally:
        runner.forward = eager_forward
        end_all(k, ps)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="int4,int8", help="weight modes: int4, int8 (fp32 does not lower)")
    ap.add_argument("--procs", default="1")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--store", type=Path, default=default_store())
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from bench import machine
    from llmos.drivers import open_driver
    from llmos.kernel import Kernel, KernelConfig
    from llmos.kernel.models import ModelStore

    mach = machine.probe(args.threads)
    print(f"machine: {mach.line()}", flush=True)
    rows = []
    for mode in [m for m in args.modes.split(",") if m]:
        for procs in [int(n) for n in args.procs.split(",") if n]:
            k = Kernel(open_driver("cpu", threads=args.threads), KernelConfig(), ModelStore(args.store))
            r = measure(k, mode, procs, args.rounds)
            rows.append(r)
            print(json.dumps(r), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine.as_json(mach), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
