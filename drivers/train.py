"""LoRA fine-tuning on a loaded model (peft), driven in small units by the kernel.

Each training session trains a *twin* of the served model: new module objects that share
the served model's parameter tensors, with LoRA layers injected into the twin only and
plain SDPA attention. The served model's modules are never touched, so base-model
inference (paged attention, inference_mode) is unchanged while and after training.

Everything crossing the driver boundary is plain data: token id lists, floats, paths.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class _Session:
    model: torch.nn.Module  # the peft-wrapped twin
    opt: torch.optim.Optimizer


class Trainer:
    """LoRA training sessions on one device, keyed by adapter name."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sessions: dict[str, _Session] = {}

    def begin(self, base: torch.nn.Module, adapter: str, cfg: dict) -> int:
        """Start a session: rank, alpha, lr, seed, weight_decay in cfg. Returns trainable parameters."""
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
            model = get_peft_model(twin, lcfg)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=float(cfg["lr"]), weight_decay=float(cfg.get("weight_decay", 0.0)))
        self.sessions[adapter] = _Session(model, opt)
        return sum(p.numel() for p in params)

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
        s = self.sessions[adapter]
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        s.model.save_pretrained(str(out))
        torch.save(s.opt.state_dict(), out / "optimizer.pt")

    def load(self, adapter: str, path: str) -> None:
        """Restore what save() wrote, into a session begun with the same config."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        s = self.sessions[adapter]
        state = load_file(str(Path(path) / "adapter_model.safetensors"), device=str(self.device))
        set_peft_model_state_dict(s.model, state)
        s.opt.load_state_dict(torch.load(Path(path) / "optimizer.pt", map_location=self.device))

    def export(self, adapter: str, path: str) -> None:
        """Save the trained adapter alone, in peft's format (adapter_config.json and
        adapter_model.safetensors), into the directory `path`: it is served over the base
        model's own weights (drivers/lora.py), never as a merged copy."""
        s = self.sessions[adapter]
        Path(path).mkdir(parents=True, exist_ok=True)
        s.model.save_pretrained(path)

    def end(self, adapter: str) -> None:
        """Forget a session and its optimizer state."""
        self.sessions.pop(adapter, None)
