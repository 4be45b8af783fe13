"""Loading a model into the kernel: weights through the driver, a KV pool sized from memory,
and the scheduler and text codec that go with it."""
from __future__ import annotations

import time
import zlib
from pathlib import Path
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llmos.drivers import driver
from llmos.drivers.driver import PPL_TOLERANCE, ModelInfo
from llmos.kernel.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from llmos.kernel.memory import MemoryManager
from llmos.kernel.models import ModelNotFound, ModelUnavailable
from llmos.kernel.proc import Process
from llmos.kernel.sched import Scheduler
from llmos.kernel.text import TextCodec

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel, KernelConfig

MAX_TEMPERATURE = 100.0


@dataclass(eq=False)
class LoadedModel:
    """A model resident on the kernel's device with its own KV pool and scheduler; or a LoRA
    model, which shares its base model's pool, scheduler and codec (kernel/adapters.py)."""

    name: str
    info: ModelInfo
    codec: TextCodec
    memory: MemoryManager
    scheduler: Scheduler
    source: str = ""
    loaded_at: float = field(default_factory=time.time)
    kv_bytes: int = 0
    base: str = ""    # a LoRA model: the model whose KV pool and batches its processes share
    kv_salt: int = 0  # a LoRA model: its processes' prefix-cache namespace (their KV differs)

    @property
    def pool(self) -> str:
        """The model whose KV pool and steps serve this one's processes."""
        return self.base or self.name

    @property
    def adapter(self) -> str:
        """What a step's slices name to run under this model: "" for a base model."""
        return self.name if self.base else ""


def default_name(ref: str, quantize: str = "none") -> str:
    """A model's name when none is given: a path's last component, else the reference itself;
    a quantized copy is a separate model named with its mode, e.g. `smollm2-135m:int8`."""
    path = Path(ref).expanduser()
    if ref.startswith((".", "/", "~")) or path.exists():
        ref = path.stem if path.suffix == ".gguf" else path.name
    return variant_name(ref, quantize)


def variant_name(model: str, quantize: str = "none") -> str:
    """The name under which `model` quantized with `quantize` is served."""
    return model if quantize in ("", "none") else f"{model}:{quantize}"


def check_quantize(mode: str) -> str:
    try:
        return driver.check_quantize(mode)
    except ValueError as e:
        raise InvalidArgument(str(e)) from None


@dataclass
class Prepared:
    """Weights on the device and a tokenizer, not yet serving: the slow half of a load."""

    name: str
    info: ModelInfo
    tokenizer: object
    eos: int | list[int] | None
    source: str
    seconds: float
    base: str = ""                    # a LoRA model over this loaded model (kernel/adapters.py)
    needs: "Prepared | None" = None   # its base, prepared in the same load, to install first


def prepare(kernel: "Kernel", ref: str, name: str, dtype: str, quantize: str = "none") -> Prepared:
    """Resolve, convert if needed, and load weights. Safe off the kernel thread: it touches
    only the model store and the driver's loading, never the process table."""
    from transformers import AutoTokenizer, GenerationConfig

    try:
        path = kernel.store.resolve(ref, log=kernel.log)
    except ModelNotFound as e:
        raise NotFound(str(e)) from None
    except ModelUnavailable as e:
        raise Unavailable(str(e)) from None
    t0 = time.monotonic()
    try:
        info = kernel.driver.load(name, str(path), dtype, quantize)
    except ValueError as e:  # an unsupported dtype, or layers that cannot be quantized
        raise InvalidArgument(f"cannot load {ref}: {e}") from None
    tok = AutoTokenizer.from_pretrained(str(path))
    try:
        eos = GenerationConfig.from_pretrained(str(path)).eos_token_id
    except OSError:
        eos = None
    return Prepared(name, info, tok, eos, ref, time.monotonic() - t0)


def install(kernel: "Kernel", prep: Prepared) -> LoadedModel:
    """Give a prepared model its KV pool and scheduler (on the kernel thread)."""
    m = _install(kernel, prep.name, prep.info, prep.tokenizer, prep.eos, source=prep.source)
    info = prep.info
    mode = "" if info.quantize == "none" else f", {info.quantize} weights"
    kernel.log(f"loaded model {prep.name} from {prep.source} in {prep.seconds:.1f}s "
               f"({info.num_parameters / 1e6:.1f}M parameters{mode}, {m.memory.pool.num_pages} KV pages)")
    if info.ppl_ratio > PPL_TOLERANCE:
        kernel.log(f"warning: {prep.name}'s perplexity on the probe text is {info.ppl_ratio:.3f}x the unquantized "
                   f"model's, above the {PPL_TOLERANCE:.2f}x tolerance: expect worse output", "warning")
    elif info.ppl_ratio:
        kernel.log(f"{prep.name}: perplexity {info.ppl_ratio:.3f}x the unquantized model's on the probe text")
    return m


