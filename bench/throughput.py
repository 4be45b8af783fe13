"""Throughput benchmark: llmos in-process against transformers on the default model.

For each concurrency N, N distinct chat requests arrive together and each generates exactly
--new-tokens tokens (greedy, EOS ignored). Every system gets one untimed warm-up. A memory
check runs first (bench/memory.py): 16 processes sharing one long system prompt against one.

    python bench/throughput.py                       # 1,4,16,32 × 128 tokens, all systems
    python bench/throughput.py --quick               # smoke run: 1,4 × 16 tokens
    python bench/throughput.py --systems llmos,hf_static_batch --json bench/results/tp.json
    python bench/throughput.py --profile --plot tp.png --results   # + a per-op step profile, a plot, a dated JSON

Every run names its machine and measures two of its limits (bench/machine.py), and every row
says what fraction of the roofline they give for its model it reached.

More llmos front ends (a `llmos_daemon` row going through gRPC, say) are added as one more
entry in SYSTEMS: a function (bench, n, new_tokens, tick) -> RunResult.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore", category=FutureWarning)

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402

from bench import machine, report, step_profile  # noqa: E402
from bench.common import (MODEL, QUESTIONS, FirstTokenStreamer, RunResult, Tick, chat, default_store,  # noqa: E402
                          drive, encode_chat, result)
from bench.daemon import run_daemon  # noqa: E402
from bench.gateway import run_http  # noqa: E402
from bench.memory import run_memory  # noqa: E402


class Bench:
    """What every system shares: the store, the prompts, and lazily loaded engines."""

    def __init__(self, args: argparse.Namespace) -> None:
        from transformers import AutoTokenizer
        from llmos.kernel.models import ModelStore

        self.args = args
        self.store = ModelStore(args.store)
        self.path = self.store.resolve(MODEL)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        self.requests = [chat(q) for q in QUESTIONS]
        self.prompt_ids = [encode_chat(self.tokenizer, r) for r in self.requests]
        self.notes: list[str] = []
        self.machine = None  # bench/machine.py's probe, taken before any model loads
        self._kernel = None
        self._compiled = None
        self._hf: dict[str, torch.nn.Module] = {}

    def batch(self, n: int) -> list[int]:
        """Indices of the n requests of a run (the question list is cycled past its end)."""
        return [i % len(self.requests) for i in range(n)]

    def kernel(self):
        if self._kernel is None:
            from llmos.drivers import open_driver
            from llmos.kernel import ROOT, Kernel, KernelConfig

            k = Kernel(open_driver("cpu", threads=self.args.threads), KernelConfig(), self.store)
            m = k.load_model(ROOT, MODEL)
            if m.codec.encode_chat(self.requests[0]) != self.prompt_ids[0]:
                self.notes.append("the kernel tokenizes the chat prompts differently from the HF baselines")
            self._kernel = k
        return self._kernel

    def compiled_kernel(self, quantize: str):
        """A second kernel whose driver compiles decode steps (llmosd --compile), and the name of
        the model's `quantize` copy on it."""
        from llmos.kernel import ROOT
        if self._compiled is None:
            from llmos.drivers import open_driver
            from llmos.kernel import Kernel, KernelConfig

            self._compiled = Kernel(open_driver("cpu", threads=self.args.threads, compile=True), KernelConfig(),
                                    self.store)
        return self._compiled, self._compiled.load_model(ROOT, MODEL, quantize=quantize).name

    def hf(self, system: str) -> torch.nn.Module:
        """A private transformers model per HF system (generate_batch reconfigures its model)."""
        if system not in self._hf:
            from transformers import AutoModelForCausalLM

            self._hf[system] = AutoModelForCausalLM.from_pretrained(
                str(self.path), dtype=torch.float32, attn_implementation="sdpa").eval()
        return self._hf[system]


# --- llmos ------------------------------------------------------------------------------------
def served_bytes(bench: Bench, systems: set[str], params: int) -> dict[str, float]:
    """Bytes a Linear weight of each llmos system's model takes as the in-process kernel serves it."""
    if bench._kernel is None:
        return {}
    from llmos.drivers.fuse import FusedGroup
    out = {}
    for system in systems:
        if not system.startswith("llmos"):
            continue
        name = MODEL + next((f":{q}" for q in ("int8", "int4") if q in system), "")
        runner = bench._kernel.driver.runners.get(name)
        if runner is not None:
            groups = {id(g): g for g in runner.model.modules() if isinstance(g, FusedGroup) and
                      not any(isinstance(c, FusedGroup) for c in g.children())}
            out[system] = sum(g.nbytes() for g in groups.values()) / params or None
    return {s: b for s, b in out.items() if b}


