"""The `llmos_http` system: the same workload through llmosd's OpenAI-compatible HTTP gateway.

The llmosd of bench/daemon.py serves it on a free port. Every request is a streaming
POST /v1/chat/completions (`stream_options.include_usage` on), all N at once from one aiohttp
session, as an OpenAI app would send them. TTFT is when a stream's first text reaches the client.
"""
from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from bench.common import MODEL, RunResult, Tick, result
from bench.daemon import under_test


async def _stream(session: aiohttp.ClientSession, messages: list[dict], new_tokens: int,
                  t0: float) -> tuple[float | None, int]:
    body = {"model": MODEL, "messages": messages, "max_tokens": new_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    first, generated = None, 0
    async with session.post("/v1/chat/completions", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"llmosd answered HTTP {r.status}: {await r.text()}")
        async for line in r.content:
            if not line.startswith(b"data: {"):
                continue  # blank separators and the closing [DONE]
            event = json.loads(line[len(b"data: "):])
            if event.get("usage"):
                generated = event["usage"]["completion_tokens"]
            if first is None and any(ch["delta"].get("content") for ch in event["choices"]):
                first = time.perf_counter() - t0
    return first, generated


async def _run(url: str, token: str, requests: list[list[dict]], new_tokens: int,
               tick: Tick) -> tuple[float, int, list]:
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=0),
                                     headers={"Authorization": f"Bearer {token}"}) as session:
        t0 = time.perf_counter()

        async def one(messages: list[dict]) -> tuple[float | None, int]:
            first, generated = await _stream(session, messages, new_tokens, t0)
            tick(generated)
            return first, generated

        outs = await asyncio.gather(*(one(m) for m in requests))
        wall = time.perf_counter() - t0
    return wall, sum(n for _, n in outs), [f for f, _ in outs]


def run_http(bench, n: int, new_tokens: int, tick: Tick) -> RunResult:
    requests = [bench.requests[i] for i in bench.batch(n)]
    d = under_test(bench)
    wall, generated, ttfts = asyncio.run(_run(d.http_url, d.http_token, requests, new_tokens, tick))
    return result("llmos_http", n, new_tokens, wall, generated, ttfts)
