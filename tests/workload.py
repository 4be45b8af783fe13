"""A decode workload for tests of the fast decode paths (drivers/compiled.py, drivers/stack.py):
a process alone from one page, then a batch of four that shrinks as they finish, so that steps
of 1 to 4 decode rows run over one page and over many."""
from __future__ import annotations

import random

BATCHES = (((2,), (12,)), ((3, 9, 17, 5), (4, 12, 7, 10)))  # (prompt lengths, new tokens)


def run_mixed_batches(k, model: str = "tiny", seed: int = 0) -> None:
    """Spawn each batch of random prompts on kernel k and run it until idle."""
    from llmos.kernel import ROOT, SpawnSpec, StopRules

    rng = random.Random(seed)
    for lens, new in BATCHES:
        for n, m in zip(lens, new):
            k.spawn(ROOT, SpawnSpec(model, tokens=[rng.randrange(3, 380) for _ in range(n)],
                                    stop=StopRules(max_tokens=m, ignore_eos=True)))
        k.run_until_idle()


PHRASE = [50, 51, 52, 53, 54, 55]
REPEATS = [[7] + PHRASE * 3, [9, 10, 11], PHRASE * 2 + [60, 61]]  # repeats for prompt lookup to find


def assert_repeats_match_generate(k, ref, n: int = 14, label: str = "", model: str = "tiny") -> None:
    """Run REPEATS on kernel k, n greedy tokens each, and check each against generate()."""
    from llmos.kernel import ROOT, SpawnSpec, StopRules

    procs = [k.spawn(ROOT, SpawnSpec(model, tokens=t, stop=StopRules(max_tokens=n, ignore_eos=True))) for t in REPEATS]
    k.run_until_idle()
    for t, p in zip(REPEATS, procs):
        assert p.out_tokens == ref.greedy(t, n), f"{label}, prompt {t}"
