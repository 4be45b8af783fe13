"""The shell's model-version commands (the CreateModel, ShowModel, TagModel and RemoveModel
syscalls) and the stored half of `llmos models`.

    llmos create NAME[:TAG] -f FILE     build a version from a manifest file (TOML)
    llmos show NAME[:TAG] [--json]      print the manifest that describes it
    llmos tag SRC DST                   name a version again, sharing its weights
    llmos rm NAME[:TAG]                 remove a tag; weights go when nothing refers to them

The manifest's keys are documented in the README and kernel/models/manifest.py.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from llmos.shell.render import size
from llmos.syscalls.sdk.errors import SyscallError
from llmos.syscalls.v1 import syscalls_pb2 as pb

if TYPE_CHECKING:
    from llmos.shell.commands import Shell

MAX_MANIFEST_FILE = 256 * 1024


def add_parsers(sub: argparse._SubParsersAction, parser_class: type) -> None:
    """The version commands' subparsers, under the shell's."""
    p = sub.add_parser("create", help="build a model version from a manifest file")
    p.add_argument("name", help="NAME or NAME:TAG (NAME means NAME:latest)")
    p.add_argument("-f", "--file", required=True, help="the manifest (TOML: from = ..., system = ..., [parameters])")
    p = sub.add_parser("show", help="print the manifest of a stored model version")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("tag", help="name a stored model version again (no copy of its weights)")
    p.add_argument("source", help="NAME[:TAG] or a digest (sha256:...)")
    p.add_argument("target", help="NAME[:TAG]")
    p = sub.add_parser("rm", help="remove a model tag; its weights go when nothing refers to them")
    p.add_argument("name", help="NAME or NAME:TAG")


def stored_table(versions: list[pb.StoredModel]) -> Table:
    """One row per name and tag: its version, kind, size, age, owner and what it was made from."""
    t = Table(box=None, header_style="bold")
    for col in ("NAME", "TAG", "ID", "KIND", "SIZE", "CREATED", "OWNER", "FROM", "LINEAGE"):
        t.add_column(col)
    for v in versions:
        name, _, tag = v.name.partition(":")
        t.add_row(Text(name, style="bold" if v.loaded else ""), tag or "latest", v.digest[7:19], v.kind,
                  size(v.size), time.strftime("%Y-%m-%d %H:%M", time.localtime(v.created)), v.owner or "(admin)",
                  v.made_from or "-", _lineage(v.lineage))
    return t


def _lineage(text: str) -> str:
    try:
        d = json.loads(text or "{}")
    except ValueError:
        return ""
    parts = [f"data {d['dataset_sha256'][:12]}" if d.get("dataset_sha256") else "",
             f"loss {d['final_loss']:.4f}" if isinstance(d.get("final_loss"), (int, float)) else "",
             ", ".join(f"{k}={v}" for k, v in sorted((d.get("hyperparameters") or {}).items())
                       if k in ("rank", "steps", "lr", "distill")),
             "" if d.get("dataset_sha256") else str(d.get("source", ""))[-48:]]
    return "; ".join(p for p in parts if p)


def create(sh: "Shell", a: argparse.Namespace) -> int:
    try:
        with open(a.file, "rb") as f:
            data = f.read(MAX_MANIFEST_FILE + 1)
    except OSError as e:
        raise SyscallError("invalid_argument", f"cannot read the manifest {a.file}: {e.strerror}") from None
    if len(data) > MAX_MANIFEST_FILE:
        raise SyscallError("invalid_argument", f"{a.file} is over {MAX_MANIFEST_FILE} bytes: not a manifest")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise SyscallError("invalid_argument", f"{a.file} is not UTF-8 text") from None
    r = sh.c.create(a.name, text)
    m = r.model
    served = "; loaded" if r.loaded else "; load it with `llmos load " + m.name + "`"
    sh.out.write(f"created {m.name} (version {m.digest[7:19]}, {m.kind}, from {m.made_from or 'a source'}, "
                 f"{size(m.size)}){served}\n")
    return 0


def show(sh: "Shell", a: argparse.Namespace) -> int:
    r = sh.c.show(a.name)
    if a.json:
        sh.json(r)
    else:
        sh.out.write(r.manifest)
    return 0


def tag(sh: "Shell", a: argparse.Namespace) -> int:
    m = sh.c.tag(a.source, a.target)
    sh.out.write(f"tagged {m.name} as version {m.digest[7:19]} ({a.source})\n")
    return 0


def rm(sh: "Shell", a: argparse.Namespace) -> int:
    r = sh.c.remove(a.name)
    freed = f"; {r.versions_removed} version(s) and {size(r.bytes_freed)} freed" if r.versions_removed else \
        "; its weights stay (other names refer to them)"
    sh.out.write(f"removed {a.name} (version {r.digest[7:19]}){freed}\n")
    return 0


COMMANDS = {"create": create, "show": show, "tag": tag, "rm": rm}
