"""Model versions in the kernel: serving a stored version, the versions quantizing or pruning
make, and the operations on names and tags (create from a manifest, tag, remove, show).

A version whose weights are already loaded under another name (a tag of it, or a preset
that only changes defaults, a template or a system prompt) is served as a preset: a second
name over the same weights, KV pool and batches, so it costs no memory and any user who
sees it may load it. New weights in memory are an admin's to load.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmos.kernel.errors import FailedPrecondition, InvalidArgument, NotFound
from llmos.kernel.models import adapters, loading, manifest
from llmos.kernel.models.registry import BadRef, Version, canonical, is_digest, pruned_name
from llmos.kernel.models.store import ModelNotFound, ModelUnavailable, StoredAdapter
from llmos.kernel.text import TextCodec
from llmos.kernel.users.cred import ROOT
from llmos.syscalls.abi.spec import variant_name

HIDDEN = "(a source on the daemon's disk)"

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.models.loading import LoadedModel, Prepared
    from llmos.kernel.users.cred import Cred


@dataclass(frozen=True)
class Entry:
    """A stored version under one of its names, as listings show it."""

    ref: str
    owner: str        # the name's ("" = an admin's)
    version: Version
    size: int         # bytes of the blobs it runs on
    loaded: bool = False


def entries(k: "Kernel", cred: "Cred") -> list[Entry]:
    """Every stored name the caller may see, and whether a loaded model serves it."""
    if k.store is None:
        return []
    serving = {(m.name, m.digest) for m in k.models.values()}
    return [Entry(ref, owner, shown(cred, v), size, (ref, v.digest) in serving) for ref, owner, v, size in
            k.store.versions(cred.sees_model)]


def entry(k: "Kernel", cred: "Cred", ref: str, v: Version) -> Entry:
    name = canonical_name(ref) if not is_digest(ref) else ref
    m = k.models.get(name)
    return Entry(name, k.store.owner_of(name) or "" if not is_digest(ref) else v.owner, shown(cred, v),
                 k.store.registry.size(v), m is not None and m.digest == v.digest)


def shown(cred: "Cred", v: Version) -> Version:
    """What the caller may see of a version: only admins see paths on the daemon's disk."""
    if cred.admin or "source" not in v.lineage:
        return v
    return dataclasses.replace(v, lineage={**v.lineage, "source": HIDDEN})


def canonical_name(ref: str) -> str:
    """`NAME[:TAG]` spelled one way (`NAME` for `NAME:latest`); InvalidArgument naming the rule."""
    try:
        return canonical(ref)
    except BadRef as e:
        raise InvalidArgument(str(e), "name") from None


def visible(k: "Kernel", cred: "Cred", ref: str) -> Version:
    """The stored version `ref` names, if the caller may see its name; NotFound otherwise."""
    if k.store is None:
        raise FailedPrecondition("this kernel has no model store")
    if not is_digest(ref):
        canonical_name(ref)  # InvalidArgument naming the rule
    v = k.store.lookup(ref)
    if v is None or (not is_digest(ref) and not cred.sees_model(k.store.owner_of(ref) or "")):
        known = ", ".join(k.store.list(cred.sees_model)) or "none"
        raise NotFound(f"no model {ref[:160]!r} in the store (stored: {known})")
    return v


def derive(k: "Kernel", cred: "Cred", v: Version, ref: str, quantize: str, prune: float, heads: float,
           tag: bool = True) -> tuple[Version, str]:
    """v pruned and then quantized as asked, each a version made from the last (tagged with
    its default name when `tag`): the version and its name."""
    reg, made = k.store.registry, ref
    chain = reg.chain(v)
    if (prune or heads or quantize != "none") and any(u.is_adapter for u in chain):
        raise InvalidArgument(f"{ref!r} is a LoRA model: it cannot be quantized or pruned itself; "
                              "quantize or prune its base model instead")
    if prune or heads:
        if any(u.quantize != "none" for u in chain):
            raise InvalidArgument(f"{ref!r} has quantized weights: prune its unquantized version, then quantize")
        if any(u.prune or u.prune_heads for u in chain):
            raise InvalidArgument(f"{ref!r} is pruned already: prune its unpruned version")
        cred.check("load")
        v = reg.put("pruned", parent=v, made_from=made, prune=prune, prune_heads=heads)
        made = pruned_name(made, prune, heads)
        if tag:
            reg.tag(made, v)
    if quantize != "none":
        if any(u.quantize != "none" for u in reg.chain(v)):
            raise InvalidArgument(f"{ref!r} has quantized weights already: quantize its unquantized version")
        cred.check("load")
        v = reg.put("quantized", parent=v, made_from=made, quantize=quantize)
        made = variant_name(made, quantize)
        if tag:
            reg.tag(made, v)
    return v, made


