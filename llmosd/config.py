"""llmosd's configuration: one Config, filled from defaults, a TOML file, LLMOS_* environment
variables and command-line flags, each overriding the one before.

This module imports nothing heavy. The default state dir and socket are the SDK's
(llmos.syscalls.sdk.paths), so clients and the daemon agree on them.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmos.drivers.driver import QUANT_MODES
from llmos.kernel.models.store import DEFAULT_MODEL
from llmos.kernel.sched import POLICIES
from llmos.syscalls.sdk.paths import SOCKET_NAME, default_socket, default_state_dir
from llmos.userconf import parse_mode, parse_users

__all__ = ["Config", "ConfigError", "load", "parser", "parse_size", "default_state_dir", "default_socket"]
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 1000**2, "mb": 1000**2, "mib": 1 << 20,
          "g": 1000**3, "gb": 1000**3, "gib": 1 << 30, "t": 1000**4, "tb": 1000**4, "tib": 1 << 40}


class ConfigError(ValueError):
    """A setting that cannot be used, named with where it came from."""


def parse_size(text: str | int) -> int:
    """Bytes from 1073741824, '1GiB', '512 MiB', '2g'."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (use e.g. 1GiB, 512MiB or a number of bytes)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _positive(kind: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse(v: Any) -> Any:
        x = kind(v)
        if x <= 0:
            raise ValueError(f"must be positive, got {v!r}")
        return x
    return parse


