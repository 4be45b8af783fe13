"""The shape of the code: imports only go down, between the rooms the design names.

The graph is read from the installed `llmos` packages (every import statement, in functions
too), so a back-edge added anywhere fails here, whatever imports it lazily.
"""
import ast
import importlib.util
import inspect
from pathlib import Path

import pytest

# Rooms, most specific prefix first.
ROOMS = [
    ("llmos.syscalls.v1", "stubs"), ("llmos.syscalls.abi", "abi"), ("llmos.syscalls.sdk", "sdk"),
    ("llmos.syscalls.server", "servicer"), ("llmos.syscalls.http", "gateway"), ("llmos.syscalls", "syscalls"),
    ("llmos.shell", "shell"), ("llmos.kernel", "kernel"), ("llmos.drivers", "drivers"), ("llmos", "llmosd"),
]
# Who may import whom (a room may always import itself). llmosd wires everything together.
ALLOWED = {
    "stubs": set(),
    "abi": {"stubs"},
    "sdk": {"abi", "stubs"},
    "shell": {"sdk", "abi", "stubs"},
    "drivers": {"abi"},
    "kernel": {"drivers", "abi"},
    "servicer": {"kernel", "drivers", "abi", "stubs"},
    "gateway": {"kernel", "drivers", "abi"},
    "syscalls": set(),
    "llmosd": {"stubs", "abi", "sdk", "shell", "drivers", "kernel", "servicer", "gateway", "syscalls"},
}
PACKAGES = ["llmos", "llmos.kernel", "llmos.drivers", "llmos.syscalls", "llmos.shell"]


def room(module: str) -> str:
    return next(r for prefix, r in ROOMS if module == prefix or module.startswith(prefix + "."))


def modules() -> dict[str, Path]:
    """Every module of the installed packages, by dotted name (the package roots map to the
    repo's top-level directories, so walk each one's own location)."""
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        base = Path(importlib.util.find_spec(pkg).submodule_search_locations[0])
        for path in base.rglob("*.py"):
            rel = path.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([pkg, *parts])
            if pkg == "llmos" and parts and parts[0] in ("kernel", "drivers", "syscalls", "shell"):
                continue  # not under llmosd/
            out[name] = path
    return out


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("llmos")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llmos"):
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_imports_only_go_down():
    mods = modules()
    assert len(mods) > 60 and "llmos.kernel.kernel" in mods and "llmos.syscalls.sdk.client" in mods
    bad = []
    for name, path in sorted(mods.items()):
        here = room(name)
        for target in sorted(imports(path)):
            there = room(target)
            if there != here and there not in ALLOWED[here]:
                bad.append(f"{name} ({here}) imports {target} ({there})")
    assert not bad, "back-edges:\n" + "\n".join(bad)


@pytest.mark.parametrize("name,target,ok", [
    ("llmos.syscalls.sdk.client", "llmos.kernel.proc", False),
    ("llmos.kernel.spawn", "llmos.syscalls.server.servicer", False),
    ("llmos.shell.cli", "llmos.config", False),
    ("llmos.drivers.cpu", "llmos.kernel.proc", False),
    ("llmos.syscalls.http.gateway", "llmos.syscalls.server.servicer", False),
    ("llmos.main", "llmos.syscalls.http.gateway", True),
    ("llmos.kernel.proc", "llmos.syscalls.abi.spec", True),
])
def test_the_rule_itself(name, target, ok):
    """The check can fail: these edges are judged as the design says."""
    assert (room(target) == room(name) or room(target) in ALLOWED[room(name)]) is ok


def test_both_clients_have_every_syscall():
    """Client and AsyncClient run one method table (sdk/client.py Calls), so they cannot drift."""
    from llmos.syscalls.sdk import AsyncClient, Client
    from llmos.syscalls.sdk.client import Calls

    public = {n for n, f in inspect.getmembers(Calls, inspect.isfunction) if not n.startswith("_")}
    assert {"spawn", "read", "write", "wait", "kill", "fork", "pipe", "train", "eval", "generate"} <= public
    for cls in (Client, AsyncClient):
        assert public <= {n for n in dir(cls) if not n.startswith("_")}
        own = {n for n, f in vars(cls).items() if inspect.isfunction(f) and not n.startswith("_")}
        assert own <= {"close"}, f"{cls.__name__} defines syscalls of its own: {own}"


def test_the_python_floor_is_what_the_code_needs():
    """pyproject's requires-python is the oldest Python every module parses under (tomllib: 3.11)."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    floor = tomllib.loads((root / "pyproject.toml").read_text())["project"]["requires-python"]
    assert floor == ">=3.11"
    for name, path in modules().items():
        ast.parse(path.read_text(), feature_version=(3, 11))
    assert "3.11+" in (root / "README.md").read_text()
