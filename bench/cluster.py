"""Many devices: what several devices in one daemon cost and gain (#17).

    python bench/cluster.py                      # the table
    python bench/cluster.py --json bench/results/cluster.json

Each row runs real llmosd subprocesses on the default model, through the SDK:
- throughput: aggregate tok/s of N processes (the best of 3 rounds) on one CPU device with every core, against
  `--device cpu:0,cpu:1` (two devices that split the cores, a worker process each), in one run;
- placement: prompt tokens computed (prefill, after the prefix cache) for 4 system prompts of
  500 tokens x 32 processes over two devices, cost placement against round-robin;
- migration: from `llmos migrate` of a process holding 1,000 tokens of context to its next
  token on the other device, by its KV pages and by recompute;
- device loss: from killing a device's worker to its process generating again on the other;
- Ray: the same N processes through `--cluster` on a local one-node Ray cluster (the daemon's
  own device drained, so every process runs in the node's kernel actor and its tokens come up
  through Ray), against plain llmosd with the same cores.
On one machine these figures bound overhead, not scaling: both devices share its memory bandwidth.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MODEL, QUESTIONS, default_store, long_system_prompt  # noqa: E402
from bench.daemon import DaemonUnderTest  # noqa: E402
from llmos.cluster import LocalCluster  # noqa: E402  (before ray: it keeps 127.0.0.1 addresses as given)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def throughput(store: Path, device: str, threads: int, n: int, new_tokens: int) -> dict:
    say(f"throughput: {n} processes x {new_tokens} tokens on --device {device}")
    with DaemonUnderTest(store, threads, device=device, http=False) as d, d.client() as c:
        return dict(device=device, **_run(c, n, new_tokens))


def _run(c, n: int, new_tokens: int, repeat: int = 3) -> dict:
    """n chat processes at once, after a warm-up, `repeat` times; the best aggregate tok/s (each
    run, the same work) and where they ran."""
    c.generate(MODEL, "Warm up", max_tokens=8, ignore_eos=True)
    best = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        pids = [c.spawn(MODEL, messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                        max_tokens=new_tokens, ignore_eos=True) for i in range(n)]
        placed = sorted(c.stat(pid).device for pid in pids)
        generated = sum(c.wait(pid).usage.generated_tokens for pid in pids)
        wall = time.perf_counter() - t0
        run = {"procs": n, "generated": generated, "wall_s": round(wall, 3), "tok_s": round(generated / wall, 1),
               "placed": {x: placed.count(x) for x in set(placed)}}
        best = run if best is None or run["tok_s"] > best["tok_s"] else best
    return {**best, "repeat": repeat}


def placement(store: Path, threads: int, policy: str, tokenizer, procs: int = 32, prompts: int = 4) -> dict:
    say(f"placement: {prompts} system prompts of 500 tokens x {procs} processes, --placement {policy}")
    systems = [f"Shop {i}.\n" + long_system_prompt(tokenizer, 500) for i in range(prompts)]
    # Requests arrive in no order that a device count could line up with: shuffled, the same way each run.
    order = random.Random(17).sample(range(procs), procs)
    with (DaemonUnderTest(store, threads, "--placement", policy, device="cpu:0,cpu:1", http=False) as d,
          d.client() as c):
        pids = []
        for i in order:
            msgs = [{"role": "system", "content": systems[i % prompts]},
                    {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
            pids.append(c.spawn(MODEL, messages=msgs, max_tokens=4, ignore_eos=True))
        done = [c.wait(pid) for pid in pids]
    prompt = sum(r.usage.prompt_tokens for r in done)
    cached = sum(r.usage.cached_tokens for r in done)
    return {"policy": policy, "procs": procs, "prompt_tokens": prompt, "cached_tokens": cached,
            "prefill_tokens": prompt - cached}


def migration_and_loss(store: Path, threads: int, tokenizer) -> dict:
    say("migration: a process with 1,000 tokens of context from cpu:0 to cpu:1, by tokens and by pages; "
        "then cpu:1's worker killed under a third")
    import psutil

    out: dict = {}
    with DaemonUnderTest(store, threads, device="cpu:0,cpu:1", http=False) as d, d.client() as c:
        for i, by in enumerate(("tokens", "pages")):  # each its own context: cpu:1's prefix cache holds neither
            pid = c.spawn(MODEL, f"Context {i}.\n" + long_system_prompt(tokenizer, 1000), max_tokens=2000,
                          ignore_eos=True)
            _wait_tokens(c, pid, 4)
            t0 = time.perf_counter()
            r = c.migrate(pid, "cpu:1", by)
            _wait_tokens(c, pid, r.proc.usage.generated_tokens + 1)
            out[f"migrate_{by}_s"] = round(time.perf_counter() - t0, 3)
            out["context_tokens"], out[f"how_{by}"] = r.proc.num_tokens, r.how
            c.kill(pid, "KILL")
        busy = c.spawn(MODEL, "Keep cpu:0 busy", max_tokens=2000, ignore_eos=True)
        pid = c.spawn(MODEL, "Context 2.\n" + long_system_prompt(tokenizer, 1000), max_tokens=2000, ignore_eos=True)
        assert c.stat(pid).device == "cpu:1", "the third process should be placed on the idle device"
        _wait_tokens(c, pid, 4)
        n = c.stat(pid).usage.generated_tokens
        worker = [p for p in psutil.Process(d.proc.pid).children() if "spawn_main" in " ".join(p.cmdline())][0]
        t0 = time.perf_counter()
        worker.kill()
        _wait_tokens(c, pid, n + 2)  # one more may have been in flight from the dead device
        out["device_loss_s"] = round(time.perf_counter() - t0, 3)
        out["continued_on"] = c.stat(pid).device
        for x in (busy, pid):
            c.kill(x, "KILL")
    return out


def have_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        say("ray: not installed (pip install 'llmos[ray]'); its rows are left out")
        return False
    return True


def ray_throughput(store: Path, threads: int, n: int, new_tokens: int) -> dict:
    """N processes on a one-node local Ray cluster's kernel actor, through the head."""
    say(f"ray: {n} processes x {new_tokens} tokens on a one-node Ray cluster's actor ({threads} CPUs)")
    with (LocalCluster([threads]) as rc, DaemonUnderTest(store, 1, "--cluster", rc.address, http=False) as d,
          d.client() as c):
        c.drain("cpu:0")
        return dict(device="ray node", **_run(c, n, new_tokens))


