"""The kernel choice's cache: <cache_dir>/kernels.json, one entry per CPU, torch version and
thread count, each holding the choice made for every shape measured there (drivers/choice.py)."""
from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

FILE = "kernels.json"
VERSION = 5  # bump when the forms, the buckets or the rules change: older entries are not read


@dataclass(frozen=True)
class Machine:
    """What a measured choice holds for: a CPU model, a torch build and a thread count."""

    cpu: str
    torch: str
    threads: int

    @classmethod
    def here(cls) -> "Machine":
        return cls(cpu_model(), torch.__version__, torch.get_num_threads())

    def key(self) -> str:
        return f"{self.cpu} | torch {self.torch} | {self.threads} threads"


def cpu_model() -> str:
    """The CPU's model name with its family, model and stepping (/proc/cpuinfo): virtual
    machines often show only "AMD EPYC", and two of them can be different chips."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                k = k.strip()
                if k in ("model name", "cpu family", "model", "stepping") and k not in info:
                    info[k] = v.strip()
                if not line.strip() and info:
                    break
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or platform.machine() or "cpu"
    ids = " ".join(f"{k.split()[-1]} {info[k]}" for k in ("cpu family", "model", "stepping") if k in info)
    return f"{name} ({ids})" if ids else name


class KernelCache:
    """Choices by shape key for one machine, read from and written to `cache_dir` (None: no file)."""

    def __init__(self, cache_dir: str | Path | None, machine: Machine) -> None:
        self.path = Path(cache_dir) / FILE if cache_dir is not None else None
        self.machine = machine

    def _read(self) -> dict:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) and data.get("version") == VERSION else {}

    def known(self) -> dict[str, dict]:
        """Every cached choice (a plain dict) for this machine, by shape key."""
        shapes = self._read().get("machines", {}).get(self.machine.key(), {}).get("shapes", {})
        return {k: v for k, v in shapes.items() if isinstance(v, dict)}

    def put(self, choices: dict[str, dict]) -> None:
        """Add choices for this machine; other machines' entries stay. Best effort: a store that
        cannot be written only means measuring again next time."""
        if self.path is None or not choices:
            return
        data = self._read() or {"version": VERSION, "machines": {}}
        entry = data["machines"].setdefault(self.machine.key(), {
            "cpu": self.machine.cpu, "torch": self.machine.torch, "threads": self.machine.threads, "shapes": {}})
        entry["shapes"].update(choices)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".kernels-", dir=self.path.parent)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError:
            pass
