"""Loading models into the kernel: weights through the driver, a KV pool sized from memory,
and the scheduler and text codec that go with them; and unloading them again.

A load has a slow half (`prepare`: convert, read weights, quantize), safe on any thread
because it touches only the model store and the driver's loading, and a quick half
(`install`: the KV pool and scheduler) on the kernel thread.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llmos.drivers import driver
from llmos.drivers.driver import PPL_TOLERANCE, QUANT_MODES, KVMemoryError, ModelInfo
from llmos.drivers.prune import MAX_FRACTION
from llmos.kernel.errors import (FailedPrecondition, InvalidArgument, KernelError, NotFound, ResourceExhausted,
                                 Unavailable)
from llmos.kernel.memory import MemoryManager
from llmos.kernel.models import adapters, versions
from llmos.kernel.models.manifest import Defaults
from llmos.kernel.models.pool_size import pool_size
from llmos.kernel.models.registry import is_digest, pruned_name
from llmos.kernel.models.store import ModelNotFound, ModelUnavailable
from llmos.kernel.sched import Scheduler
from llmos.kernel.text import TextCodec
from llmos.syscalls.abi.names import BadName, check_name
from llmos.syscalls.abi.spec import variant_name

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.users.cred import Cred


@dataclass(eq=False)
class LoadedModel:
    """A model resident on the kernel's device with its own KV pool and scheduler; or a LoRA
    model, which shares its base model's pool, scheduler and codec (kernel/models/adapters.py);
    or a preset, a second name for a loaded model's weights with defaults of its own."""

    name: str
    info: ModelInfo
    codec: TextCodec
    memory: MemoryManager
    scheduler: Scheduler
    source: str = ""
    loaded_at: float = field(default_factory=time.time)
    kv_bytes: int = 0
    base: str = ""    # a LoRA model or a preset: the model whose KV pool and batches its processes share
    kv_salt: int = 0  # a LoRA model: its processes' prefix-cache namespace (their KV differs)
    owner: str = ""   # who may see and remove it ("": an admin's, served to everyone)
    pool_source: str = ""  # what sized its KV pool (kernel/models/pool_size.py)
    adapter: str = ""      # what a step's slices name to run under this model: "" a base model's weights
    digest: str = ""       # the stored version it serves ("": a model adopted in-process)
    defaults: Defaults = field(default_factory=Defaults)  # what its processes get unless they say otherwise
    key: str = ""          # which weights these are (kernel/models/store.py Plan.key)
    preset_of: str = ""    # a preset: the loaded model whose weights (and adapter) it serves

    @property
    def pool(self) -> str:
        """The model whose KV pool and steps serve this one's processes."""
        return self.base or self.name

    @property
    def driver_name(self) -> str:
        """The name the driver holds these weights under."""
        return self.adapter or self.pool


@dataclass
class Prepared:
    """Weights on the device and a tokenizer, not yet serving: the slow half of a load."""

    name: str
    info: ModelInfo
    tokenizer: object
    eos: int | list[int] | None
    source: str
    seconds: float
    base: str = ""                    # a LoRA model over this loaded model (kernel/models/adapters.py)
    needs: "Prepared | None" = None   # its base, prepared in the same load, to install first
    owner: str = ""
    digest: str = ""
    defaults: Defaults = field(default_factory=Defaults)
    key: str = ""
    preset_of: str = ""               # a preset of this loaded model: no weights read


def default_name(ref: str, quantize: str = "none", prune: float = 0.0, prune_heads: float = 0.0) -> str:
    """A model's name when none is given: a path's last component, a hub id's name (after the
    org/), else the reference itself; a pruned copy is a model of its own named with its
    fractions (`smollm2-135m-pruned0.25`, `-pruned0.25-heads0.33`), and a quantized copy is
    named with its mode after that, e.g. `smollm2-135m:int8`, `smollm2-135m-pruned0.25:int8`."""
    path = Path(ref).expanduser()
    if ref.startswith((".", "/", "~")) or path.exists():
        ref = path.stem if path.suffix == ".gguf" else path.name
    elif ref.count("/") == 1:
        ref = ref.partition("/")[2]
    if prune or prune_heads:
        ref = pruned_name(ref, prune, prune_heads)
    return variant_name(ref, quantize)


def check_prune(prune: float, prune_heads: float) -> None:
    """InvalidArgument naming the limit for a pruning fraction out of range (drivers/prune.py)."""
    for what, v in (("prune", prune), ("prune_heads", prune_heads)):
        if not 0.0 <= v <= MAX_FRACTION:  # NaN fails too
            raise InvalidArgument(f"{what} (the fraction of {'MLP channels' if what == 'prune' else 'attention heads'}"
                                  f" to remove) must be in [0, {MAX_FRACTION}], got {v:g}", what)


