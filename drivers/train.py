"""Fine-tuning and distillation on a loaded model, driven in small units by the kernel.

Each training session trains a *twin* of the served model: new module objects that share
the served model's parameter tensors, with LoRA layers (peft) injected into the twin only and
plain SDPA attention. The served model's modules are never touched, so base-model
inference (paged attention, inference_mode) is unchanged while and after training. With
`full` in the config the twin is a deep copy instead, and all of its weights train.

A distilling session has a teacher: another loaded model, held by the session with
`begin(teacher_model, adapter, {"role": "teacher"})` before the session itself begins (so
the driver protocol's `train_begin` carries both, as plain data). Each micro-batch then runs
the teacher on the same tokens, without gradients, and the loss is drivers/distill.py's.

Everything crossing the driver boundary is plain data: token id lists, floats, paths.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llmos.drivers.distill import DistillConfig, distill_loss

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


FULL_WEIGHTS = "model.safetensors"  # a full session's checkpointed weights


@dataclass
class _Session:
    model: torch.nn.Module  # the peft-wrapped twin, or a full copy
    opt: torch.optim.Optimizer
    full: bool = False
    teacher: torch.nn.Module | None = None  # a served model: run without gradients, never changed
    distill: DistillConfig | None = None


class Trainer:
    """Training sessions on one device (LoRA or full weights, fine-tuning or distilling),
    keyed by the name of the model they make."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sessions: dict[str, _Session] = {}
        self.teachers: dict[str, torch.nn.Module] = {}  # held for sessions about to begin

    def begin(self, base: torch.nn.Module, adapter: str, cfg: dict) -> int:
        """Start a session: rank, alpha, lr, seed, weight_decay in cfg; `full` trains every
        weight of a copy instead of a LoRA adapter; `distill` (with temperature, kd_alpha,
        vocab) learns from the teacher held for it. With {"role": "teacher"}, hold `base` as
        the teacher of the session `adapter` will begin (returns 0). Returns trainable parameters."""
        if cfg.get("role") == "teacher":
            self.teachers[adapter] = base
            return 0
        teacher = self.teachers.pop(adapter, None)
        if cfg.get("distill") and teacher is None:
            raise ValueError(f"session {adapter!r} distills, but no teacher was given for it")
        full = bool(cfg.get("full"))
        model = self._full_twin(base) if full else self._lora_twin(base, cfg)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=float(cfg["lr"]), weight_decay=float(cfg.get("weight_decay", 0.0)))
        kd = DistillConfig(float(cfg.get("temperature", 2.0)), float(cfg.get("kd_alpha", 0.0)),
                           int(cfg.get("vocab", 0))) if cfg.get("distill") else None
        self.sessions[adapter] = _Session(model, opt, full, teacher if kd else None, kd)
        return sum(p.numel() for p in params)

    @staticmethod
    def _lora_twin(base: torch.nn.Module, cfg: dict) -> torch.nn.Module:
        from peft import LoraConfig, get_peft_model

        shared = {id(t): t for t in [*base.parameters(), *base.buffers()]}
        twin = copy.deepcopy(base, shared)
        twin.set_attn_implementation("sdpa")
        names = {n.rsplit(".", 1)[-1] for n, m in twin.named_modules() if isinstance(m, torch.nn.Linear)}
        targets = [t for t in TARGETS if t in names]
        if not targets:
            raise ValueError(f"no LoRA target layers ({', '.join(TARGETS)}) in this model")
        rank = int(cfg["rank"])
        lcfg = LoraConfig(r=rank, lora_alpha=float(cfg.get("alpha") or 2 * rank), lora_dropout=0.0,
                          target_modules=targets, bias="none", task_type="CAUSAL_LM")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.get("seed", 0)))
            return get_peft_model(twin, lcfg)

    @staticmethod
    def _full_twin(base: torch.nn.Module) -> torch.nn.Module:
        """A copy owning every tensor (prepacked layers come back as plain Linear ones)."""
        twin = copy.deepcopy(base)
        twin.set_attn_implementation("sdpa")
        for p in twin.parameters():
            p.requires_grad_(True)
        return twin

    def micro(self, adapter: str, seqs: list[list[int]], loss_from: list[int], denom: int) -> float:
        """Forward and backward one micro-batch; gradients accumulate until apply().
        Returns the summed token loss; the gradient is of that sum over `denom`."""
        s = self.sessions[adapter]
        width = max(len(x) for x in seqs)
        ids = torch.tensor([x + [0] * (width - len(x)) for x in seqs], device=self.device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in seqs], device=self.device)
        labels = ids.clone()
        for row, (x, start) in enumerate(zip(seqs, loss_from)):
            labels[row, :start] = -100
            labels[row, len(x):] = -100
        logits = s.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        if s.teacher is not None:
            with torch.no_grad():  # right padding: causal attention keeps it out of the real rows
                teacher = s.teacher(input_ids=ids, use_cache=False).logits
            loss, _ = distill_loss(logits, teacher, labels, s.distill)
        else:
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(),
                                   ignore_index=-100, reduction="sum")
        (loss / max(denom, 1)).backward()
        return float(loss.detach())

    def apply(self, adapter: str) -> None:
        """One optimizer step with the accumulated gradients."""
        s = self.sessions[adapter]
        s.opt.step()
        s.opt.zero_grad(set_to_none=True)

    def save(self, adapter: str, path: str) -> None:
        """Adapter weights (peft format) and optimizer state into the directory `path`."""
        from safetensors.torch import save_model

        s = self.sessions[adapter]
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        if s.full:
            save_model(s.model, str(out / FULL_WEIGHTS))
        else:
            s.model.save_pretrained(str(out))
        torch.save(s.opt.state_dict(), out / "optimizer.pt")

    def load(self, adapter: str, path: str) -> None:
        """Restore what save() wrote, into a session begun with the same config."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file, load_model

        s = self.sessions[adapter]
        if s.full:
            load_model(s.model, str(Path(path) / FULL_WEIGHTS), device=str(self.device))
        else:
            set_peft_model_state_dict(s.model, load_file(str(Path(path) / "adapter_model.safetensors"),
                                                         device=str(self.device)))
        s.opt.load_state_dict(torch.load(Path(path) / "optimizer.pt", map_location=self.device))

    def export(self, adapter: str, path: str) -> None:
        """Save the trained adapter alone, in peft's format (adapter_config.json and
        adapter_model.safetensors), into the directory `path`: it is served over the base
        model's own weights (drivers/lora.py), never as a merged copy. A full session saves
        the whole model (save_pretrained: config and weights)."""
        s = self.sessions[adapter]
        Path(path).mkdir(parents=True, exist_ok=True)
        s.model.save_pretrained(path)

    def end(self, adapter: str) -> None:
        """Forget a session, its optimizer state and its teacher."""
        self.sessions.pop(adapter, None)
        self.teachers.pop(adapter, None)
