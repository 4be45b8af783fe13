"""TorchDriver: what the CPU and CUDA drivers share, a transformers model run by torch."""
from __future__ import annotations

import dataclasses

import psutil
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from llmos.drivers import attention, probe, quant, score
from llmos.drivers.driver import (SWAP_HOST_SHARE, DeviceInfo, KVBudget, KVMemoryError, ModelInfo, StepInput,
                                  StepOutput, check_quantize)
from llmos.drivers.prune import prune_loaded
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
             cache_dir: str | None = None, prune: float = 0.0, prune_heads: float = 0.0) -> ModelInfo:
        """Load weights from a local transformers directory, pruning (drivers/prune.py) and then
        quantizing them if asked; the device's measurements for serving them are cached in
        `cache_dir` (None: not kept)."""
        if dtype not in DTYPES:
            raise ValueError(f"unsupported dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        quantize = check_quantize(quantize)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], attn_implementation="sdpa")
        pruned = {}
        if prune or prune_heads:
            _, ratio = prune_loaded(model, AutoTokenizer.from_pretrained(path), prune, prune_heads)
            pruned = {"pruned": prune, "pruned_heads": prune_heads, "prune_ppl_ratio": ratio}
        if quantize == "none":
            return dataclasses.replace(self.adopt(name, model, cache_dir), **pruned)
        nparams = sum(p.numel() for p in model.parameters())
        ratio = self._quantize(model, path, quantize)
        return dataclasses.replace(self.adopt(name, model, cache_dir), quantize=quantize, ppl_ratio=ratio,
                                   num_parameters=nparams, **pruned)

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
        kernels = "; ".join(part for part in (kernels, self.compile_decode(runner, cache_dir)) if part)
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

    def compile_decode(self, runner: ModelRunner, cache_dir: str | None = None) -> str:
        """Compile the runner's decode steps where the device can (none by default); returns a
        line for the kernels line ("" where there is no choice)."""
        return ""

    def free_memory(self) -> int:  # pragma: no cover - overridden
        """Bytes of device memory free now, for a KV pool."""
        raise NotImplementedError

    def kv_budget(self) -> KVBudget:
        """No default pool (the kernel's applies); swap within SWAP_HOST_SHARE of host RAM for
        all pools together."""
        return KVBudget(pool=None, swap=self.swap_budget())

    def swap_budget(self) -> int:
        held = sum(r.swap_bytes() for r in self.runners.values())
        return max(0, int(psutil.virtual_memory().total * SWAP_HOST_SHARE) - held)

    def alloc_kv(self, name: str, num_pages: int, page_size: int, swap_pages: int) -> int:
        """The pool and its swap, refused (KVMemoryError) before allocating when they do not fit
        in the memory free, or when the allocation fails."""
        runner = self.runners[name]
        page = runner.kv_bytes_per_page(page_size)
        pool, swap = num_pages * page, swap_pages * page
        asked = f"a KV pool of {num_pages} pages ({pool} bytes) with {swap_pages} swap pages ({swap} bytes)"
        problem = self._kv_fits(pool, swap)
        if problem:
            raise KVMemoryError(f"{asked} does not fit on {self.device}: {problem}")
        try:
            return runner.alloc_kv(num_pages, page_size, swap_pages)
        except RuntimeError as e:  # torch.OutOfMemoryError, and the CPU allocator's RuntimeError
            runner.free_kv()
            if not isinstance(e, torch.OutOfMemoryError) and "allocate memory" not in str(e):
                raise
            raise KVMemoryError(f"{asked} could not be allocated on {self.device} "
                                f"({self.free_memory()} bytes free): {' '.join(str(e).split())[:300]}") from None

    def _kv_fits(self, pool: int, swap: int) -> str:
        """Why a pool and swap of these sizes cannot be allocated now ("" if they can): the pool
        in device memory, the swap in host memory; the CPU's are the same memory."""
        host = psutil.virtual_memory().available
        if self.device.type == "cpu":
            return f"{pool + swap} bytes asked, {host} bytes of host memory available" if pool + swap > host else ""
        free = self.free_memory()
        if pool > free:
            return f"the pool needs {pool} bytes, the device has {free} bytes free"
        return f"the swap needs {swap} bytes, the host has {host} bytes available" if swap > host else ""

    def step(self, name: str, batch: StepInput) -> StepOutput:
        return self.runners[name].step(batch)

    def read_pages(self, name: str, pages: list[int]) -> bytes:
        return self.runners[name].read_pages(pages)

    def write_pages(self, name: str, pages: list[int], kv: bytes) -> None:
        self.runners[name].write_pages(pages, kv)

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