def ray_moves(store: Path, tokenizer) -> dict:
    """Across two Ray nodes: migrate a 1,000-token process by pages and by tokens, then kill its node."""
    say("ray: migration between two nodes by pages and by tokens, then a node removed under a process")
    out: dict = {}
    with (LocalCluster([1, 1]) as rc, DaemonUnderTest(store, 1, "--cluster", rc.address, http=False) as d,
          d.client() as c):
        c.drain("cpu:0")
        nodes = [x for x in c.models().loaded[0].devices if x.startswith("node-")]
        for i, by in enumerate(("tokens", "pages")):
            pid = c.spawn(MODEL, f"Node context {i}.\n" + long_system_prompt(tokenizer, 1000), max_tokens=2000,
                          ignore_eos=True)
            _wait_tokens(c, pid, 4)
            to = next(x for x in nodes if x != c.stat(pid).device)
            t0 = time.perf_counter()
            r = c.migrate(pid, to, by)
            _wait_tokens(c, pid, r.proc.usage.generated_tokens + 1)
            out[f"node_migrate_{by}_s"] = round(time.perf_counter() - t0, 3)
            c.kill(pid, "KILL")
        # A context neither node has seen: the survivor recomputes it all.
        pid = c.spawn(MODEL, "Node context 2.\n" + long_system_prompt(tokenizer, 1000), max_tokens=2000,
                      ignore_eos=True)
        _wait_tokens(c, pid, 4)
        where, n = c.stat(pid).device, c.stat(pid).usage.generated_tokens
        (node,) = [x for x in rc.nodes if where.startswith(f"node-{x.node_id[:8]}")]
        t0 = time.perf_counter()
        rc.cluster.remove_node(node)
        _wait_tokens(c, pid, n + 2)
        out["node_loss_s"] = round(time.perf_counter() - t0, 3)
        out["node_loss_continued_on"] = c.stat(pid).device
        c.kill(pid, "KILL")
    return out


