"""Masking a batch's logits with its processes' grammar states, in place.

The engine fills one bitmask row per constrained row (in parallel, on its own threads); the
bits are then applied to those rows of the logits. Rows without a state are not read or
written, and a batch without any state costs one list scan.

On the CPU the bits are applied with numpy: torch splits a 49k-wide op across its intra-op
threads, and on a busy machine each such op waited 12 ms for a second core. Elsewhere they
are unpacked and applied by torch on the logits' device. llguidance's own
apply_token_bitmask_inplace is not used: it is a torch.compile kernel that took 15 s to
compile on its first CPU call.
"""
from __future__ import annotations

import os
import sys
from functools import cache

import llguidance
import numpy as np
import torch

from llmos.drivers.grammar_state import GrammarState

_SAME_SIZE_INT = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
                  torch.float64: torch.int64}


@cache
def _executor() -> llguidance.LLExecutor:
    return llguidance.LLExecutor(num_threads=max(1, min(4, os.cpu_count() or 1)))


def fill_bitmask(states: list[GrammarState], ahead: list[list[int]] | None = None) -> torch.Tensor:
    """The next-token bitmask of each state: int32 [len(states), ceil(vocab / 32)], on the CPU.

    Bit t % 32 of word t // 32 is set when token t is allowed. With `ahead`, row i is the mask
    after ahead[i] too (a speculative proposal's row: the state is walked forward and back);
    a row whose tokens ahead the grammar does not take allows every token (no draw of it is kept).
    """
    vocab = states[0].grammar.vocab_size
    if any(s.grammar.vocab_size != vocab for s in states):
        raise ValueError("states of one batch must share a vocabulary")
    words = (vocab + 31) // 32
    bitmask = torch.full((len(states), words), -1, dtype=torch.int32)
    ahead = ahead or [[] for _ in states]
    now = [i for i, a in enumerate(ahead) if not a]
    if len(now) == 1:
        states[now[0]].matcher.unsafe_compute_mask_ptr(bitmask[now[0]].data_ptr(), words * 4)
    elif now:
        _executor().unsafe_compute_mask_ptr([(states[i].matcher, i) for i in now], bitmask.data_ptr(),
                                            words * 4, len(states))
    for i in (i for i, a in enumerate(ahead) if a):  # one matcher's positions one after another
        s = states[i]
        taken = s.consume(ahead[i])
        if taken == len(ahead[i]):
            s.matcher.unsafe_compute_mask_ptr(bitmask[i].data_ptr(), words * 4)
        s.rollback(taken)
    return bitmask


def mask_logits(logits: torch.Tensor, states: list[GrammarState | None],
                ahead: list[list[int]] | None = None) -> dict[int, str]:
    """Set to -inf, in place, the logits [B, V] of every token row i's grammar forbids (after
    the tokens ahead[i], for a row that verifies speculative proposals).

    Returns {row: why} for the rows whose grammar cannot go on (an engine error, or no token of
    the vocabulary continuing it); those rows allow only EOS, so sampling them stays defined,
    and the caller ends their processes with that reason.
    """
    rows = [i for i, s in enumerate(states) if s is not None]
    if not rows:
        return {}
    if len(states) != logits.shape[0]:
        raise ValueError(f"{len(states)} states for {logits.shape[0]} rows of logits")
    constrained = [states[i] for i in rows]
    bitmask = fill_bitmask(constrained, [ahead[i] for i in rows] if ahead else None)
    words = bitmask.numpy().view(np.uint32)
    empty = ~words.any(axis=1)
    dead: dict[int, str] = {}
    for j, (i, s) in enumerate(zip(rows, constrained)):
        why = s.error or ("no token of the vocabulary continues the grammar" if empty[j] else None)
        if why is not None:
            dead[i] = why
            words[j] = 0
            for eos in s.grammar.eos_token_ids:
                words[j, eos // 32] |= np.uint32(1 << (eos % 32))
    apply_bitmask(logits, rows, bitmask)
    return dead


def apply_bitmask(logits: torch.Tensor, rows: list[int], bitmask: torch.Tensor) -> None:
    """-inf into logits[rows[j], t] for every token t that bitmask[j] does not allow (ids past it included)."""
    if logits.device.type == "cpu" and sys.byteorder == "little" and logits.dtype in _SAME_SIZE_INT:
        _apply_numpy(logits, rows, bitmask)
    else:
        _apply_torch(logits, rows, bitmask)


def _apply_numpy(logits: torch.Tensor, rows: list[int], bitmask: torch.Tensor) -> None:
    width = logits.shape[1]
    n = min(width, bitmask.shape[1] * 32)
    # On a little-endian host, bit t of an int32 row is bit t % 8 of byte t // 8.
    forbidden = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, count=n, bitorder="little") == 0
    int_type = _SAME_SIZE_INT[logits.dtype]
    neg_inf = torch.tensor(float("-inf"), dtype=logits.dtype).view(int_type).item()
    ints = logits.detach().view(int_type).numpy()  # the logits' own memory, as integers of their width
    for j, i in enumerate(rows):
        np.copyto(ints[i, :n], neg_inf, where=forbidden[j])
        ints[i, n:] = neg_inf


def _apply_torch(logits: torch.Tensor, rows: list[int], bitmask: torch.Tensor) -> None:
    width = logits.shape[1]
    bitmask = bitmask.to(logits.device, non_blocking=True)
    shifts = torch.arange(32, dtype=torch.int32, device=logits.device)
    allowed = ((bitmask.unsqueeze(-1) >> shifts) & 1).bool().view(bitmask.shape[0], -1)
    if allowed.shape[1] >= width:
        allowed = allowed[:, :width]
    else:
        allowed = torch.cat([allowed, allowed.new_zeros(allowed.shape[0], width - allowed.shape[1])], dim=1)
    if len(rows) == logits.shape[0]:
        logits.masked_fill_(~allowed, float("-inf"))
    else:
        index = torch.tensor(rows, device=logits.device)
        logits[index] = logits[index].masked_fill(~allowed, float("-inf"))