def run_kernel(k, bench: Bench, idx: list[int], new_tokens: int, tick: Tick, system: str = "llmos",
               model: str = MODEL) -> RunResult:
    """Spawn every request at once on kernel k, step it until idle, reap the processes."""
    from llmos.kernel import ROOT, SpawnSpec, StopRules

    t0 = time.perf_counter()
    procs = [k.spawn(ROOT, SpawnSpec(model, messages=bench.requests[i], stop=StopRules(max_tokens=new_tokens, ignore_eos=True)))
             for i in idx]
    done = drive(k, procs, tick)
    wall = time.perf_counter() - t0
    for p in procs:
        k.reap(ROOT, p.pid)
    return result(system, len(idx), new_tokens, wall, done, [p.usage.ttft_s for p in procs])


def run_llmos(bench: Bench, n: int, new_tokens: int, tick: Tick) -> RunResult:
    return run_kernel(bench.kernel(), bench, bench.batch(n), new_tokens, tick)


def run_llmos_int8(bench: Bench, n: int, new_tokens: int, tick: Tick) -> RunResult:
    """The same kernel serving the model's int8 copy (loaded beside the fp32 one)."""
    from llmos.kernel import ROOT

    k = bench.kernel()
    m = k.load_model(ROOT, MODEL, quantize="int8")
    return run_kernel(k, bench, bench.batch(n), new_tokens, tick, "llmos_int8", m.name)


def run_llmos_int4(bench: Bench, n: int, new_tokens: int, tick: Tick) -> RunResult:
    """The same kernel serving the model's 4-bit copy (--quantize int4, drivers/int4.py)."""
    from llmos.kernel import ROOT

    k = bench.kernel()
    m = k.load_model(ROOT, MODEL, quantize="int4")
    return run_kernel(k, bench, bench.batch(n), new_tokens, tick, "llmos_int4", m.name)


COMPILED = {"llmos_compiled": "none", "llmos_int8_compiled": "int8", "llmos_int4_compiled": "int4"}  # -> --quantize


def run_llmos_compiled(system: str) -> Callable[[Bench, int, int, Tick], RunResult]:
    """The system running the model's COMPILED[system] copy with its decode steps through
    torch.compile (drivers/compiled.py: the same bits)."""
    def run(bench: Bench, n: int, new_tokens: int, tick: Tick) -> RunResult:
        k, name = bench.compiled_kernel(COMPILED[system])
        return run_kernel(k, bench, bench.batch(n), new_tokens, tick, system, name)
    return run


# --- transformers -------------------------------------------------------------------------------
def _gen_config(bench: Bench, new_tokens: int, **over):
    from transformers import GenerationConfig

    tok = bench.tokenizer
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    kw.update(over)
    return GenerationConfig(**kw)


@torch.inference_mode()
def run_hf_generate(bench: Bench, n: int, new_tokens: int, tick: Tick) -> RunResult:
    """generate() one request at a time; all arrive at t0, so request i waits for those before it."""
    model, cfg = bench.hf("hf_generate"), _gen_config(bench, new_tokens)
    ttfts, generated = [], 0
    t0 = time.perf_counter()
    for i in bench.batch(n):
        ids = torch.tensor([bench.prompt_ids[i]])
        streamer = FirstTokenStreamer(tick)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=cfg, streamer=streamer)
        generated += out.shape[1] - ids.shape[1]
        ttfts.append(streamer.first - t0 if streamer.first else None)
    wall = time.perf_counter() - t0
    return result("hf_generate", n, new_tokens, wall, generated, ttfts)


@torch.inference_mode()
def run_hf_static_batch(bench: Bench, n: int, new_tokens: int, tick: Tick) -> RunResult:
    """One generate() over all n requests, left-padded to the longest prompt."""
    model, cfg = bench.hf("hf_static_batch"), _gen_config(bench, new_tokens)
    prompts = [bench.prompt_ids[i] for i in bench.batch(n)]
    t0 = time.perf_counter()
    width, pad = max(len(p) for p in prompts), bench.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    streamer = FirstTokenStreamer(tick)
    out = model.generate(ids, attention_mask=mask, generation_config=cfg, streamer=streamer)
    wall = time.perf_counter() - t0
    ttft = streamer.first - t0 if streamer.first else None
    return result("hf_static_batch", n, new_tokens, wall, n * (out.shape[1] - width), [ttft] * n)


