"""Rich tables and live views of what the syscalls return, and their JSON forms."""
from __future__ import annotations

import json
import time
from collections.abc import Sequence

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Group
from rich.table import Table
from rich.text import Text

from llmos.syscalls.v1 import syscalls_pb2 as pb

STATE_STYLE = {"running": "bold green", "ready": "green", "new": "cyan", "blocked": "yellow", "stopped": "magenta",
               "exited": "dim", "killed": "red"}


def to_json(obj: Message | Sequence[Message] | dict) -> str:
    """Messages as JSON with the proto's field names and every field present."""
    def plain(o):
        if isinstance(o, Message):
            return MessageToDict(o, preserving_proto_field_name=True, always_print_fields_with_no_presence=True,
                                 unquote_int64_if_possible=True)
        if isinstance(o, dict):
            return {k: plain(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [plain(v) for v in o]
        return o
    return json.dumps(plain(obj), indent=2)


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def ps_table(procs: Sequence[pb.ProcInfo]) -> Table:
    """The process table; a DEVICE column when the processes run on more than one device."""
    t = Table(title=None, box=None, header_style="bold")
    several = len({p.device for p in procs}) > 1
    for col in ("PID", "PPID", "MODEL", *(("DEVICE",) if several else ()), "STATE", "NI", "PROMPT", "GEN", "CACHED",
                "PAGES", "TIME", "REASON"):
        t.add_column(col, justify="right" if col in ("PID", "PPID", "NI", "PROMPT", "GEN", "CACHED", "PAGES")
                     else "left")
    for p in procs:
        u = p.usage
        secs = p.run_s if p.HasField("run_s") else p.age_s
        t.add_row(str(p.pid), str(p.ppid), p.model, *((p.device,) if several else ()),
                  Text(p.state + ("*" if p.interactive else ""), style=STATE_STYLE.get(p.state, "")),
                  str(p.priority), str(u.prompt_tokens), str(u.generated_tokens), str(u.cached_tokens),
                  str(u.pages_held), f"{secs:.1f}s", p.reason)
    return t


def free_table(pools: Sequence[pb.PoolInfo]) -> Table:
    """Each KV pool; a DEVICE column when the pools are on more than one device."""
    t = Table(box=None, header_style="bold")
    several = len({p.device for p in pools}) > 1
    for col in ("MODEL", *(("DEVICE",) if several else ()), "PAGE", "TOTAL", "USED", "FREE", "SHARED", "CACHED",
                "SWAPPED", "SWAP", "KV BYTES"):
        t.add_column(col, justify="left" if col in ("MODEL", "DEVICE") else "right")
    for p in pools:
        t.add_row(p.model, *((p.device,) if several else ()), str(p.page_size), str(p.total), str(p.used),
                  str(p.free), str(p.shared), str(p.cached), str(p.swapped), str(p.swap_total), size(p.kv_bytes))
    return t


def devices_table(devices: Sequence[pb.Device]) -> Table | Group:
    t = Table(box=None, header_style="bold")
    for col in ("DEVICE", "KIND", "NAME", "MEMORY", "FREE", "UTIL", "TEMP", "THREADS"):
        t.add_column(col)
    for d in devices:
        t.add_row(f"{d.node}/{d.kind}:{d.index}" if d.node else f"{d.kind}:{d.index}", d.kind, d.name, size(d.total_memory), size(d.free_memory),
                  f"{d.utilization:.0f}%" if d.HasField("utilization") else "-",
                  f"{d.temperature:.0f}C" if d.HasField("temperature") else "-",
                  str(d.threads) if d.HasField("threads") else "-")
    errors = [Text(f"{d.node + '/' if d.node else ''}{d.kind}:{d.index}: {d.telemetry_error}", style="yellow")
              for d in devices if d.telemetry_error]
    return Group(t, *errors) if errors else t


def models_table(resp: pb.ModelsResponse) -> Table | Group:
    t = Table(box=None, header_style="bold")
    for col in ("NAME", "ARCH", "PARAMS", "WEIGHTS", "SIZE", "CONTEXT", "KV PAGES", "PROCS", "SOURCE"):
        t.add_column(col)
    for m in resp.loaded:
        weights = m.dtype if m.quantize in ("", "none") else m.quantize
        if m.pruned or m.pruned_heads:
            weights = f"{weights}, {pruned(m)}"
        if m.base:  # a LoRA model: its own parameters are the adapter's; it runs in its base's pool
            weights = f"LoRA r{m.lora_rank} over {m.base}"
        if m.preset_of:  # a second name of a loaded model's weights, with defaults of its own
            weights = f"preset of {m.preset_of}"
        t.add_row(m.name, m.architecture, f"{m.num_parameters / 1e6:.1f}M", weights, size(m.weight_bytes),
                  str(m.max_context), str(m.kv_pages), str(m.live_procs), m.source)
    kernels = [Text(f"kernels of {m.name}: {m.kernels}", style="dim") for m in resp.loaded if m.kernels]
    copies = [Text(f"copies of {m.name}: {', '.join(m.devices)}", style="dim") for m in resp.loaded
              if len(m.devices) > 1]
    parts = [t, *kernels, *copies]  # which GEMM kernels serve each, as measured here; where its replicas are
    if resp.versions:
        from llmos.shell.versions import stored_table
        parts += [Text(""), Text("stored (bold: loaded)", style="bold"), stored_table(list(resp.versions))]
    return Group(*parts) if len(parts) > 1 else t


def pruned(m: pb.ModelInfo) -> str:
    """What pruning at load removed, e.g. "pruned 0.25" or "pruned 0.25, heads 0.33"."""
    return "pruned " + ", ".join(p for p in (f"{m.pruned:g}" if m.pruned else "",
                                             f"heads {m.pruned_heads:g}" if m.pruned_heads else "") if p)


def dmesg_text(lines: Sequence[pb.LogLine]) -> Text:
    out = Text()
    for ln in lines:
        stamp = time.strftime("%H:%M:%S", time.localtime(ln.time))
        out.append(f"[{stamp}] ", style="dim")
        out.append(f"{ln.level:<5} ", style="red" if ln.level == "error" else "yellow" if ln.level == "warning" else "")
        out.append(ln.msg + "\n")
    return out