def prepare_version(k: "Kernel", cred: "Cred", v: Version, name: str, dtype: str) -> "Prepared | LoadedModel":
    """The slow half of serving version v as `name`: a preset of weights already loaded,
    else (admins) its weights read, or a LoRA adapter over its base."""
    plan = k.store.plan(v)
    m = k.models.get(name)
    if m is not None:
        if m.digest and m.digest != v.digest:
            raise FailedPrecondition(f"model {name!r} is loaded as version {m.digest[7:19]}, not {v.short}; "
                                     "unload it first")
        return m
    target = next((t for t in k.models.values() if t.key == plan.key and t.key and not t.preset_of
                   and t.info.dtype == dtype), None)
    if target is not None:
        return loading.Prepared(name, target.info, None, None, target.source, 0.0, owner=v.owner, digest=v.digest,
                                defaults=plan.defaults, key=plan.key, preset_of=target.name)
    cred.check("load")
    source = str(v.lineage.get("source") or v.made_from or name)
    if plan.adapter is not None:
        _check_adapter_base(k, plan)
        prep = adapters.prepare(k, cred, StoredAdapter(plan.adapter, plan.adapter_base, plan.base_digest, v.owner),
                                name, dtype, None)
    else:
        prep = loading.prepare(k, plan.weights, name, dtype, plan.quantize, plan.prune, plan.prune_heads, source,
                               plan.defaults.template)
    if isinstance(prep, loading.Prepared):
        prep.digest, prep.defaults, prep.key, prep.owner = v.digest, plan.defaults, plan.key, v.owner
    return prep


def install_preset(k: "Kernel", prep: "Prepared") -> "LoadedModel":
    """The quick half of a preset: a name over a loaded model's weights, pool and batches."""
    t = k.model(prep.preset_of)
    codec = t.codec
    template = prep.defaults.template
    if template is not None and template != getattr(t.codec.tokenizer, "chat_template", None):
        tok = copy.copy(t.codec.tokenizer)
        tok.chat_template = template
        codec = TextCodec(tok, t.codec.eos, t.codec.vocab_size)
    m = loading.LoadedModel(name=prep.name, info=t.info, codec=codec, memory=t.memory, scheduler=t.scheduler,
                            source=t.source, base=t.pool, kv_salt=t.kv_salt, owner=prep.owner, adapter=t.adapter,
                            digest=prep.digest, defaults=prep.defaults, key=prep.key, preset_of=t.name)
    k.log(f"serving {m.name} (version {prep.digest[7:19]}) over {t.name}'s weights: no new memory")
    return m


def create(k: "Kernel", cred: "Cred", ref: str, text: str) -> Entry:
    """Build version `ref` from a manifest file's text and tag it; served at once when it is a
    preset of a loaded model."""
    name = canonical_name(ref)
    if k.store is None:
        raise FailedPrecondition("this kernel has no model store")
    try:
        mf = manifest.parse(text)
    except manifest.ManifestError as e:
        raise InvalidArgument(str(e), "manifest") from None
    _check_name_free(k, cred, name)
    try:
        parent = visible(k, cred, mf.source)
        made = canonical_name(mf.source) if not is_digest(mf.source) else mf.source
    except (NotFound, InvalidArgument):
        if not cred.admin:
            raise NotFound(f"`from`: no model {mf.source[:160]!r} in the store; build on a stored model "
                           "(only an admin may name a directory or a .gguf file on the daemon's disk)") from None
        try:
            parent, made = k.store.import_source(mf.source, log=k.log), mf.source
        except ModelNotFound as e:
            raise NotFound(f"`from`: {e}") from None
        except ModelUnavailable as e:
            raise FailedPrecondition(f"`from`: {e}") from None
    if mf.adapter:
        lora = visible(k, cred, mf.adapter)
        base = k.store.plan(lora)
        if not base.adapter or base.base_digest != k.store.plan(parent).base_digest or k.store.plan(parent).adapter:
            raise InvalidArgument(f"`adapter`: {mf.adapter!r} is not a LoRA model over the weights of {mf.source!r}")
        parent, made = lora, canonical_name(mf.adapter)
    from llmos.kernel.models.loading import check_prune, check_quantize
    check_prune(mf.prune, mf.prune_heads)
    v, made = derive(k, cred, parent, made, check_quantize(mf.quantize or "none"), mf.prune, mf.prune_heads,
                     tag=False)
    owner = "" if cred.admin else cred.user
    if mf.defaults.record() or owner != v.owner:
        v = k.store.registry.put(v.kind, parent=v, made_from=made, owner=owner, defaults=mf.defaults.record())
    k.store.registry.tag(name, v, owner)
    k.log(f"{cred.user} created {name} (version {v.short}, from {made})")
    try:
        prep = prepare_version(k, cred, v, name, "float32")
        if isinstance(prep, loading.Prepared) and (prep.preset_of or cred.admin):
            loading.install_model(k, prep)
    except Exception as e:  # noqa: BLE001 - new weights wait for an admin's `llmos load`
        k.log(f"{name} is stored but not loaded: {e}")
    return entry(k, cred, name, v)


