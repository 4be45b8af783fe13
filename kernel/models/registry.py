"""Model versions: content-addressed blobs, one manifest per version, and NAME:TAG tags.

The store keeps every weight, config and tokenizer file once, as a blob named by its sha256
(`blobs/sha256-<hex>`). A version is a manifest (`manifests/<hex>.json`, named by the
sha256 of its canonical JSON): the files of its own, the version it was made from (its
parent), how it changes that parent (quantize, prune, a LoRA adapter's files), the defaults
its processes get, its lineage (where it came from, a fine-tune's dataset digest,
hyperparameters and final loss), its owner and when it was made. A quantized, pruned or
preset version holds no weights of its own: it is its parent's blobs read differently, so
versions that share a base share its bytes.

Tags (`tags/<name>.json`) map a model name's tags to version digests, and record who owns
the name (the first user to tag it). `NAME` means `NAME:latest`. A version's files are
assembled for transformers as a folder of hard links (`snapshots/<key>/`): no copy, no
symbolic link. Nothing is removed while a tag, a child version or a loaded model refers to
it (`collect`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmos.syscalls.abi.names import check_name

LATEST = "latest"
DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TAG_RULE = "1 to 64 ASCII letters, digits and '-_.', beginning with a letter or a digit"
KINDS = ("base", "lora", "quantized", "pruned", "distilled", "fine-tune")
WEIGHT_SUFFIXES = (".json", ".safetensors", ".model", ".txt", ".jinja", ".tiktoken")
MAX_CHAIN = 32  # versions made from versions: a bound, not a design limit


class BadRef(ValueError):
    """A model reference outside the NAME[:TAG] grammar; the message quotes the rule."""


def split_ref(ref: str) -> tuple[str, str]:
    """`NAME[:TAG]` → (NAME, TAG), TAG "latest" when not given; BadRef naming the rule."""
    name, sep, tag = ref.partition(":")
    try:
        check_name("model name", name)
    except ValueError as e:
        raise BadRef(str(e)) from None
    if sep and not TAG.fullmatch(tag):
        raise BadRef(f"tag {tag[:80]!r} of model {name!r} is not a valid tag: use {TAG_RULE}")
    return name, tag or LATEST


def canonical(ref: str) -> str:
    """The one spelling of a reference: `NAME` for `NAME:latest`, else `NAME:TAG`."""
    name, tag = split_ref(ref)
    return name if tag == LATEST else f"{name}:{tag}"


def pruned_name(ref: str, prune: float, heads: float) -> str:
    """The name a pruned copy of `ref` goes by: `NAME-pruned0.25[-heads0.33][:TAG]`."""
    name, sep, tag = ref.partition(":")
    return name + "-pruned" + (f"{prune:g}" if prune else "") + (f"-heads{heads:g}" if heads else "") + sep + tag


def is_digest(ref: str) -> bool:
    return isinstance(ref, str) and DIGEST.fullmatch(ref) is not None


@dataclass(frozen=True)
class Version:
    """One version of a model: its manifest, and the digest that names it."""

    digest: str
    kind: str
    files: dict = field(default_factory=dict)     # its own files: name -> blob digest
    parent: str = ""                               # the digest of the version it was made from
    made_from: str = ""                            # that version's name when it was made (for people)
    quantize: str = "none"
    prune: float = 0.0
    prune_heads: float = 0.0
    defaults: dict = field(default_factory=dict)   # what its processes get unless they say otherwise
    lineage: dict = field(default_factory=dict)    # its source; a fine-tune's data, hyperparameters, loss
    owner: str = ""                                # "" = an admin's, served to everyone
    created: float = 0.0

    @property
    def short(self) -> str:
        return self.digest.removeprefix("sha256:")[:12]

    @property
    def is_adapter(self) -> bool:
        return "adapter_config.json" in self.files


def _record(v: Version) -> dict:
    d = asdict(v)
    del d["digest"]
    return d


class Registry:
    """Blobs, manifests, tags and snapshots under one folder of the model store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("blobs", "manifests", "tags", "snapshots"):
            (root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
            if (root / sub).is_symlink():
                raise ValueError(f"the model store holds a symbolic link at {sub}; llmos never follows links there")
        self._lock = threading.RLock()  # loads prepare off the kernel thread
        self._imports: list[float] = []  # when each import still in flight began (collect spares its files)

    # --- blobs ------------------------------------------------------------------------------------
    def blob(self, digest: str) -> Path:
        m = DIGEST.fullmatch(digest)
        if m is None:
            raise ValueError(f"not a blob digest: {digest[:80]!r}")
        return self.root / "blobs" / f"sha256-{m.group(1)}"

    def ingest(self, folder: Path, move: bool = False) -> dict[str, str]:
        """Every weight, config and tokenizer file at the top of `folder` as a blob; their
        names and digests. `move` takes files the store made itself without copying them."""
        files = {}
        for f in sorted(folder.iterdir()):
            if f.is_symlink() or not f.is_file():
                continue
            if not (f.suffix in WEIGHT_SUFFIXES or f.name.startswith("tokenizer")) or f.name.startswith("."):
                continue
            digest = "sha256:" + _sha256(f)
            dest = self.blob(digest)
            with self._lock:
                if dest.exists():
                    os.utime(dest)  # in use again: newer than any import in flight began
                else:
                    tmp = dest.with_name(dest.name + f".{os.getpid()}.partial")
                    if move:
                        f.replace(tmp)
                    else:
                        shutil.copyfile(f, tmp)
                    tmp.chmod(0o600)
                    tmp.replace(dest)
            files[f.name] = digest
        return files

    def snapshot(self, files: dict[str, str]) -> Path:
        """A folder holding `files` under their names, hard-linked to their blobs."""
        key = self.snapshot_key(files)
        path = self.root / "snapshots" / key
        if path.is_dir() and not path.is_symlink():
            return path
        with self._lock:
            tmp = path.with_name(key + f".{os.getpid()}.partial")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(mode=0o700)
            for name, digest in files.items():
                try:
                    os.link(self.blob(digest), tmp / name)
                except OSError:  # a store on a filesystem without hard links
                    shutil.copyfile(self.blob(digest), tmp / name)
            if path.exists():
                shutil.rmtree(tmp)
            else:
                tmp.rename(path)
        return path

    # --- manifests --------------------------------------------------------------------------------
    def put(self, kind: str, files: dict | None = None, parent: "Version | None" = None, made_from: str = "",
            owner: str = "", **fields) -> Version:
        """A new version (its manifest written once; the same content is the same version)."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        v = Version("", kind, dict(files or {}), parent.digest if parent else "", made_from, owner=owner,
                    created=time.time(), **fields)
        content = {k: x for k, x in _record(v).items() if k != "created"}  # the same content, the same version
        digest = "sha256:" + hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":"))
                                            .encode()).hexdigest()
        path = self.root / "manifests" / f"{digest[7:]}.json"
        with self._lock:
            if not path.exists():
                _write(path, json.dumps(_record(v), sort_keys=True))
        return self.get(digest) or Version(digest, **_record(v))

    def get(self, digest: str) -> Version | None:
        m = DIGEST.fullmatch(digest or "")
        if m is None:
            return None
        try:
            d = json.loads((self.root / "manifests" / f"{m.group(1)}.json").read_text())
            return Version(digest, **d)
        except (OSError, ValueError, TypeError):
            return None

    def chain(self, v: Version) -> list[Version]:
        """v, its parent, its parent's parent, … down to a version with a source of its own."""
        out = [v]
        while out[-1].parent:
            up = self.get(out[-1].parent)
            if up is None:
                raise LookupError(f"version {out[-1].short} was made from {out[-1].parent[:19]}…, "
                                  "which is missing from the store")
            if len(out) >= MAX_CHAIN:
                raise LookupError(f"version {v.short} is made from more than {MAX_CHAIN} versions")
            out.append(up)
        return out

    def size(self, v: Version) -> int:
        """Bytes of every blob v runs on (its own and its ancestors')."""
        blobs = {d for u in self.chain(v) for d in u.files.values()}
        return sum(self.blob(d).stat().st_size for d in blobs if self.blob(d).exists())

    # --- tags -------------------------------------------------------------------------------------
    def _tags_file(self, name: str) -> Path:
        path = self.root / "tags" / f"{check_name('model name', name)}.json"
        if path.is_symlink():
            raise ValueError(f"the model store holds a symbolic link at tags/{path.name}; llmos never follows links "
                             "there")
        return path

    def _read_tags(self, name: str) -> dict:
        try:
            d = json.loads(self._tags_file(name).read_text())
            return d if isinstance(d, dict) and isinstance(d.get("tags"), dict) else {"owner": "", "tags": {}}
        except (OSError, ValueError):
            return {"owner": "", "tags": {}}

    def lookup(self, ref: str) -> Version | None:
        """The version `NAME[:TAG]` (or a digest) names, else None."""
        if is_digest(ref):
            return self.get(ref)
        name, tag = split_ref(ref)
        return self.get(self._read_tags(name)["tags"].get(tag, ""))

    def name_owner(self, name: str) -> str | None:
        """Who owns a model name ("" an admin), None if no tag of it exists."""
        d = self._read_tags(name)
        return str(d.get("owner", "")) if d["tags"] else None

    def tag(self, ref: str, v: Version, owner: str = "") -> None:
        """Point `NAME[:TAG]` at v; a new name is owned by `owner`."""
        name, tag = split_ref(ref)
        with self._lock:
            d = self._read_tags(name)
            if not d["tags"]:
                d["owner"] = owner
            d["tags"][tag] = v.digest
            _write(self._tags_file(name), json.dumps(d, sort_keys=True))

    def untag(self, ref: str) -> Version | None:
        """Remove `NAME[:TAG]`; the version it named, or None if there was no such tag."""
        name, tag = split_ref(ref)
        with self._lock:
            d = self._read_tags(name)
            digest = d["tags"].pop(tag, None)
            if digest is None:
                return None
            if d["tags"]:
                _write(self._tags_file(name), json.dumps(d, sort_keys=True))
            else:
                self._tags_file(name).unlink(missing_ok=True)
        return self.get(digest)

    def tags(self) -> list[tuple[str, str, Version]]:
        """Every (canonical reference, the name's owner, version), sorted by reference."""
        out = []
        for f in sorted((self.root / "tags").glob("*.json")):
            if f.is_symlink():
                continue
            d = self._read_tags(f.stem)
            for tag, digest in sorted(d["tags"].items()):
                v = self.get(digest)
                if v is not None:
                    out.append((f.stem if tag == LATEST else f"{f.stem}:{tag}", str(d.get("owner", "")), v))
        return out

    # --- collection -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def importing(self) -> Iterator[None]:
        """An import, from its first blob to its tag: `collect` leaves what it writes alone."""
        began = time.time()
        with self._lock:
            self._imports.append(began)
        try:
            yield
        finally:
            with self._lock:
                self._imports.remove(began)

    def collect(self, keep: set[str]) -> tuple[int, int]:
        """Remove manifests no tag reaches (nor `keep`, the digests loaded models run),
        then blobs and snapshots no manifest left needs; (versions removed, bytes freed).
        Files written since an import still in flight began are spared."""
        with self._lock:
            cutoff = min(self._imports, default=float("inf")) - 1.0
            young = lambda f: f.stat().st_mtime >= cutoff  # noqa: E731
            live: set[str] = set()
            for d in {v.digest for _, _, v in self.tags()} | set(keep):
                v = self.get(d)
                while v is not None and v.digest not in live:
                    live.add(v.digest)
                    v = self.get(v.parent)
            removed = 0
            for f in (self.root / "manifests").glob("*.json"):
                if f"sha256:{f.stem}" not in live and not young(f):
                    f.unlink(missing_ok=True)
                    removed += 1
            needed = {d for x in live if (v := self.get(x)) is not None for d in v.files.values()}
            freed = 0
            for f in (self.root / "blobs").iterdir():
                if f.name.startswith("sha256-") and f"sha256:{f.name[7:]}" not in needed and not young(f):
                    freed += f.stat().st_size
                    f.unlink(missing_ok=True)
            snaps = {self.snapshot_key(v.files) for x in live if (v := self.get(x)) is not None}
            for s in (self.root / "snapshots").iterdir():
                if s.name not in snaps and not s.is_symlink() and not young(s):
                    shutil.rmtree(s, ignore_errors=True)
        return removed, freed

    @staticmethod
    def snapshot_key(files: dict[str, str]) -> str:
        return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:32]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.{threading.get_ident()}.partial")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(path)
