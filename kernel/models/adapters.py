"""LoRA models: adapters served over a loaded base model, in its KV pool and its batches.

To users a LoRA model (`smollm2-135m+mydata`) is a model of its own: listed, spawned,
forked, loaded and unloaded by name. Underneath, its LoadedModel shares the base model's KV
pool, scheduler and codec, so the base's step schedules its processes together with the
base's own and every other adapter's, and the driver runs them all in one forward pass,
each slice naming its adapter (drivers/lora.py: multi-LoRA serving, as in S-LoRA).

The prefix cache keeps them apart: each load of an adapter draws a fresh salt that seeds its
processes' page hashes, so pages computed under one adapter are never mapped by the base,
by another adapter, or by a later load of the same name with other weights. A fork keeps
its parent's model, hence its adapter and salt.

Stored adapters (kernel/models/store.py: peft files and llmos-adapter.json) load by name or
folder; a base that is not loaded is loaded first, from the source recorded at training.
A base model cannot be unloaded while LoRA models over it are loaded: unload those first.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from llmos.kernel.errors import FailedPrecondition, InvalidArgument
from llmos.kernel.models import loading
from llmos.kernel.models.store import StoredAdapter

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.models.loading import LoadedModel, Prepared
    from llmos.kernel.users.cred import Cred


def prepare(kernel: "Kernel", cred: "Cred", stored: StoredAdapter, name: str, dtype: str,
            quantize: str | None) -> "Prepared | LoadedModel":
    """The slow half of loading a LoRA model (any thread): the base's weights first if it is
    not loaded, then the adapter's. `dtype` applies to a base loaded here."""
    if quantize not in (None, "", "none"):
        raise InvalidArgument(f"{name!r} is a LoRA adapter over {stored.base!r}: it cannot be quantized itself")
    if name in kernel.models:
        return kernel.models[name]
    t0 = time.monotonic()
    base = kernel.models.get(stored.base)
    if base is not None and base.preset_of:  # a second name of the weights: run over them
        base = kernel.models[base.preset_of]
    if base is not None and base.adapter:
        raise InvalidArgument(f"{name!r} runs over {stored.base!r}, which is itself a LoRA model")
    needs = None
    if base is None:
        if not stored.base_source:
            raise FailedPrecondition(f"LoRA model {name!r} runs over {stored.base!r}, which is not loaded; "
                                     "load it first")
        prep = loading.prepare_model(kernel, cred, stored.base_source, stored.base, dtype, "none")
        needs = prep if isinstance(prep, loading.Prepared) else None
    base_name = base.name if base is not None else stored.base
    try:
        info = kernel.driver.load_adapter(base_name, name, str(stored.path))
    except Exception as e:
        if needs is not None:
            kernel.driver.unload(base_name)
        if isinstance(e, ValueError):
            raise InvalidArgument(f"cannot load the LoRA adapter {name!r} from {stored.path}: {e}") from None
        raise
    return loading.Prepared(name, info, None, None, str(stored.path), time.monotonic() - t0, base=base_name,
                            needs=needs, owner=stored.owner)


def install(kernel: "Kernel", prep: "Prepared") -> "LoadedModel":
    """The quick half (kernel thread): install the base if it came with the load, then give
    the LoRA model the base's pool, scheduler and codec, and a prefix-cache salt of its own."""
    if prep.needs is not None:
        loading.install_model(kernel, prep.needs)
    base = kernel.model(prep.base)
    m = loading.LoadedModel(name=prep.name, info=prep.info, codec=base.codec, memory=base.memory,
                            scheduler=base.scheduler, source=prep.source, base=base.name,
                            kv_salt=int.from_bytes(os.urandom(8), "little") | 1, owner=prep.owner, adapter=prep.name,
                            digest=prep.digest, defaults=prep.defaults, key=prep.key)
    kernel.log(f"loaded LoRA model {m.name} over {base.name} from {prep.source} in {prep.seconds:.1f}s "
               f"(rank {m.info.lora_rank}, {m.info.num_parameters / 1e6:.2f}M parameters); its processes share "
               f"{base.name}'s KV pool and batches")
    return m


def check_unload(kernel: "Kernel", name: str) -> None:
    """Refuse to unload a base model while LoRA models over it are loaded (naming them)."""
    loras = sorted(n for n, m in kernel.models.items() if m.base == name and m.adapter and not m.preset_of)
    presets = sorted(n for n, m in kernel.models.items() if m.preset_of == name)
    if loras or presets:
        what = [f"the base of loaded LoRA model(s) {', '.join(loras)}"] if loras else []
        what += [f"served as preset(s) {', '.join(presets)}"] if presets else []
        raise FailedPrecondition(f"model {name!r} is {' and '.join(what)}; unload those first")


def base_source(m: "LoadedModel") -> str:
    """Where a base model can be loaded from again after a restart ("" if nowhere: adopted)."""
    if m.source == "in-process":
        return ""
    path = Path(m.source).expanduser()
    return str(path.resolve()) if path.exists() else m.source