def tag(k: "Kernel", cred: "Cred", src: str, dst: str) -> Entry:
    """Name version `src` again as `dst`, sharing its weights."""
    v = visible(k, cred, src)
    name = canonical_name(dst)
    _check_name_free(k, cred, name)
    k.store.registry.tag(name, v, "" if cred.admin else cred.user)
    k.log(f"{cred.user} tagged {name} as version {v.short} ({src})")
    return entry(k, cred, name, v)


def remove(k: "Kernel", cred: "Cred", ref: str) -> tuple[Version, int, int]:
    """Remove the tag `ref` (unloading it if idle); blobs go when nothing refers to them.
    Returns the version it named, versions removed and bytes freed."""
    name = canonical_name(ref)
    v = visible(k, cred, name)
    cred.check_owns(f"model {name!r}", k.store.owner_of(name) or "")
    _release(k, name)
    k.store.registry.untag(name)
    removed, freed = k.store.registry.collect({m.digest for m in k.models.values() if m.digest})
    k.log(f"{cred.user} removed {name} (version {v.short}); {removed} version(s) and {freed} bytes freed")
    return v, removed, freed


def show(k: "Kernel", cred: "Cred", ref: str) -> tuple[Entry, str]:
    """A version under the name asked for, and its manifest file."""
    v = shown(cred, visible(k, cred, ref))
    chain = [shown(cred, u) for u in k.store.registry.chain(v)]
    header = [f"{canonical_name(ref) if not is_digest(ref) else ref}: version {v.digest}", f"kind: {v.kind}",
              f"made from: {' <- '.join(u.made_from or str(u.lineage.get('source', '')) for u in chain)}"]
    if v.lineage:
        header.append("lineage: " + ", ".join(f"{a}={b}" for a, b in sorted(v.lineage.items())))
    source = v.made_from or str(v.lineage.get("source", ""))
    text = manifest.render(source, v.quantize, v.prune, v.prune_heads, manifest.Defaults.of(v.defaults), header)
    return entry(k, cred, ref, v), text


def restore(k: "Kernel", name: str, digest: str) -> str | None:
    """After a restart: serve the version a journaled process ran on. The name it is served
    under (`NAME@<digest>` when NAME now serves other weights), None if it cannot be."""
    m = k.models.get(name)
    if m is not None and (not m.digest or m.digest == digest):
        return name
    v = k.store.lookup(digest) if k.store is not None else None
    if v is None:
        return None
    served = name if m is None else f"{name}@{v.short}"
    if served not in k.models:
        try:
            loading.install_model(k, prepare_version(k, ROOT, v, served, "float32"))
        except Exception as e:  # noqa: BLE001 - recovery goes on; the process is ended with the reason
            k.log(f"cannot serve version {v.short} of {name} after the restart: {e}", "warning")
            return None
        k.log(f"serving version {v.short} as {served}: journaled processes ran on it")
    return served


def _check_name_free(k: "Kernel", cred: "Cred", name: str) -> None:
    """The name is free, or the caller's to change; and no live process runs on that tag."""
    held = k.store.owner_of(name)
    if held is not None:
        cred.check_owns(f"the name {name.partition(':')[0]!r}", held)
    _release(k, name)


def _release(k: "Kernel", name: str) -> None:
    """Before a tag changes or goes: refused while live processes run on it; unloaded if it
    is loaded and idle (unload_model refuses while LoRA models or presets run over it), so
    the tag's next load serves what it names then."""
    live = k.live(name)
    if live:
        raise FailedPrecondition(f"model {name!r} is in use by {live} live process(es); the tag can change "
                                 "once they end")
    if name in k.models:
        loading.unload_model(k, name)


def _check_adapter_base(k: "Kernel", plan) -> None:
    """A LoRA adapter runs only over the weights it was trained on."""
    base = k.models.get(plan.adapter_base)
    want = k.store.lookup(plan.base_digest) if plan.base_digest else None
    if base is not None and want is not None and base.key and base.key != k.store.plan(want).key:
        raise FailedPrecondition(f"{plan.adapter_base!r} is loaded with other weights than the LoRA adapter was "
                                 f"trained on (version {want.short}); unload it, and the adapter loads its own base")
