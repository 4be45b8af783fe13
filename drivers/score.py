"""Scoring text: the summed next-token negative log-likelihood of one window of tokens.

This is what an evaluation process asks of a driver, one window at a time. Plain data in
(token ids) and out (a float and a count), so a driver in another process can serve it.
The forward pass carries no llmos_batch, so paged attention falls back to plain causal
attention over the window alone and the KV pool is never touched.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.inference_mode()
def window_nll(model: torch.nn.Module, device: torch.device, token_ids: list[int]) -> tuple[float, int]:
    """(sum of -log p(token[i] | token[:i]) for i >= 1, number of tokens predicted)."""
    if len(token_ids) < 2:
        return 0.0, 0
    ids = torch.tensor([token_ids], device=device)
    logits = model(input_ids=ids[:, :-1], use_cache=False).logits[0].float()
    nll = F.cross_entropy(logits, ids[0, 1:], reduction="sum")
    return float(nll.item()), len(token_ids) - 1