def check_quantize(mode: str) -> str:
    try:
        return driver.check_quantize(mode)
    except ValueError as e:
        raise InvalidArgument(str(e)) from None


# --- the kernel's model operations -------------------------------------------------------------------
def prepare_model(k: "Kernel", cred: "Cred", ref: str, name: str | None = None, dtype: str = "float32",
                  quantize: str | None = None, prune: float = 0.0,
                  prune_heads: float = 0.0) -> "Prepared | LoadedModel":
    """The slow half of a load, callable from any thread: a stored version by NAME[:TAG] (or
    digest), else a source imported as a base version and tagged with its default name; any
    quantization or pruning asked for is a version of its own. Returns the loaded model itself
    when the name is already serving. Only an admin may read new weights into memory."""
    if k.store is None:
        raise FailedPrecondition("this kernel has no model store to load from")
    check_prune(prune, prune_heads)
    with k.store.registry.importing():  # nothing it writes is collected before its tag
        return _prepare(k, cred, ref, name, dtype, quantize, prune, prune_heads)


def _prepare(k: "Kernel", cred: "Cred", ref: str, name: str | None, dtype: str, quantize: str | None, prune: float,
             prune_heads: float) -> "Prepared | LoadedModel":
    serving, tags = name, []  # tags a source gets once it has loaded
    try:
        if name:
            name = serving = versions.canonical_name(name)
        stored = k.store.lookup(ref) if ref else None
        if stored is not None and not cred.sees_model(k.store.owner_of(ref) or ""):
            stored = None  # another user's name does not exist for this caller
        made = versions.canonical_name(ref) if stored is not None and not is_digest(ref) else ref
        if stored is None:
            cred.check("load")  # a source on the daemon's disk or the hub
            folder = k.store.adapter(ref)
            if folder is not None:  # a LoRA adapter folder of an older llmos, served over its base
                if prune or prune_heads:
                    raise InvalidArgument(f"{ref!r} is a LoRA model: prune its base model instead", "prune")
                return adapters.prepare(k, cred, folder, check_name("model name", name or default_name(ref)), dtype,
                                        quantize)
            quantize = k.config.quantize if quantize is None else quantize
            early = name or default_name(ref, check_quantize(quantize), prune, prune_heads)
            if early in k.models:
                return k.models[early]
            try:
                stored = k.store.import_source(ref, log=k.log)
            except ModelNotFound as e:
                raise NotFound(str(e)) from None
            except ModelUnavailable as e:
                raise Unavailable(str(e)) from None
            made = default_name(ref)
            tags.append((made, stored))
        v, made = versions.derive(k, cred, stored, made, check_quantize(quantize or "none"), prune, prune_heads,
                                  tag=not tags)
        serving = name or made
        tags += [(made, v)] if tags and made != tags[0][0] else []
        prep = versions.prepare_version(k, cred, v, serving, dtype)
        if name and name != made and cred.admin and name not in k.models:
            tags.append((name, v))  # --name names the stored version too
        for ref_, version in tags:
            k.store.registry.tag(ref_, version)
        return prep
    except KernelError:
        raise
    except BadName as e:
        raise InvalidArgument(f"{e}; name the model with --name", "name") from None
    except Exception as e:  # noqa: BLE001 - unreadable: a corrupt config, weights or tokenizer, a bad path
        if serving and serving not in k.models:
            k.driver.unload(serving)  # the weights it read before failing
        raise InvalidArgument(f"cannot load the model {ref[:200]!r}: {type(e).__name__}: "
                              f"{' '.join(str(e).split())[:500]}") from None


def install_model(k: "Kernel", prep: "Prepared | LoadedModel") -> LoadedModel:
    """The quick half (kernel thread): a KV pool and a scheduler for a prepared model."""
    if isinstance(prep, LoadedModel):
        return prep
    if prep.name not in k.models:
        k.models[prep.name] = versions.install_preset(k, prep) if prep.preset_of else \
            (adapters.install if prep.base else install)(k, prep)
    return k.models[prep.name]


def unload_model(k: "Kernel", name: str) -> None:
    """Unload a model no live process runs on (and no LoRA model runs over)."""
    k.model(name)  # NotFound names what is loaded
    live = k.live(name)
    if live:
        raise FailedPrecondition(f"model {name!r} is in use by {live} live process(es)")
    adapters.check_unload(k, name)
    if not k.models[name].preset_of:  # a preset's weights are its target's
        k.driver.unload(name)
    del k.models[name]
    k.log(f"unloaded model {name}")