def run_hf_generate_batch(bench: Bench, n: int, new_tokens: int, tick: Tick) -> RunResult:
    """transformers' continuous batching. Timed from the first request's arrival to the last
    request's end (the manager's own start-up is left out); TTFT from per-token timestamps.
    No inference_mode here: the manager's worker thread writes to tensors made on this thread."""
    model = bench.hf("hf_generate_batch")
    cfg = _gen_config(bench, new_tokens, min_new_tokens=None, eos_token_id=-1)  # -1: no EOS, exactly n tokens
    prompts = [bench.prompt_ids[i] for i in bench.batch(n)]
    outs = list(model.generate_batch(inputs=prompts, generation_config=copy.deepcopy(cfg),
                                     continuous_batching_config=_cb_config(prompts, new_tokens),
                                     record_timestamps=True, progress_bar=False).values())
    notes = [f"{o.request_id}: {o.error}" for o in outs if o.error]
    if len(outs) != n:
        notes.append(f"{len(outs)} of {n} requests came back")
    start = min((o.created_time for o in outs), default=0.0)
    end = max((o.lifespan[1] for o in outs), default=0.0)
    generated = sum(len(o.generated_tokens) for o in outs)
    tick(generated)
    ttfts = [o.timestamps[0] - start if o.timestamps else None for o in outs]
    return result("hf_generate_batch", n, new_tokens, end - start, generated, ttfts, notes)


