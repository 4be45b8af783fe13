"""N concurrent agents, each a multi-turn conversation with its own interactive process.

    python examples/agents.py [--agents 16] [--turns 3] [--model smollm2-135m] [--max-tokens 48]

Needs a running llmosd (start one with `llmosd`). Prints each agent's last answer and the
aggregate generation rate.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time

from llmos import AsyncClient, SyscallError

TOPICS = ["the moon", "bread", "rivers", "volcanoes", "owls", "glass", "chess", "rain", "copper", "tea",
          "bridges", "bees", "maps", "salt", "clocks", "whales"]
FOLLOW_UPS = ["Tell me one more fact about it.", "Why does that matter?", "Sum it up in five words."]


async def agent(c: AsyncClient, i: int, model: str, turns: int, max_tokens: int) -> tuple[int, str, int]:
    """One conversation; returns (agent, last answer, tokens generated)."""
    topic = TOPICS[i % len(TOPICS)]
    pid = await c.spawn(model, messages=[{"role": "user", "content": f"Give me one short fact about {topic}."}],
                        interactive=True, max_tokens=max_tokens)
    try:
        answer = ""
        for turn in range(turns):
            offset = 0 if turn == 0 else await c.write(pid, FOLLOW_UPS[(turn - 1) % len(FOLLOW_UPS)])
            answer = "".join([ch.text async for ch in c.read(pid, offset, until="turn")])
        return i, answer.strip(), (await c.stat(pid)).usage.generated_tokens
    finally:
        await c.kill(pid)


async def main(args: argparse.Namespace) -> int:
    async with AsyncClient(args.socket) as c:
        t0 = time.monotonic()
        results = await asyncio.gather(*(agent(c, i, args.model, args.turns, args.max_tokens)
                                         for i in range(args.agents)))
        secs = time.monotonic() - t0
    for i, answer, n in results:
        print(f"agent {i:2d} ({n:4d} tokens): {answer[:100]!r}")
    total = sum(n for _, _, n in results)
    print(f"{args.agents} agents x {args.turns} turns: {total} tokens in {secs:.1f}s = {total / secs:.1f} tok/s")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=16)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--socket", default=None, help="daemon address (default $LLMOS_SOCKET or the default socket)")
    try:
        sys.exit(asyncio.run(main(ap.parse_args())))
    except SyscallError as e:
        print(f"agents: {e}", file=sys.stderr)
        sys.exit(1)
