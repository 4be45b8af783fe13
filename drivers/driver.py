"""The driver interface: what the kernel asks of a device.

Everything that crosses it is plain data (ints, floats, strings, lists), so a driver can
live in another process or on another machine behind a msgpack or RPC transport.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from llmos.syscalls.abi.spec import SamplingParams


@dataclass
class SeqSlice:
    """One process's share of a step: the new tokens to run and where their KV lives."""

    seq_id: int
    token_ids: list[int]
    start_pos: int  # sequence position of token_ids[0]
    page_table: list[int]
    sample: bool  # whether to sample a token after the last of token_ids
    sampling: SamplingParams = field(default_factory=SamplingParams)
    adapter: str = ""  # the LoRA adapter these tokens run under (its model name); "" = the base model
    grammar: object | None = None  # a sampling slice's GrammarState (drivers/grammar_state.py): its mask
    # Proposals to verify: the last len(draft) of token_ids. Each row samples; the driver keeps
    # the proposals while each equals its row's draw, then that row's own token (drivers/sampler.py accept).
    draft: list[int] = field(default_factory=list)


@dataclass
class StepInput:
    """One forward pass: page moves to apply first, then the packed slices."""

    seqs: list[SeqSlice]
    moves: list[tuple[str, int, int]] = field(default_factory=list)


@dataclass
class StepOutput:
    """What a forward pass gives back: the sampled token of each slice that asked for one, and,
    for slices whose sampling asked, (log-probability, [(token, log-probability)] of the top
    alternatives), of the logits after any mask and before temperature."""

    tokens: dict[int, int] = field(default_factory=dict)
    logprobs: dict[int, tuple[float, list[tuple[int, float]]]] = field(default_factory=dict)
    grammar_ended: dict[int, str] = field(default_factory=dict)  # slices no token could continue: why
    # A slice with a draft: the proposals it kept, which come before its entry in tokens (and their logprobs).
    accepted: dict[int, list[int]] = field(default_factory=dict)
    accepted_logprobs: dict[int, list[tuple[float, list[tuple[int, float]]]]] = field(default_factory=dict)


@dataclass
class DeviceInfo:
    """Telemetry of one device."""

    name: str
    kind: str  # "cpu" | "cuda"
    index: int
    total_memory: int
    free_memory: int
    utilization: float | None = None  # percent
    temperature: float | None = None  # degrees C
    threads: int | None = None
    telemetry_error: str = ""  # why utilization or temperature are unknown ("" when they are read)
    node: str = ""  # the machine it is on, in a cluster ("" = the daemon's own)


SWAP_HOST_SHARE = 0.25  # the host swap of all of a driver's KV pools together: at most this share of host RAM


@dataclass
class KVBudget:
    """How much memory a new model's KV may take on a device now (Driver.kv_budget), in bytes."""

    pool: int | None  # an unsized pool takes this much; None: the device sets no default (the kernel's applies)
    swap: int         # its host swap space takes at most this much


class KVMemoryError(MemoryError):
    """A KV pool or its swap that the device cannot hold; the message names the sizes asked
    and the memory free."""


QUANT_MODES = ("none", "int8", "int4")
PPL_TOLERANCE = 1.03  # a quantized model's perplexity may exceed its original's by 3% at most


class QuantizeError(ValueError):
    """A model or mode that cannot be quantized; the message names what is unsupported."""


def score_windows(ids: list[int], window: int) -> list[list[int]]:
    """How a document is cut for Driver.score: windows of window + 1 tokens overlapping by one,
    so every token but the first is predicted exactly once, the context reset at each window."""
    return [ids[s:s + window + 1] for s in range(0, len(ids) - 1, window)]


def check_quantize(mode: str) -> str:
    """The mode, normalized ("" is "none"); QuantizeError names the supported ones."""
    mode = (mode or "none").lower()
    if mode not in QUANT_MODES:
        raise QuantizeError(f"unknown quantization mode {mode!r}; supported: {', '.join(QUANT_MODES)}")
    return mode


@dataclass
class ModelInfo:
    """What the kernel needs to know about a loaded model."""

    name: str
    architecture: str
    num_layers: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_context: int
    dtype: str
    num_parameters: int
    weight_bytes: int
    quantize: str = "none"
    # Perplexity on a fixed probe text, quantized over full precision (0: not measured).
    ppl_ratio: float = 0.0
    base: str = ""     # a LoRA adapter: the model it runs over (its parameters are the adapter's)
    lora_rank: int = 0
    kernels: str = ""  # which GEMM kernels serve it, and why (drivers/choice.py); "": no choice made
    pruned: float = 0.0        # the fraction of MLP channels removed at load (drivers/prune.py)
    pruned_heads: float = 0.0  # the fraction of attention heads asked removed at load
    prune_ppl_ratio: float = 0.0  # probe-text perplexity, pruned over unpruned (0: not pruned)

    def kv_bytes_per_page(self, page_size: int, dtype_bytes: int) -> int:
        return 2 * self.num_layers * page_size * self.kv_heads * self.head_dim * dtype_bytes


class Driver(Protocol):
    """A device: describe it, load weights, size and allocate the KV pool, run steps, score
    text, release."""

    kind: str

    def describe(self) -> DeviceInfo: ...

    def load(self, name: str, path: str, dtype: str, quantize: str = "none",
             cache_dir: str | None = None, prune: float = 0.0, prune_heads: float = 0.0) -> ModelInfo: ...

    def load_adapter(self, base: str, name: str, path: str) -> ModelInfo: ...

    def kv_budget(self) -> KVBudget: ...  # asked once a model's weights are loaded: they are not free

    # The pool's bytes; KVMemoryError when the pool or its swap does not fit (nothing is kept then).
    def alloc_kv(self, name: str, num_pages: int, page_size: int, swap_pages: int) -> int: ...

    def step(self, name: str, batch: StepInput) -> StepOutput: ...

    # The KV of these pages of the pool, every layer, keys and values, as opaque bytes to write into
    # another pool of the same model (a migration); the same number of bytes for every page.
    def read_pages(self, name: str, pages: list[int]) -> bytes: ...

    def write_pages(self, name: str, pages: list[int], kv: bytes) -> None: ...  # ValueError if kv does not fit

    def score(self, name: str, token_ids: list[int]) -> tuple[float, int]: ...

    def unload(self, name: str) -> None: ...  # a model or an adapter

    def release(self) -> None: ...


@runtime_checkable
class TrainingDriver(Protocol):
    """A driver that can also fine-tune: LoRA training sessions keyed by adapter name, in
    small units (one micro-batch each) that the kernel time-slices with its steps."""

    def train_begin(self, name: str, adapter: str, cfg: dict) -> int: ...

    def train_micro(self, adapter: str, seqs: list[list[int]], loss_from: list[int], denom: int) -> float: ...

    def train_apply(self, adapter: str) -> None: ...

    def train_save(self, adapter: str, path: str) -> None: ...

    def train_load(self, adapter: str, path: str) -> None: ...

    def train_export(self, adapter: str, path: str) -> None: ...

    def train_end(self, adapter: str) -> None: ...