def not_loaded(k: "Kernel", name: str, sees=lambda owner: True) -> NotFound:
    """NotFound naming what is loaded (what `sees` lets the caller see), with a hint for an
    unloaded quantized copy."""
    loaded = ", ".join(sorted(n for n, m in k.models.items() if sees(m.owner))) or "none"
    base, _, mode = name.rpartition(":")
    hint = f"; load it with `llmos load {base} --quantize {mode}`" if base and mode in QUANT_MODES else ""
    return NotFound(f"model {name!r} is not loaded (loaded: {loaded}){hint}")


# --- the halves of a load ----------------------------------------------------------------------------
def prepare(k: "Kernel", path: Path, name: str, dtype: str, quantize: str = "none", prune: float = 0.0,
            prune_heads: float = 0.0, source: str = "", template: str | None = None) -> Prepared:
    """Load the weights in the folder `path`, pruned and quantized if asked, and its tokenizer."""
    from transformers import AutoTokenizer, GenerationConfig

    t0 = time.monotonic()
    try:
        info = k.driver.load(name, str(path), dtype, quantize, cache_dir=str(k.store.cache_of(path)),
                             prune=prune, prune_heads=prune_heads)
    except ValueError as e:  # an unsupported dtype or architecture, or layers that cannot be quantized or pruned
        raise InvalidArgument(f"cannot load {source or name}: {e}") from None
    tok = AutoTokenizer.from_pretrained(str(path))
    if template is not None:
        tok.chat_template = template
    try:
        eos = GenerationConfig.from_pretrained(str(path)).eos_token_id
    except OSError:
        eos = None
    return Prepared(name, info, tok, eos, source or str(path), time.monotonic() - t0)


def install(k: "Kernel", prep: Prepared) -> LoadedModel:
    """Give a prepared model its KV pool and scheduler (on the kernel thread)."""
    m = _install(k, prep.name, prep.info, prep.tokenizer, prep.eos, source=prep.source)
    m.digest, m.defaults, m.key, m.owner = prep.digest, prep.defaults, prep.key, prep.owner
    info = prep.info
    mode = "" if info.quantize == "none" else f", {info.quantize} weights"
    k.log(f"loaded model {prep.name} from {prep.source} in {prep.seconds:.1f}s "
          f"({info.num_parameters / 1e6:.1f}M parameters{mode}, {m.memory.pool.num_pages} KV pages sized by "
          f"{m.pool_source}, {m.memory.swap.num_slots} swap pages)")
    if info.pruned or info.pruned_heads:
        k.log(f"{prep.name}: pruned {info.pruned:g} of the MLP channels and {info.pruned_heads:g} of the heads "
              f"(drivers/prune.py): perplexity {info.prune_ppl_ratio:.3f}x the unpruned model's on the probe text")
    if info.ppl_ratio > PPL_TOLERANCE:
        k.log(f"warning: {prep.name}'s perplexity on the probe text is {info.ppl_ratio:.3f}x the unquantized "
              f"model's, above the {PPL_TOLERANCE:.2f}x tolerance: expect worse output", "warning")
    elif info.ppl_ratio:
        k.log(f"{prep.name}: perplexity {info.ppl_ratio:.3f}x the unquantized model's on the probe text")
    return m


def adopt(k: "Kernel", name: str, model, tokenizer) -> LoadedModel:
    """Serve an already-built transformers model (tests and in-process use)."""
    info = k.driver.adopt(name, model)
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    k.models[name] = _install(k, name, info, tokenizer, eos, source="in-process")
    return k.models[name]


def _install(k: "Kernel", name: str, info: ModelInfo, tok, eos, source: str) -> LoadedModel:
    cfg = k.config
    eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    dtype_bytes = {"float32": 4, "float64": 8}.get(info.dtype, 2)
    page_bytes = info.kv_bytes_per_page(cfg.page_size, dtype_bytes)
    try:  # the weights are on the device now: a pool that cannot be had must not leave them there
        size = pool_size(page_bytes, k.driver.kv_budget(), cfg.kv_pages, cfg.kv_memory, cfg.swap_pages,
                         cfg.swap_memory)
        kv_bytes = k.driver.alloc_kv(name, size.pages, cfg.page_size, size.swap_pages)
    except BaseException as e:
        k.driver.unload(name)
        if isinstance(e, KVMemoryError):
            raise ResourceExhausted(f"cannot serve model {name!r}: {e}; its weights are unloaded") from None
        raise
    memory = MemoryManager(size.pages, cfg.page_size, size.swap_pages, salt=zlib.crc32(name.encode()))
    return LoadedModel(name=name, info=info, codec=TextCodec(tok, eos_ids, info.vocab_size), memory=memory,
                       scheduler=Scheduler(cfg.sched, memory, info.max_context), source=source, kv_bytes=kv_bytes,
                       pool_source=size.source)