def _cb_config(prompts: list[list[int]], new_tokens: int):
    """A KV cache sized for the workload with room to spare. Left to itself on a CPU, the manager
    sizes it from free host memory: gigabytes, and ~12 s of start-up per call, for the same speed."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    block = ContinuousBatchingConfig().page_size
    blocks = sum(-(-(len(p) + new_tokens) // block) for p in prompts)
    return ContinuousBatchingConfig(num_blocks=2 * blocks + 16)


@dataclass(frozen=True)
class System:
    run: Callable[[Bench, int, int, Tick], RunResult]
    about: str


SYSTEMS: dict[str, System] = {
    "llmos": System(run_llmos, "the llmos kernel in-process: all N spawned at once, stepped until idle"),
    "llmos_int8": System(run_llmos_int8, "the llmos kernel in-process on the model's int8 copy (--quantize int8)"),
    "llmos_int4": System(run_llmos_int4, "the llmos kernel in-process on the model's 4-bit copy (--quantize int4)"),
    "llmos_compiled": System(run_llmos_compiled("llmos_compiled"), "the fp32 model with decode steps through "
                                                                   "torch.compile, bit-exact (llmosd --compile)"),
    "llmos_int8_compiled": System(run_llmos_compiled("llmos_int8_compiled"), "the int8 copy with decode steps "
                                  "through torch.compile, bit-exact (llmosd --compile)"),
    "llmos_int4_compiled": System(run_llmos_compiled("llmos_int4_compiled"), "the 4-bit copy with decode steps "
                                  "through torch.compile, bit-exact (llmosd --compile)"),
    "llmos_daemon": System(run_daemon, "llmosd through gRPC and the asyncio SDK (with --via-daemon)"),
    "llmos_http": System(run_http, "llmosd through its OpenAI-compatible HTTP API, streaming (with --via-http)"),
    "hf_generate": System(run_hf_generate, "transformers generate(), one request at a time"),
    "hf_static_batch": System(run_hf_static_batch, "transformers generate() on a left-padded batch of N"),
    "hf_generate_batch": System(run_hf_generate_batch, "transformers generate_batch() (continuous batching)"),
}


VIA = {"via_daemon": "llmos_daemon", "via_http": "llmos_http"}  # flag -> the system it adds


def median_run(name: str, bench: Bench, n: int, new_tokens: int, tick: Tick, repeat: int) -> RunResult:
    """Run one cell `repeat` times and keep the median by tok/s (a noisy machine's runs vary)."""
    runs = sorted((SYSTEMS[name].run(bench, n, new_tokens, tick) for _ in range(max(1, repeat))),
                  key=lambda r: r.tok_s)
    pick = runs[len(runs) // 2]
    if len(runs) > 1:
        pick.notes.append(f"median of {len(runs)} runs; tok/s {', '.join(f'{r.tok_s:.1f}' for r in runs)}")
    return pick


# --- driver -------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", default="1,4,16,32", help="comma-separated process counts")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--systems", default=",".join(s for s in SYSTEMS if s not in VIA.values()),
                    help=f"subset of {','.join(SYSTEMS)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--store", type=Path, default=default_store(), help="model store dir (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="smoke run: concurrency 1,4 × 16 tokens, short memory check")
    ap.add_argument("--memory-procs", type=int, default=16)
    ap.add_argument("--memory-new-tokens", type=int, default=16, help="tokens each process generates in the memory check")
    ap.add_argument("--system-tokens", type=int, default=512, help="minimum length of the shared system prompt")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory check")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per cell; the median by tok/s is reported")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--results", action="store_true", help="write the results to bench/results/<date>-<cpu>.json")
    ap.add_argument("--plot", type=Path, help="draw tok/s against concurrency for every system here (matplotlib)")
    ap.add_argument("--profile", action="store_true", help="profile one steady decode step at 1 and 16 processes "
                                                           "(each llmos mode run) through the kernel (bench/step_profile.py)")
    ap.add_argument("--via-daemon", action="store_true", help="add llmos_daemon rows: the same work through llmosd")
    ap.add_argument("--via-http", action="store_true", help="add llmos_http rows: the same work through llmosd's HTTP API")
    args = ap.parse_args(argv)
    report.check_plot(ap, args.plot)
    if args.quick:
        args.concurrency, args.new_tokens, args.memory_new_tokens = "1,4", 16, 4
    args.concurrency = [int(c) for c in str(args.concurrency).split(",") if c]
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    for flag, system in VIA.items():
        if getattr(args, flag) and system not in args.systems:
            args.systems.insert(1 if "llmos" in args.systems else 0, system)
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown:
        ap.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    console = Console(width=None if sys.stdout.isatty() else 150)  # a log file keeps whole columns
    bench = Bench(args)
    bench.machine = machine.probe(args.threads)
    report.print_setup(console, args, bench)
    results: list[RunResult] = []
    memory: dict = {}
    do_memory = "llmos" in args.systems and not args.no_memory
    total = sum(args.concurrency) * args.new_tokens * len(args.systems) * args.repeat
    total += (1 + 2 * args.memory_procs) * args.memory_new_tokens if do_memory else 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, refresh_per_second=2) as bar:
        task = bar.add_task("starting", total=total)
        tick: Tick = lambda n: bar.advance(task, n)  # noqa: E731
        if do_memory:  # first, while only the kernel is loaded, so that its RSS is the kernel's own
            bar.update(task, description=f"memory: 1 vs {args.memory_procs} processes")
            memory = run_memory(bench.kernel(), MODEL, bench.tokenizer, args.memory_procs, args.memory_new_tokens,
                                args.system_tokens, tick)
        for name in args.systems:  # one untimed warm-up per system
            bar.update(task, description=f"warm-up {name}")
            SYSTEMS[name].run(bench, 2, 4, lambda _: None)
        for n in args.concurrency:  # interleaved, so that ratios compare runs taken close in time
            for name in args.systems:
                bar.update(task, description=f"{name} × {n}")
                results.append(median_run(name, bench, n, args.new_tokens, tick, args.repeat))
    from transformers import AutoConfig

    params = machine.linear_params(AutoConfig.from_pretrained(str(bench.path)))
    roofs = report.rooflines(results, bench.machine, params, served_bytes(bench, {r.system for r in results}, params))
    report.print_results(console, results, roofs)
    kernels = {name: m.info.kernels for name, m in bench._kernel.models.items()} if bench._kernel else {}
    if bench._compiled:
        kernels |= {f"{name} (compiled)": m.info.kernels for name, m in bench._compiled.models.items()}
    for name, line in kernels.items():
        console.print(f"kernels of {name}: {line}")
    profiles: list[dict] = []
    if args.profile:
        modes = [m for s, m in (("llmos", "none"), ("llmos_int8", "int8"), ("llmos_int4", "int4"))
                 if s in args.systems] or ["none"]
        profiles = step_profile.run(bench.kernel(), [1, 16], modes)
        for system in [s for s in COMPILED if s in args.systems]:
            k, name = bench.compiled_kernel(COMPILED[system])
            profiles += [step_profile.profile_step(k, name, n) | {"model": f"{name} compiled"} for n in (1, 16)]
        step_profile.print_profiles(console, profiles)
    if memory:
        report.print_memory(console, memory)
    targets = report.check_targets(results, memory)
    report.print_targets(console, targets)
    for note in bench.notes:
        console.print(f"[yellow]note:[/] {note}")
    paths = [args.json] if args.json else []
    if args.results:
        paths.append(report.results_path(Path(__file__).resolve().parent / "results", bench.machine.cpu))
    for path in paths:
        report.write_json(path, args, results, memory, targets, machine.as_json(bench.machine), roofs, profiles,
                          kernels)
        console.print(f"wrote {path}")
    if args.plot:
        report.plot(args.plot, results, roofs, f"{MODEL} on {bench.machine.cpu}, {args.threads} threads")
        console.print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
