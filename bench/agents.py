"""Agents: concurrent tool-calling agents through llmosd's OpenAI gateway, with the official `openai` package.

    python bench/agents.py                      # 16 agents, 3 tool steps each, on the default model
    python bench/agents.py --agents 4 --json agents.json

Four parts, one daemon:
  agents      N agents, each a loop of `--steps` tool calls (JSON-schema arguments, tools that
              really run) and a final answer, streamed. Every `arguments` string must parse and
              validate with jsonschema: anything under 100% fails the benchmark (exit 1).
  throughput  N processes constrained by a JSON schema against N unconstrained ones, the same
              number of tokens each, in the same run: the ratio must be >= 0.9 (else exit 1).
  mask        the grammar's cost per token in this process: llguidance filling the bitmask of
              N rows and applying it to [N, vocab] logits, per decode step.
  held        a ~1,000-token conversation whose turn ends in a tool call: time to first token
              of the tool-result turn hot (the interactive process's held pages through gRPC;
              the prefix cache through HTTP) against the same turn cold (a conversation that
              shares nothing cached). The ratio must be >= 5x (else exit 1).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore", category=FutureWarning)

import jsonschema  # noqa: E402
import openai  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.agent_tools import CITIES, TOOLS, SCHEMAS, run_tool  # noqa: E402
from bench.common import MODEL, default_store, encode_chat, long_system_prompt  # noqa: E402
from bench.daemon import DaemonUnderTest  # noqa: E402

MIN_CONSTRAINED_RATIO = 0.9
MIN_HELD_SPEEDUP = 5.0
NUMBERS = {"type": "array", "items": {"type": "integer"}, "minItems": 1000}  # never complete within the budget


class Agents:
    """What the parts share: the daemon, an AsyncOpenAI client of its gateway, the counters."""

    def __init__(self, args: argparse.Namespace, console: Console) -> None:
        self.args, self.console = args, console
        with console.status("starting llmosd on the default model"):
            self.daemon = DaemonUnderTest(args.store, args.threads)
        self.calls: list[tuple[str, str]] = []  # (tool, arguments) of every call made
        self.invalid: list[str] = []
        self.tool_ttft: list[float] = []

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.daemon.http_url}/v1", api_key=self.daemon.http_token,
                                  max_retries=0, timeout=600)

    async def turn(self, c: openai.AsyncOpenAI, messages: list[dict], **kw) -> tuple[str, list[dict], float, int]:
        """One streamed chat completion: its text, its tool calls (OpenAI's message shape), its
        time to first token, and its completion tokens."""
        t0 = time.perf_counter()
        first, text, calls, used = None, "", {}, 0
        stream = await c.chat.completions.create(model=MODEL, messages=messages, stream=True, temperature=0,
                                                 stream_options={"include_usage": True}, **kw)
        async for chunk in stream:
            if chunk.usage:
                used = chunk.usage.completion_tokens
            for choice in chunk.choices:
                d = choice.delta
                if first is None and (d.content or d.tool_calls):
                    first = time.perf_counter() - t0
                text += d.content or ""
                for tc in d.tool_calls or ():
                    call = calls.setdefault(tc.index, {"id": "", "type": "function",
                                                       "function": {"name": "", "arguments": ""}})
                    call["id"] = tc.id or call["id"]
                    call["function"]["name"] += (tc.function.name or "") if tc.function else ""
                    call["function"]["arguments"] += (tc.function.arguments or "") if tc.function else ""
        return text, [calls[i] for i in sorted(calls)], first if first is not None else time.perf_counter() - t0, used

    def check(self, call: dict) -> dict | None:
        name, args = call["function"]["name"], call["function"]["arguments"]
        self.calls.append((name, args))
        try:
            parsed = json.loads(args)
            jsonschema.validate(parsed, SCHEMAS[name])
            return parsed
        except (KeyError, ValueError, jsonschema.ValidationError) as e:
            self.invalid.append(f"{name}({args}): {str(e).splitlines()[0]}")
            return None

    async def agent(self, c: openai.AsyncOpenAI, i: int, tick) -> int:
        """One agent: `steps` forced tool calls, each result fed back, then an answer in text."""
        city = CITIES[i % len(CITIES)]
        messages = [{"role": "system", "content": "You are a travel assistant. Use the tools."},
                    {"role": "user", "content": f"I fly to {city} tomorrow. What is the weather, the local time, "
                                                f"and how much is 100 EUR there?"}]
        tokens = 0
        for step in range(self.args.steps):
            _, calls, ttft, used = await self.turn(c, messages, tools=TOOLS, tool_choice="required",
                                                   parallel_tool_calls=False, max_tokens=self.args.max_tokens)
            tokens += used
            if step:
                self.tool_ttft.append(ttft)
            if not calls:
                self.invalid.append(f"agent {i} step {step}: no tool call")
                break
            messages.append({"role": "assistant", "content": None, "tool_calls": calls})
            for call in calls:
                parsed = self.check(call)
                result = run_tool(call["function"]["name"], parsed) if parsed is not None else {"error": "bad call"}
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result)})
            tick()
        _, _, ttft, used = await self.turn(c, messages, tools=TOOLS, tool_choice="none", max_tokens=32)
        self.tool_ttft.append(ttft)
        tick()
        return tokens + used

    async def run_agents(self) -> dict:
        n = self.args.agents
        with self.progress() as p:
            bar = p.add_task(f"{n} agents", total=n * (self.args.steps + 1))
            async with self.client() as c:
                t0 = time.perf_counter()
                tokens = await asyncio.gather(*(self.agent(c, i, lambda: p.advance(bar)) for i in range(n)))
                wall = time.perf_counter() - t0
        valid = len(self.calls) - len(self.invalid)
        return {"agents": n, "steps": self.args.steps, "wall_s": wall, "completion_tokens": sum(tokens),
                "tok_s": sum(tokens) / wall, "tool_calls": len(self.calls), "tool_calls_s": len(self.calls) / wall,
                "valid": valid, "validity": valid / len(self.calls) if self.calls else 0.0,
                "invalid": self.invalid[:10], "tool_result_ttft_p50_ms": 1000 * statistics.median(self.tool_ttft),
                "tool_result_ttft_p99_ms": 1000 * quantile(self.tool_ttft, 0.99)}

    async def run_throughput(self) -> dict:
        """Constrained and unconstrained rounds, alternated so that drift hits both alike."""
        n, new = self.args.agents, self.args.throughput_tokens
        walls: dict[str, list[float]] = {"constrained": [], "unconstrained": []}
        with self.progress() as p:
            bar = p.add_task(f"{n} processes, constrained vs not", total=2 * self.args.rounds)
            async with self.client() as c:
                for _ in range(self.args.rounds):
                    for kind in walls:
                        kw = ({"response_format": {"type": "json_schema",
                                                   "json_schema": {"name": "numbers", "schema": NUMBERS}}}
                              if kind == "constrained" else {"extra_body": {"ignore_eos": True}})
                        t0 = time.perf_counter()
                        outs = await asyncio.gather(*(c.chat.completions.create(
                            model=MODEL, max_tokens=new, temperature=0,
                            messages=[{"role": "user", "content": f"List {new} numbers ({i})."}], **kw)
                            for i in range(n)))
                        walls[kind].append(time.perf_counter() - t0)
                        got = sum(o.usage.completion_tokens for o in outs)
                        if got != n * new:
                            raise RuntimeError(f"{kind}: {got} tokens, expected {n * new}")
                        p.advance(bar)
        tok_s = {k: n * new / statistics.median(v) for k, v in walls.items()}
        return {"processes": n, "new_tokens": new, "rounds": self.args.rounds, **{f"{k}_tok_s": v for k, v in tok_s.items()},
                "ratio": tok_s["constrained"] / tok_s["unconstrained"]}

    def run_mask(self, decode_step_s: float) -> dict:
        """Per decode step of N constrained rows: llguidance's bitmask and its application."""
        import torch
        from transformers import AutoTokenizer
        from llmos.drivers.grammar import GrammarCompiler
        from llmos.drivers.grammar_mask import mask_logits
        from llmos.kernel.models import ModelStore
        from llmos.syscalls.abi import tools as fmt

        tok = AutoTokenizer.from_pretrained(str(ModelStore(self.args.store).resolve(MODEL)))
        compiler = GrammarCompiler(tok, eos_token_ids=[tok.eos_token_id])
        t0 = time.perf_counter()
        grammar = compiler.compile(fmt.tool_grammar(TOOLS, "required", parallel=False))
        compile_ms = 1000 * (time.perf_counter() - t0)
        texts = [fmt.call_text(name, args) for name, args in self.calls] or [fmt.call_text("get_time", {"city": "Oslo"})]
        rows = [tok(texts[i % len(texts)], add_special_tokens=False)["input_ids"] for i in range(self.args.agents)]
        states = [grammar.start() for _ in rows]
        logits = torch.zeros(len(rows), compiler.vocab_size)
        per_step: list[float] = []
        for t in range(max(len(r) for r in rows)):
            live = [s if t < len(r) else None for s, r in zip(states, rows)]
            t0 = time.perf_counter()
            mask_logits(logits, live)
            per_step.append(time.perf_counter() - t0)
            for s, r in zip(states, rows):
                if t < len(r) and not s.accept(r[t]):
                    raise RuntimeError(f"the grammar refused token {t} of {tok.decode(r)!r}")
        step = statistics.median(per_step)
        return {"rows": len(rows), "compile_ms": compile_ms, "mask_step_us": 1e6 * step,
                "mask_token_us": 1e6 * step / len(rows), "decode_step_ms": 1000 * decode_step_s,
                "share_of_step": step / decode_step_s if decode_step_s else 0.0}

    async def run_held(self) -> dict:
        """The tool-result turn of a long conversation, hot and cold, through gRPC and through HTTP."""
        from transformers import AutoTokenizer
        from llmos.kernel.models import ModelStore
        from llmos.syscalls.abi import tools as fmt
        from llmos.syscalls.sdk import AsyncClient

        tok = AutoTokenizer.from_pretrained(str(ModelStore(self.args.store).resolve(MODEL)))
        policy = long_system_prompt(tok, self.args.context_tokens)

        def conversation() -> list[dict]:  # a fresh first line: nothing of it is in any cache
            return [{"role": "system", "content": f"Session {uuid.uuid4().hex}.\n{policy}"},
                    {"role": "user", "content": "What time is it in Lima?"}]

        result = json.dumps(run_tool("get_time", {"city": "Lima"}))
        out: dict[str, dict] = {}
        with self.progress() as p:
            bar = p.add_task("held context: hot and cold turns", total=4 * self.args.rounds)
            async with AsyncClient(self.daemon.socket) as sdk:
                hot, cold = [], []
                for _ in range(self.args.rounds):
                    msgs = conversation()
                    pid = await sdk.spawn(MODEL, messages=msgs, tools=TOOLS, tool_choice="required",
                                          interactive=True, max_tokens=self.args.max_tokens)
                    first = await sdk.wait(pid, until="turn")
                    t0 = time.perf_counter()
                    offset = await sdk.write(pid, result, role="tool")
                    async for chunk in sdk.read(pid, offset=offset, until="turn"):
                        if chunk.text:
                            hot.append(time.perf_counter() - t0)
                            break
                    await sdk.kill(pid, "KILL")
                    p.advance(bar)
                    again = conversation()
                    again += [{"role": "assistant", "content": first.output}, {"role": "tool", "content": result}]
                    t0 = time.perf_counter()
                    pid = await sdk.spawn(MODEL, messages=again, tools=TOOLS, tool_choice="required", max_tokens=1)
                    async for chunk in sdk.read(pid):
                        if chunk.text:
                            cold.append(time.perf_counter() - t0)
                            break
                    await sdk.wait(pid, reap=True)
                    p.advance(bar)
                out["grpc"] = speedup(hot, cold)
            async with self.client() as c:
                hot, cold = [], []
                for _ in range(self.args.rounds):
                    msgs = conversation()
                    _, calls, _, _ = await self.turn(c, msgs, tools=TOOLS, tool_choice="required",
                                                     max_tokens=self.args.max_tokens)
                    follow = [{"role": "assistant", "content": None, "tool_calls": calls},
                              {"role": "tool", "tool_call_id": calls[0]["id"] if calls else "x", "content": result}]
                    hot.append((await self.turn(c, msgs + follow, tools=TOOLS, max_tokens=1))[2])
                    p.advance(bar)
                    cold.append((await self.turn(c, conversation() + follow, tools=TOOLS, max_tokens=1))[2])
                    p.advance(bar)
                out["http"] = speedup(hot, cold)
        out["context_tokens"] = len(encode_chat(tok, fmt.render(conversation(), TOOLS)))
        return out

    def progress(self) -> Progress:
        return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        console=self.console, transient=True)