def adopt(kernel: "Kernel", name: str, model, tokenizer) -> LoadedModel:
    info = kernel.driver.adopt(name, model)
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    return _install(kernel, name, info, tokenizer, eos, source="in-process")


def _install(kernel: "Kernel", name: str, info: ModelInfo, tok, eos, source: str) -> LoadedModel:
    cfg = kernel.config
    eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    dtype_bytes = {"float32": 4, "float64": 8}.get(info.dtype, 2)
    page_bytes = info.kv_bytes_per_page(cfg.page_size, dtype_bytes)
    pages = cfg.kv_pages or max(1, cfg.kv_memory // page_bytes)
    swap = cfg.swap_pages if cfg.swap_pages is not None else pages
    kv_bytes = kernel.driver.alloc_kv(name, pages, cfg.page_size, swap)
    memory = MemoryManager(pages, cfg.page_size, swap, salt=zlib.crc32(name.encode()))
    return LoadedModel(name=name, info=info, codec=TextCodec(tok, eos_ids), memory=memory,
                       scheduler=Scheduler(cfg.sched, memory), source=source, kv_bytes=kv_bytes)


def check_request(m: LoadedModel, p: Process, cfg: "KernelConfig") -> None:
    """Refuse, with the limit named, what could never run."""
    s, stop = p.sampling, p.stop
    if not p.tokens and not p.interactive:
        raise InvalidArgument("the prompt is empty")
    if stop.max_tokens <= 0:
        raise InvalidArgument(f"max_tokens must be at least 1, got {stop.max_tokens}")
    if not 0 <= s.temperature <= MAX_TEMPERATURE:
        raise InvalidArgument(f"temperature must be in [0, {MAX_TEMPERATURE:g}], got {s.temperature}")
    if not 0 < s.top_p <= 1:
        raise InvalidArgument(f"top_p must be in (0, 1], got {s.top_p}")
    if s.top_k < 0:
        raise InvalidArgument(f"top_k must be 0 (off) or positive, got {s.top_k}")
    if not -20 <= p.priority <= 19:
        raise InvalidArgument(f"priority (nice) must be in [-20, 19], got {p.priority}")
    if len(stop.stop) > 16 or any(not x or len(x) > 256 for x in stop.stop):
        raise InvalidArgument("stop strings: at most 16, each 1 to 256 characters")
    bad = [t for t in p.tokens if not 0 <= t < m.info.vocab_size]
    if bad:
        raise InvalidArgument(f"token id {bad[0]} is outside the vocabulary [0, {m.info.vocab_size})")
    ctx = m.info.max_context
    if len(p.tokens) >= ctx:
        raise InvalidArgument(f"the prompt is {len(p.tokens)} tokens; the context window of {m.name} is {ctx}")
    if p.limits.max_pages is not None and p.limits.max_pages < 1:
        raise InvalidArgument(f"max_pages must be at least 1, got {p.limits.max_pages}")
    if p.limits.max_wall_s is not None and p.limits.max_wall_s <= 0:
        raise InvalidArgument(f"max_wall_s must be positive, got {p.limits.max_wall_s}")
    pool = m.memory.pool
    need = -(-min(len(p.tokens) + stop.max_tokens, ctx) // pool.page_size)
    if need > pool.num_pages:
        raise ResourceExhausted(f"the process needs up to {need} KV pages ({len(p.tokens)} prompt + "
                                f"{stop.max_tokens} new tokens), but the pool holds only {pool.num_pages} "
                                f"pages of {pool.page_size} tokens")
    if p.limits.max_pages is not None and -(-len(p.tokens) // pool.page_size) > p.limits.max_pages:
        raise ResourceExhausted(f"the prompt alone needs {-(-len(p.tokens) // pool.page_size)} KV pages; "
                                f"max_pages is {p.limits.max_pages}")
