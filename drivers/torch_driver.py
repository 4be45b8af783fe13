"""TorchDriver: what the CPU and CUDA drivers share, a transformers model run by torch."""
from __future__ import annotations

import dataclasses

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from llmos.drivers import attention, probe, quant, score
from llmos.drivers.driver import DeviceInfo, ModelInfo, StepInput, StepOutput, check_quantize
from llmos.drivers.runner import ModelRunner
from llmos.drivers.train import Trainer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}


class TorchDriver:
    """Loads transformers models onto one torch device, runs paged steps on them, and
    fine-tunes them (the Driver and TrainingDriver protocols of drivers/driver.py)."""

    kind = "torch"

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.runners: dict[str, ModelRunner] = {}
        self.adapters: dict[str, str] = {}  # LoRA adapter -> the model it is loaded over
        self.trainer = Trainer(device)
        attention.register()

    def describe(self) -> DeviceInfo:  # pragma: no cover - overridden
        raise NotImplementedError

    def load(self, name: str, path: str, dtype: str = "float32", quantize: str = "none",
             cache_dir: str | None = None) -> ModelInfo:
        """Load weights from a local transformers directory, quantizing them if asked; the
        device's measurements for serving them are cached in `cache_dir` (None: not kept)."""
        if dtype not in DTYPES:
            raise ValueError(f"unsupported dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        quantize = check_quantize(quantize)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], attn_implementation="sdpa")
        if quantize == "none":
            return self.adopt(name, model, cache_dir)
        nparams = sum(p.numel() for p in model.parameters())
        ratio = self._quantize(model, path, quantize)
        return dataclasses.replace(self.adopt(name, model, cache_dir), quantize=quantize, ppl_ratio=ratio, num_parameters=nparams)

    @staticmethod
    def _quantize(model: PreTrainedModel, path: str, mode: str) -> float:
        """Quantize in place, calibrated on one fixed text; the perplexity ratio on another."""
        quant.check_model(model, mode)
        tok = AutoTokenizer.from_pretrained(path)
        ids = tok(probe.PROBE_TEXT)["input_ids"]
        before = probe.perplexity(model, ids)
        quant.quantize_model(model, mode, calibration=tok(probe.CALIBRATION_TEXT)["input_ids"])
        return probe.perplexity(model, ids) / before

    def adopt(self, name: str, model: PreTrainedModel, cache_dir: str | None = None) -> ModelInfo:
        """Take an already-built model (on any device) and serve it under `name`."""
        model = model.to(self.device).eval()
        nparams = sum(p.numel() for p in model.parameters())  # before prepacking hides them
        kernels = self.prepare(model, cache_dir)
        model.set_attn_implementation(attention.ATTN_NAME)
        runner = ModelRunner(model, self.device)
        self.runners[name] = runner
        return dataclasses.replace(self._info(name, runner), num_parameters=nparams, kernels=kernels)

    def load_adapter(self, base: str, name: str, path: str) -> ModelInfo:
        """Serve the peft LoRA adapter at `path` over loaded model `base`, in its batches:
        slices whose `adapter` is `name` run under it (drivers/lora.py)."""
        if base not in self.runners:
            raise ValueError(f"the base model {base!r} of adapter {name!r} is not loaded")
        runner = self.runners[base]
        adapter = runner.lora.load(name, path)
        self.adapters[name] = base
        return dataclasses.replace(self._info(name, runner), num_parameters=adapter.num_parameters,
                                   weight_bytes=adapter.nbytes, base=base, lora_rank=adapter.rank)

    @staticmethod
    def _info(name: str, runner: ModelRunner) -> ModelInfo:
        model, cfg = runner.model, runner.model.config
        return ModelInfo(
            name=name, architecture=(cfg.architectures or [type(model).__name__])[0],
            num_layers=runner.num_layers, kv_heads=runner.kv_heads, head_dim=runner.head_dim,
            vocab_size=cfg.vocab_size, max_context=int(getattr(cfg, "max_position_embeddings", 2048)),
            dtype=str(runner.dtype).removeprefix("torch."), num_parameters=0,
            weight_bytes=quant.model_bytes(model))

    def prepare(self, model: PreTrainedModel, cache_dir: str | None = None) -> str:
        """Device-specific rewriting of a model about to be served (none by default); returns a
        line saying which kernels serve it ("" where there is no choice)."""
        return ""

    def alloc_kv(self, name: str, num_pages: int, page_size: int, swap_pages: int) -> int:
        return self.runners[name].alloc_kv(num_pages, page_size, swap_pages)

    def step(self, name: str, batch: StepInput) -> StepOutput:
        return self.runners[name].step(batch)

    def score(self, name: str, token_ids: list[int]) -> tuple[float, int]:
        """Summed next-token NLL of one window and how many tokens it predicts (drivers/score.py)."""
        base = self.adapters.get(name)
        runner = self.runners[base or name]
        with runner.lora.applied([(name if base else "", max(len(token_ids) - 1, 0))]):
            return score.window_nll(runner.model, self.device, token_ids)

    def unload(self, name: str) -> None:
        """Unload a model (with any adapters still over it) or one adapter."""
        if name in self.adapters:
            runner = self.runners.get(self.adapters.pop(name))
            if runner is not None:
                runner.lora.remove(name)
            return
        self.runners.pop(name, None)
        for adapter in [a for a, b in self.adapters.items() if b == name]:
            del self.adapters[adapter]
        self._empty_cache()

    def release(self) -> None:
        self.runners.clear()
        self.adapters.clear()
        self._empty_cache()

    def _empty_cache(self) -> None:
        pass

    # --- training (drivers/train.py): plain data in and out -------------------------------------
    def train_begin(self, name: str, adapter: str, cfg: dict) -> int:
        """Start LoRA training of `adapter` on loaded model `name`; returns trainable parameters."""
        return self.trainer.begin(self.runners[name].model, adapter, cfg)

    def train_micro(self, adapter: str, seqs: list[list[int]], loss_from: list[int], denom: int) -> float:
        return self.trainer.micro(adapter, seqs, loss_from, denom)

    def train_apply(self, adapter: str) -> None:
        self.trainer.apply(adapter)

    def train_save(self, adapter: str, path: str) -> None:
        self.trainer.save(adapter, path)

    def train_load(self, adapter: str, path: str) -> None:
        self.trainer.load(adapter, path)

    def train_export(self, adapter: str, path: str) -> None:
        self.trainer.export(adapter, path)

    def train_end(self, adapter: str) -> None:
        self.trainer.end(adapter)