def quantile(xs: list[float], q: float) -> float:
    ys = sorted(xs)
    return ys[min(len(ys) - 1, int(q * len(ys)))] if ys else 0.0


def speedup(hot: list[float], cold: list[float]) -> dict:
    h, c = statistics.median(hot), statistics.median(cold)
    return {"hot_ttft_ms": 1000 * h, "cold_ttft_ms": 1000 * c, "speedup": c / h}


def report(fig: dict, console: Console) -> list[str]:
    """Print the tables; return the targets missed."""
    a, t, m, h = fig["agents"], fig["throughput"], fig["mask"], fig["held"]
    table = Table(title=f"{a['agents']} agents x {a['steps']} tool steps ({fig['model']})")
    for col in ("figure", "value"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    rows = [("tokens/s", f"{a['tok_s']:.1f}"), ("tool calls/s", f"{a['tool_calls_s']:.2f}"),
            ("valid arguments", f"{a['valid']}/{a['tool_calls']} ({100 * a['validity']:.1f}%)"),
            ("tool-result TTFT p50 / p99 ms", f"{a['tool_result_ttft_p50_ms']:.0f} / {a['tool_result_ttft_p99_ms']:.0f}"),
            (f"constrained / unconstrained at {t['processes']}",
             f"{t['constrained_tok_s']:.1f} / {t['unconstrained_tok_s']:.1f} tok/s = {t['ratio']:.2f}x"),
            ("grammar compile (tool schema)", f"{m['compile_ms']:.1f} ms"),
            (f"mask per step of {m['rows']} rows", f"{m['mask_step_us']:.0f} us = {100 * m['share_of_step']:.1f}% "
                                                  f"of a {m['decode_step_ms']:.0f} ms step"),
            ("mask per token", f"{m['mask_token_us']:.1f} us")]
    for way in ("grpc", "http"):
        rows.append((f"{h['context_tokens']}-token turn, hot / cold ({way})",
                     f"{h[way]['hot_ttft_ms']:.0f} / {h[way]['cold_ttft_ms']:.0f} ms = {h[way]['speedup']:.1f}x"))
    for r in rows:
        table.add_row(*r)
    console.print(table)
    missed = []
    if a["validity"] < 1.0:
        missed.append(f"validity {100 * a['validity']:.1f}% < 100%: {a['invalid']}")
    if t["ratio"] < MIN_CONSTRAINED_RATIO:
        missed.append(f"constrained/unconstrained {t['ratio']:.2f} < {MIN_CONSTRAINED_RATIO}")
    for way in ("grpc", "http"):
        if h[way]["speedup"] < MIN_HELD_SPEEDUP:
            missed.append(f"held context speedup through {way} {h[way]['speedup']:.1f}x < {MIN_HELD_SPEEDUP}x")
    for m_ in missed:
        console.print(f"[red]missed: {m_}")
    return missed


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=16)
    p.add_argument("--steps", type=int, default=3, help="tool calls per agent before its answer")
    p.add_argument("--max-tokens", type=int, default=96, help="budget of a tool-call turn")
    p.add_argument("--throughput-tokens", type=int, default=64, help="tokens per process in the throughput part")
    p.add_argument("--rounds", type=int, default=3, help="repeats of the throughput and held-context parts")
    p.add_argument("--context-tokens", type=int, default=1000, help="length of the held conversation")
    p.add_argument("--store", type=Path, default=default_store())
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="write the figures here")
    return p.parse_args(argv)


async def measure(b: Agents) -> dict:
    agents = await b.run_agents()
    throughput = await b.run_throughput()
    step_s = b.args.throughput_tokens * b.args.agents / throughput["unconstrained_tok_s"] / b.args.throughput_tokens
    held = await b.run_held()
    return {"model": MODEL, "agents": agents, "throughput": throughput, "mask": b.run_mask(step_s), "held": held}


def main(argv: list[str] | None = None) -> int:
    """Run the four parts; exit 1 when a target is missed."""
    args = parse(argv)
    console = Console()
    b = Agents(args, console)
    try:
        fig = asyncio.run(measure(b))
    finally:
        b.daemon.stop()
    missed = report(fig, console)
    fig["missed"] = missed
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(fig, indent=2))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
