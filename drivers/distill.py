"""Knowledge distillation's loss: a student learns a teacher's next-token distributions.

At each position the loss counts (the same positions as a fine-tune's cross-entropy), the
student's distribution at temperature T is pulled towards the teacher's:

    loss = alpha · CE(student, data) + (1 - alpha) · T² · KL(softmax(t / T) ‖ softmax(s / T))

The T² keeps the gradient's size independent of T (Hinton et al., 2015). Teacher and student
must share a tokenizer; logits are compared over the first `vocab` entries (a model's output
may carry padding rows past its tokenizer's last id).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DistillConfig:
    """How a session distills: temperature, the weight of the data's cross-entropy, the vocabulary."""

    temperature: float = 2.0
    alpha: float = 0.0
    vocab: int = 0  # compare this many logits (0: all of them)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                 cfg: DistillConfig) -> tuple[torch.Tensor, float]:
    """Summed loss over the positions whose next token is a target (labels[:, 1:] != -100),
    and the summed KL alone (unscaled, at temperature T). student, teacher: [B, T, V] logits
    of the same tokens; labels: [B, T] token ids with -100 where no loss counts."""
    target = labels[:, 1:]
    keep = target != -100
    s = student[:, :-1][keep].float()
    t = teacher[:, :-1][keep].float()
    n = cfg.vocab or min(s.shape[-1], t.shape[-1])
    temp = cfg.temperature
    log_q = F.log_softmax(s[:, :n] / temp, dim=-1)
    log_p = F.log_softmax(t[:, :n] / temp, dim=-1)
    kl = F.kl_div(log_q, log_p, log_target=True, reduction="sum")
    loss = (1.0 - cfg.alpha) * temp * temp * kl
    if cfg.alpha:
        loss = loss + cfg.alpha * F.cross_entropy(s, target[keep], reduction="sum")
    return loss, float(kl.detach())


@torch.no_grad()
def kl_to_teacher(student: torch.nn.Module, teacher: torch.nn.Module, ids: list[int], vocab: int = 0,
                  temperature: float = 1.0) -> float:
    """Mean KL(teacher ‖ student) per position of `ids` at `temperature`: how close a student
    is (tests and benchmarks measure it on held-out text)."""
    x = torch.tensor([ids], device=next(student.parameters()).device)
    s = student(input_ids=x, use_cache=False).logits[0].float()
    t = teacher(input_ids=x.to(next(teacher.parameters()).device), use_cache=False).logits[0].float().to(s.device)
    n = vocab or min(s.shape[-1], t.shape[-1])
    kl = F.kl_div(F.log_softmax(s[:, :n] / temperature, -1), F.log_softmax(t[:, :n] / temperature, -1),
                  log_target=True, reduction="sum")
    return float(kl) / len(ids)