def _nonneg(kind: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse(v: Any) -> Any:
        x = kind(v)
        if not x >= 0:  # NaN too
            raise ValueError(f"must be 0 or more, got {v!r}")
        return x
    return parse


_nonneg_float = _nonneg(float)


def _size_or_auto(v: Any) -> int | None:
    """A positive size, or "auto" (None): sized by the device."""
    return None if str(v).strip().lower() == "auto" else _positive(parse_size)(v)


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if str(v) not in options:
            raise ValueError(f"{v!r} is not one of {', '.join(options)}")
        return str(v)
    return parse


def _device(v: Any) -> str:
    from llmos.worker import plan
    plan(str(v), gpus=0)  # the form only; whether the devices exist is the boot's to find
    return str(v)


def _path(v: Any) -> Path:
    return Path(str(v)).expanduser()




def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if str(v).lower() in ("1", "true", "yes", "on"):
        return True
    if str(v).lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{v!r} is not true or false")


def _dirs(v: Any) -> tuple[str, ...]:
    """Directories: a TOML list, or one string of them joined by ':'."""
    items = v if isinstance(v, list) else str(v).split(os.pathsep)
    return tuple(str(Path(str(d)).expanduser()) for d in items if str(d))


def is_loopback(address: str) -> bool:
    """Whether HOST:PORT names this machine only (localhost, 127.0.0.0/8, ::1)."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Config:
    """Everything llmosd needs to boot."""

    state_dir: Path = dataclasses.field(default_factory=default_state_dir)
    socket: Path | None = None      # default: <state_dir>/llmosd.sock
    listen: str | None = None       # also serve TCP on HOST:PORT
    http: str | None = None         # also serve the OpenAI-compatible HTTP API on HOST:PORT
    metrics: str | None = None      # serve Prometheus metrics on HOST:PORT (and at /metrics on --http)
    metrics_per_user: bool = False  # per-user usage counters in the metrics (a user label)
    store: Path | None = None       # model store; default: <state_dir>/models
    model: str = DEFAULT_MODEL      # loaded at start; "" or "none" for no model
    device: str = "auto"
    threads: int | None = None
    dtype: str = "float32"
    quantize: str = "none"          # weights of the boot model and of loads that name no mode
    kv_memory: int | None = None    # None ("auto"): the device's free memory on CUDA, 1GiB on the CPU
    kv_pages: int | None = None
    swap_memory: int | None = None  # None: as many swap pages as the pool, within 25% of host RAM in all
    swap_pages: int | None = None
    page_size: int = 16
    policy: str = "fcfs"
    token_budget: int = 256
    prefill_budget: int = 2048      # tokens per step when no process decodes (a long prompt alone)
    speculate: bool = False         # verify prompt-lookup proposals beside decodes (kernel/speculate.py)
    compile: bool = False           # decode steps through torch.compile where exact (drivers/compiled.py)
    max_procs: int = 4096
    grace: float = 30.0             # seconds running processes get to finish at shutdown
    max_message: int = 16 << 20     # largest gRPC message accepted, bytes
    log_format: str = "text"
    log_level: str = "info"
    socket_mode: int = 0o600        # 0666 lets every local user in, each as their own uid
    tls_cert: Path | None = None    # PEM certificate and key: TLS on the TCP listener
    tls_key: Path | None = None
    http_tls_cert: Path | None = None  # PEM certificate and key: TLS on the --http port
    http_tls_key: Path | None = None
    insecure: bool = False          # allow a listener off loopback without TLS (tokens in clear)
    quota_procs: int | None = None  # per-user defaults; None = unlimited
    quota_pages: int | None = None
    quota_tokens_per_min: int | None = None
    quota_data: int | None = 256 << 20  # bytes of training/eval data a user's live tasks may hold
    users: dict[str, dict[str, int | None]] = dataclasses.field(default_factory=dict)  # [users.NAME] in TOML
    term_grace: float = 10.0        # seconds a process gets to end after TERM before it is killed
    max_unit_tokens: int = 2048     # most tokens one unit of task work may compute
    max_unit_s: float = 30.0        # a task whose unit takes longer is ended
    data_dirs: tuple[str, ...] = () # where an admin may have llmosd read data files
    tool_wait_ttl: float = 60.0     # seconds a process waiting on a tool's result keeps its KV pages
    placement: str = "cost"         # how spawns choose among several devices: cost or round-robin
    cluster: str = ""               # a Ray cluster to run kernels on every node of: auto or HOST:PORT
    keep_alive: float = 0.0         # seconds a model's copy on another device stays loaded unused; 0: forever

    @property
    def socket_path(self) -> Path:
        return self.socket or self.state_dir / SOCKET_NAME

    @property
    def store_path(self) -> Path:
        return self.store or self.state_dir / "models"


# field -> (parser, help). Every field can come from a flag, LLMOS_<FIELD> and the file.
FIELDS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "state_dir": (_path, "state directory (socket, history, model store)"),
    "socket": (_path, "unix socket to listen on (default <state-dir>/llmosd.sock)"),
    "listen": (str, "also listen on TCP HOST:PORT, e.g. 127.0.0.1:7070"),
    "http": (str, "also serve the OpenAI-compatible HTTP API on HOST:PORT, e.g. 127.0.0.1:8000 (port 0: any)"),
    "metrics": (str, "serve Prometheus metrics on HOST:PORT, e.g. 127.0.0.1:9100 (port 0: any); "
                      "also at /metrics on --http"),
    "metrics_per_user": (_bool, "also export per-user usage counters (labelled with user names: a privacy and "
                                "cardinality decision; off by default)"),
    "store": (_path, "model store directory (default <state-dir>/models)"),
    "model": (str, f"model loaded at start (default {DEFAULT_MODEL}; 'none' for none)"),
    "device": (_device, "auto, cpu or cuda:N; several: cpu:0,cpu:1 (CPU devices that split the cores), "
                        "cuda:0,cuda:1, or all"),
    "threads": (_positive(int), "CPU threads for the driver"),
    "dtype": (_choice("float32", "bfloat16", "float16"), "weights dtype"),
    "quantize": (_choice(*QUANT_MODES), "quantize weights (the boot model's and default loads'): none, int8 or int4"),
    "kv_memory": (_size_or_auto, "KV pool size per model, e.g. 1GiB; auto (the default): 90%% of the device's "
                                 "memory free after the weights, less 256MiB, on CUDA, and 1GiB on the CPU"),
    "kv_pages": (_positive(int), "KV pool size in pages (overrides --kv-memory)"),
    "swap_memory": (_nonneg(parse_size), "host swap per model, e.g. 4GiB (default: as many pages as the pool, "
                                         "within 25%% of host RAM for all models together; 0: no swap)"),
    "swap_pages": (_nonneg(int), "host swap per model in pages (overrides --swap-memory)"),
    "page_size": (_positive(int), "tokens per KV page"),
    "policy": (_choice(*POLICIES), "scheduler policy"),
    "token_budget": (_positive(int), "tokens per step, all processes together, while any of them decodes"),
    "prefill_budget": (_positive(int), "tokens per step when no process decodes: a long prompt alone runs in "
                                       "chunks this large"),
    "speculate": (_bool, "exact speculative decoding: verify prompt-lookup proposals in the decode step "
                         "(same greedy tokens, same sampled distribution; off by default, see bench/speculate.py)"),
    "compile": (_bool, "run decode steps through torch.compile where that keeps every bit (fp32, int8 and "
                       "int4 models on the CPU); compiles at load, cached in the model store"),
    "max_procs": (_positive(int), "most live processes"),
    "grace": (_nonneg_float, "seconds running processes get to finish on shutdown"),
    "max_message": (_positive(parse_size), "largest gRPC message accepted"),
    "log_format": (_choice("text", "json"), "log lines as key=value text or JSON"),
    "log_level": (_choice("debug", "info", "warning", "error"), "least level logged"),
    "socket_mode": (parse_mode, "the unix socket's mode (default 0600: its owner only; 0666: every local user)"),
    "tls_cert": (_path, "PEM certificate for TLS on the --listen port (with --tls-key)"),
    "tls_key": (_path, "PEM private key of --tls-cert"),
    "http_tls_cert": (_path, "PEM certificate for TLS on the --http port (with --http-tls-key)"),
    "http_tls_key": (_path, "PEM private key of --http-tls-cert"),
    "insecure": (_bool, "allow --listen or --http off loopback without TLS (bearer tokens cross in clear), "
                        "and --metrics off loopback"),
    "quota_procs": (_positive(int), "most live processes per user (default unlimited)"),
    "quota_pages": (_positive(int), "most KV pages reserved per user (default unlimited)"),
    "quota_tokens_per_min": (_positive(int), "most tokens computed per user per minute, task work included "
                                             "(default unlimited)"),
    "quota_data": (_positive(parse_size), "most bytes of training and eval data one user's live tasks hold "
                                          "(default 256MiB)"),
    "term_grace": (_nonneg_float, "seconds a process gets to end cleanly after TERM before it is killed (10)"),
    "max_unit_tokens": (_positive(int), "most tokens one unit of task work (a micro-batch, a window) may compute "
                                        "(2048)"),
    "max_unit_s": (_positive(float), "a task whose unit of work takes longer than this many seconds is ended (30)"),
    "cluster": (str, "a Ray cluster (pip install 'llmos[ray]') whose every other node gets a kernel of this "
                     "daemon's: auto (the one this machine is in) or the head's HOST:PORT"),
    "keep_alive": (_nonneg_float, "seconds a model's copy on another device (--replicas, --device with several, "
                                  "--cluster) stays loaded with no process using it; 0 = forever (the default)"),
    "placement": (_choice("cost", "round-robin"), "how a spawn chooses among several devices: cost (prefix-cache "
                                                  "overlap, decode load, free pages; the default) or round-robin"),
    "tool_wait_ttl": (_nonneg_float, "seconds an interactive process waiting on a tool's result keeps its KV "
                                     "pages before they may be swapped (60)"),
    "data_dirs": (_dirs, "directories (joined by ':') an admin may have llmosd read data files from "
                         "(default none: data travels in the request)"),
}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="llmosd", description="The llmos daemon: serves the syscalls over gRPC.",
                                 epilog="Every flag can also be set as LLMOS_<NAME> in the environment "
                                        "(e.g. LLMOS_KV_MEMORY=2GiB) or as a key in the --config TOML file.")
    ap.add_argument("--config", type=Path, help="TOML config file (keys as the flags, with underscores)")
    for name, (kind, text) in FIELDS.items():
        if kind is _bool:
            ap.add_argument("--" + name.replace("_", "-"), dest=name, default=None, action="store_const",
                            const=True, help=text)
        else:
            ap.add_argument("--" + name.replace("_", "-"), dest=name, default=None, metavar=name.upper(), help=text)
    return ap


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Build the Config: defaults < config file < environment < flags."""
    env = os.environ if env is None else env
    args = parser().parse_args(argv)
    values: dict[str, tuple[Any, str]] = {}
    file = args.config or (Path(env["LLMOS_CONFIG"]) if env.get("LLMOS_CONFIG") else None)
    if file is not None:
        try:
            data = tomllib.loads(Path(file).expanduser().read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"config file {file}: {e}") from None
        users = data.pop("users", None)
        for key, v in data.items():
            name = key.replace("-", "_")
            if name not in FIELDS:
                raise ConfigError(f"config file {file}: unknown key {key!r}")
            values[name] = (v, f"{key} in {file}")
    for name in FIELDS:
        if env.get("LLMOS_" + name.upper()):
            values[name] = (env["LLMOS_" + name.upper()], "LLMOS_" + name.upper())
        if getattr(args, name) is not None:
            values[name] = (getattr(args, name), "--" + name.replace("_", "-"))
    cfg = Config(state_dir=default_state_dir(env))
    for name, (v, origin) in values.items():
        try:
            setattr(cfg, name, FIELDS[name][0](v))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{origin}: {e}") from None
    if file is not None and users is not None:
        try:
            cfg.users = parse_users(users, f"config file {file}")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    for cert, key, port in (("tls_cert", "tls_key", "listen"), ("http_tls_cert", "http_tls_key", "http")):
        flags = f"--{cert.replace('_', '-')} and --{key.replace('_', '-')}"
        if (getattr(cfg, cert) is None) != (getattr(cfg, key) is None):
            raise ConfigError(f"{flags} go together: give both or neither")
        if getattr(cfg, cert) is not None and not getattr(cfg, port):
            raise ConfigError(f"{flags} secure the --{port} port: give --{port} HOST:PORT too")
    if cfg.metrics_per_user and not cfg.metrics:
        raise ConfigError("--metrics-per-user adds to the metrics page: give --metrics HOST:PORT too")
    if cfg.model.lower() == "none":
        cfg.model = ""
    if cfg.metrics and re.fullmatch(r"\d{1,5}", cfg.metrics):
        cfg.metrics = f"127.0.0.1:{cfg.metrics}"  # a bare port: loopback only
    for name in ("listen", "http", "metrics"):
        value = getattr(cfg, name)
        if value and not re.fullmatch(r"[\w.\-]+:\d{1,5}|\[[0-9a-fA-F:]+\]:\d{1,5}", value):
            raise ConfigError(f"--{name}: {value!r} is not HOST:PORT")
    for name, cert in (("listen", "tls_cert"), ("http", "http_tls_cert"), ("metrics", None)):
        value = getattr(cfg, name)
        if value and not is_loopback(value) and (cert is None or getattr(cfg, cert) is None) and not cfg.insecure:
            why = "its page has no authentication" if cert is None else \
                f"bearer tokens would cross the network in clear; give --{cert.replace('_', '-')} and its key"
            raise ConfigError(f"--{name} {value} is not a loopback address and {why}, or pass --insecure")
    return cfg


def insecure_listeners(cfg: Config) -> list[str]:
    """The listeners --insecure let off loopback without TLS (each one is warned about)."""
    plain = [("listen", cfg.tls_cert), ("http", cfg.http_tls_cert), ("metrics", None)]
    return [f"--{n} {getattr(cfg, n)}" for n, cert in plain if getattr(cfg, n) and not is_loopback(getattr(cfg, n))
            and cert is None]
