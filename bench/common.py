"""Shared pieces of the llmos benchmarks: prompts, results, timing helpers, the model store."""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil

MODEL = "smollm2-135m"

QUESTIONS = [
    "What causes the seasons on Earth?",
    "How do I reverse a linked list in Python?",
    "Can you explain what a hash table is and why lookups are fast?",
    "Write a short poem about autumn leaves.",
    "What is the difference between a virus and a bacterium?",
    "How does compound interest work? Give a simple example.",
    "What are three tips for getting better sleep?",
    "Explain recursion to a ten-year-old.",
    "Why is the sky blue?",
    "What should I pack for a three-day hiking trip?",
    "How do vaccines train the immune system?",
    "Summarize the plot of Romeo and Juliet in a few sentences.",
    "What is the capital of Australia, and why was it chosen?",
    "How can I make my resume stand out for a software engineering job?",
    "What is photosynthesis?",
    "Give me a simple recipe for pancakes.",
    "What is the difference between TCP and UDP?",
    "How do I politely decline a meeting invitation?",
    "Explain what inflation is and what causes it.",
    "What are the main differences between Python lists and tuples?",
    "How does a refrigerator keep food cold?",
    "Suggest a name for a small coffee shop by the sea.",
    "What is machine learning, in plain words?",
    "How many planets are in the solar system? Name them.",
    "What is a good way to start learning to play the guitar?",
    "Why do cats purr?",
    "Explain the rules of chess for a complete beginner.",
    "How do I convert Celsius to Fahrenheit?",
    "What were the main causes of the First World War?",
    "Write a SQL query that counts the orders per customer.",
    "What is the difference between weather and climate?",
    "How can I reduce the amount of plastic I use at home?",
]

_POLICY = [
    "You are the support assistant of Northwind Outfitters, an online shop for outdoor gear.",
    "Always greet the customer politely and answer in the language they write in.",
    "Keep answers short: at most three paragraphs unless the customer asks for detail.",
    "Never invent order numbers, tracking codes, prices or delivery dates.",
    "If you do not know an answer, say so and offer to connect the customer with a human agent.",
    "Orders ship from our warehouse within two working days; express orders ship the same day if placed before noon.",
    "Standard delivery takes three to five working days; express delivery takes one to two working days.",
    "Customers may return unused items within thirty days of delivery for a full refund.",
    "Worn or used items can be returned only if they are faulty, within one year of purchase.",
    "Refunds go back to the original payment method within ten working days of receiving the return.",
    "Sleeping bags, tents and backpacks carry a two-year warranty against manufacturing defects.",
    "Footwear carries a one-year warranty; normal wear of soles is not a defect.",
    "Do not give medical, legal or financial advice; suggest a qualified professional instead.",
    "When a customer is upset, acknowledge the problem before proposing a solution.",
    "Offer the size guide when a customer is unsure about sizes, and mention that exchanges are free.",
    "Gift cards never expire and cannot be exchanged for cash.",
    "Our loyalty program gives one point per euro spent; one hundred points are worth five euros.",
    "Never ask for full card numbers, passwords or security codes.",
    "For safety questions about climbing or mountaineering gear, point to the manufacturer's instructions.",
    "Be honest about stock: if an item is out of stock, offer similar items or a restock notification.",
]


def chat(question: str, system: str | None = None) -> list[dict]:
    """One chat request: an optional system message and one user question."""
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": question}]


def long_system_prompt(tokenizer, min_tokens: int = 512) -> str:
    """A realistic system message of at least min_tokens tokens: the policy, rule by rule, repeated as needed."""
    lines: list[str] = []
    i = 0
    while len(tokenizer("\n".join(lines), add_special_tokens=False)["input_ids"]) < min_tokens:
        lines.append(f"{i + 1}. {_POLICY[i % len(_POLICY)]}")
        i += 1
    return "\n".join(lines)


def encode_chat(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a chat rendered with the model's template (as the kernel's TextCodec does)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def drive(k, procs: list, tick: "Tick") -> int:
    """Step kernel k until it is idle, ticking the progress bar with tokens as they come;
    returns the tokens `procs` generated."""
    done = 0
    while k.has_work():
        k.step()
        now = sum(p.usage.generated_tokens for p in procs)
        tick(now - done)
        done = now
    return done


def end_all(k, procs: list) -> None:
    """Kill what is still running of procs on kernel k, step until it is idle, reap them all."""
    from llmos.kernel import ROOT

    for p in procs:
        if not p.state.done:
            k.signal(ROOT, p.pid, "KILL")
    while k.has_work():
        k.step()
    for p in procs:
        k.reap(ROOT, p.pid)


def default_store() -> Path:
    state = os.environ.get("LLMOS_STATE_DIR")
    return Path(state) / "models" if state else Path("~/.local/state/llmos/models").expanduser()


@dataclass
class RunResult:
    """One system at one concurrency."""

    system: str
    concurrency: int
    new_tokens: int
    tok_s: float
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    wall_s: float = 0.0
    generated_tokens: int = 0
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return asdict(self)


def percentile_ms(seconds: list[float | None], q: float) -> float | None:
    xs = [s for s in seconds if s is not None]
    return float(np.percentile(np.array(xs) * 1000.0, q)) if xs else None


def result(system: str, n: int, new_tokens: int, wall_s: float, generated: int,
           ttfts_s: list[float | None], notes: list[str] | None = None) -> RunResult:
    """Summarize one timed run; notes say what looked off (for example a wrong token count)."""
    notes = list(notes or [])
    if generated != n * new_tokens:
        notes.append(f"generated {generated} tokens, expected {n * new_tokens}")
    return RunResult(system, n, new_tokens, generated / wall_s if wall_s > 0 else 0.0,
                     percentile_ms(ttfts_s, 50), percentile_ms(ttfts_s, 99), wall_s, generated, notes)


Tick = Callable[[int], None]  # advance the progress bar by this many generated tokens


class FirstTokenStreamer:
    """A transformers streamer that records when the first generated tokens arrive.

    generate() calls put() once with the prompt, then once per step with the new tokens.
    """

    def __init__(self, tick: Tick | None = None) -> None:
        self.calls = 0
        self.first: float | None = None
        self.tick = tick

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2 and self.first is None:
            self.first = time.perf_counter()
        if self.calls >= 2 and self.tick is not None:
            self.tick(int(value.shape[0]))

    def end(self) -> None:
        pass


class RssSampler:
    """Peak resident set size of this process, sampled on demand (psutil)."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss

    def sample(self) -> int:
        rss = self.proc.memory_info().rss
        self.peak = max(self.peak, rss)
        return rss