def _wait_tokens(c, pid: int, n: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while c.stat(pid).usage.generated_tokens < n and time.monotonic() < deadline:
        time.sleep(0.005)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, default=default_store())
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--procs", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.threads < 2:
        ap.error("two CPU devices need at least two cores")
    from transformers import AutoTokenizer

    from llmos.kernel.models import ModelStore
    tokenizer = AutoTokenizer.from_pretrained(str(ModelStore(args.store).resolve(MODEL)))
    cpu = re.sub(r"\s+", " ", next((ln.split(":", 1)[1] for ln in open("/proc/cpuinfo") if "model name" in ln),
                                   "?")).strip()

    one = throughput(args.store, "cpu", args.threads, args.procs, args.new_tokens)
    two = throughput(args.store, "cpu:0,cpu:1", args.threads, args.procs, args.new_tokens)
    cost = placement(args.store, args.threads, "cost", tokenizer)
    rr = placement(args.store, args.threads, "round-robin", tokenizer)
    moves = migration_and_loss(args.store, args.threads, tokenizer)
    ray_ok = have_ray()
    on_ray = ray_throughput(args.store, args.threads, args.procs, args.new_tokens) if ray_ok else None
    node_moves = ray_moves(args.store, tokenizer) if ray_ok else {}
    ratio = two["tok_s"] / one["tok_s"]
    saving = rr["prefill_tokens"] / max(1, cost["prefill_tokens"])

    from rich.console import Console
    from rich.table import Table
    con = Console()
    con.print(f"[bold]{cpu}[/], {args.threads} cores: on one machine these figures bound overhead, not scaling")
    t = Table(box=None, header_style="bold")
    for col in ("row", "llmos", "against", "ratio", "target"):
        t.add_column(col)
    t.add_row(f"tok/s, {args.procs} processes", f"{two['tok_s']} (cpu:0,cpu:1)", f"{one['tok_s']} (cpu, every core)",
              f"{ratio:.2f}x", "-")
    t.add_row("prefill tokens, 4 prompts x 32", f"{cost['prefill_tokens']} (cost)",
              f"{rr['prefill_tokens']} (round-robin)", f"{saving:.2f}x fewer", ">= 1.5x fewer")
    t.add_row(f"migrate, {moves['context_tokens']} tokens", f"{moves['migrate_pages_s'] * 1e3:.0f} ms (pages)",
              f"{moves['migrate_tokens_s'] * 1e3:.0f} ms (recompute)",
              f"{moves['migrate_tokens_s'] / moves['migrate_pages_s']:.1f}x faster", "-")
    t.add_row("device lost -> running again", f"{moves['device_loss_s'] * 1e3:.0f} ms", f"on {moves['continued_on']}",
              "-", "-")
    if on_ray is None:
        t.add_row("one-node Ray cluster vs plain", "ray not installed", "-", "-", ">= 0.9x")
    else:
        t.add_row(f"tok/s, {args.procs} processes", f"{on_ray['tok_s']} (one-node Ray cluster)",
                  f"{one['tok_s']} (plain llmosd)", f"{on_ray['tok_s'] / one['tok_s']:.2f}x", ">= 0.9x")
        t.add_row("migrate node to node, 1,000 tokens", f"{node_moves['node_migrate_pages_s'] * 1e3:.0f} ms (pages)",
                  f"{node_moves['node_migrate_tokens_s'] * 1e3:.0f} ms (recompute)",
                  f"{node_moves['node_migrate_tokens_s'] / node_moves['node_migrate_pages_s']:.1f}x faster", "-")
        t.add_row("node removed -> running again", f"{node_moves['node_loss_s'] * 1e3:.0f} ms",
                  f"on {node_moves['node_loss_continued_on']}", "-", "-")
    con.print(t)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cpu": cpu, "threads": args.threads, "throughput": [one, two],
                                         "ray": on_ray, "ray_moves": node_moves,
                                         "ratio_two_devices": round(ratio, 3), "placement": [cost, rr],
                                         "prefill_saving": round(saving, 3), "migration": moves,
                                         "date": time.strftime("%Y-%m-%d")}, indent=2) + "\n")
        con.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
