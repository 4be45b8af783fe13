"""Migration: a live process moves to another device at a step boundary; drain moves every
process off a device; a lost device's processes are placed again.

A process moves by its KV pages when it has computed enough for a transfer to beat
recomputing them (or when asked), by its tokens otherwise. Its pages leave the device it was
on (read out between two of that device's steps), pass through this kernel, and are written
into pages of the target's pool; what the target's prefix cache already holds is mapped, not
written. By tokens, the target recomputes the KV from the process's tokens. Either way the
output is this kernel's, so the pid, the output offset and any readers go on with no gap and
no duplicate; news from the device it left carries an older epoch and is dropped.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmos.kernel import devices
from llmos.kernel.devices import Device
from llmos.kernel.errors import FailedPrecondition, InvalidArgument
from llmos.kernel.events import StateChanged
from llmos.kernel.proc import Process, State

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.models.loading import LoadedModel

HOW = ("auto", "pages", "tokens")
PAGES_MIN_TOKENS = 64  # auto: below this many computed tokens, recomputing costs about what a transfer does


def migrate(k: "Kernel", p: Process, to: str, by: str = "auto") -> tuple[str, str]:
    """Move p to device (or node) `to`; (the device it left, "pages" or "tokens")."""
    if by not in HOW:
        raise InvalidArgument(f"a process moves by {', '.join(HOW)}, not {by[:32]!r}", "by")
    here = p.device or k.device_name
    if p.state.done:
        raise FailedPrecondition(f"pid {p.pid} has already {p.state.value}; only a live process can move")
    target = devices.find(k, to)
    if (target.name if target is not None else k.device_name) == here:
        raise FailedPrecondition(f"pid {p.pid} already runs on {here}")
    m = k.model(p.model)
    if target is not None:
        if not devices.movable(m, p):
            raise FailedPrecondition(f"pid {p.pid} must run on {k.device_name}: a task, a LoRA or preset model, a "
                                     "grammar or log-probabilities are served by this kernel alone")
        if m.name not in target.models:
            raise FailedPrecondition(f"{target.name} has no copy of {m.name}; load it there "
                                     f"(llmos load --devices {target.name})")
    # Pages still on their way here from an earlier move follow p to its new place (arrived()
    # forwards them), unless it is asked to move by tokens.
    in_flight = p.incoming if by != "tokens" else ""
    source = None if p.incoming else devices.device_of(k, p)
    pages = by == "pages" or (by == "auto" and p.num_computed >= PAGES_MIN_TOKENS)
    kv = None
    if source is None and not p.incoming:
        kv = export(k, m, p) if pages else None
        m.memory.free(p.pid)
    elif source is not None and source.alive:
        source.link.post("export" if pages else "release", p.pid)
    _detach(p)
    p.incoming = in_flight or (source.name if source is not None and source.alive and pages else "")
    p.device = "" if target is None else target.name
    if target is not None and not p.incoming:
        target.link.post("adopt", devices.record(p), kv)
    elif target is None and kv is not None:
        install(k, m, p, *kv)
    how = "pages" if kv is not None or p.incoming else "tokens"
    k.log(f"pid {p.pid} migrated from {here} to {p.device or k.device_name} by {how} ({len(p.tokens)} tokens)")
    k.emit(StateChanged(p.pid))
    return here, how


def arrived(k: "Kernel", d: Device, pid: int, computed: int, kv: Any) -> None:
    """The pages a migrating process left `d` with: into its target's pool."""
    p = k.procs.get(pid)
    if p is None or p.incoming != d.name or p.state.done:
        return
    p.incoming = ""
    if not p.device:
        if kv is not None:
            try:
                kv = d.link.fetch(kv)
            except Exception as e:  # noqa: BLE001 - they are lost with the device: it recomputes
                k.log(f"pid {pid}: its KV pages from {d.name} could not be fetched ({type(e).__name__}: {e})")
                kv = None
        if kv is not None:
            install(k, k.model(p.model), p, computed, kv)
    else:
        target = devices.device_of(k, p)
        if target is not None and target.alive:
            if kv is not None and type(target.link) is not type(d.link):
                kv = d.link.fetch(kv)  # a handle only a link of its own kind can resolve
            target.link.post("adopt", devices.record(p), (computed, kv) if kv is not None else None)
        else:
            _place_again(k, p)
    k.emit(StateChanged(p.pid))


def export(k: "Kernel", m: "LoadedModel", p: Process) -> tuple[int, Any] | None:
    """(tokens covered, the KV of the pages covering them) of a resident process; None if it holds none."""
    mem = m.memory
    if p.pid not in mem.tables or not p.num_computed:
        return None
    n = -(-p.num_computed // mem.page_size)
    return p.num_computed, k.driver.read_pages(m.name, mem.page_table(p.pid)[:n])


def install(k: "Kernel", m: "LoadedModel", p: Process, computed: int, kv: Any) -> bool:
    """Give p pages holding the KV of its first `computed` tokens: the prefix cache's where it has
    them, new pages written from `kv` for the rest. False (p recomputes) if the pool is short."""
    mem = m.memory
    if p.pid in mem.tables or mem.is_swapped(p.pid):
        return False
    per_page = len(kv) // -(-computed // mem.page_size)  # read_pages' bytes go page by page
    # Tokens the device generated after this kernel decided the move never reached it: their KV is
    # left unused, and they are generated again here (the same ones, for greedy or seeded sampling).
    computed = min(computed, len(p.tokens) - 1)
    cached = mem.match_prefix(p.pid, p.tokens[:computed + 1], p.kv_salt)
    if cached < computed:
        if not mem.allocate(p.pid, cached, computed):
            mem.free(p.pid)
            return False
        first, last = cached // mem.page_size, -(-computed // mem.page_size)
        k.driver.write_pages(m.name, mem.page_table(p.pid)[first:last], kv[first * per_page:last * per_page])
    p.num_computed = max(cached, computed)
    p.usage.cached_tokens += cached
    mem.publish(p.pid, p.tokens, p.num_computed)
    p.usage.pages_held = mem.pages_held(p.pid)
    return True


def drain(k: "Kernel", name: str, undo: bool = False) -> list[tuple[int, str]]:
    """Move every live process off device `name` (or every device of node `name`), each to the
    cheapest other device, and place nothing new there until undone; (pid, where it went)."""
    names = {d.name for d in k.devices if d.alive and (d.name == name or d.name.startswith(name + "/"))}
    if name == k.device_name:
        names.add(name)
    if not names:
        devices.find(k, name)  # InvalidArgument, naming the devices
    if undo:
        k.drained = k.drained - names
        return []
    k.drained = k.drained | names
    moved = []
    for p in list(k.procs.values()):
        here = p.device or k.device_name
        if p.state.done or here not in names:
            continue
        m = k.model(p.model)
        if not p.device and not devices.movable(m, p):
            continue  # it can only run here; it finishes where it is
        to = devices.place(k, m, p, exclude=here)
        to_name = k.device_name if to is None else to.name
        if to_name in names:
            continue
        migrate(k, p, to_name)
        moved.append((p.pid, to_name))
    k.log(f"{name} drained: {len(moved)} process(es) moved")
    return moved


def lost(k: "Kernel", d: Device, why: str) -> None:
    """d is gone: each of its live processes is placed again (here, or on another device) from
    the tokens this kernel holds, under the same pid and output offset, its KV recomputed."""
    if not d.alive:
        return
    d.alive, d.lost_reason, d.models = False, why, {}
    moved: list[str] = []
    for p in list(k.procs.values()):
        if p.state.done or d.name not in (p.device, p.incoming):
            continue
        if p.incoming == d.name:  # its pages were there: it recomputes where it was going
            p.incoming = ""
            target = devices.device_of(k, p)
            if target is not None and target.alive:
                target.link.post("adopt", devices.record(p), None)
            else:
                _place_again(k, p)
        else:
            _detach(p)
            _place_again(k, p)
        moved.append(p.device or k.device_name)
        k.emit(StateChanged(p.pid))
    where = ", ".join(f"{moved.count(x)} on {x}" for x in sorted(set(moved))) or "none"
    k.log(f"device {d.name} lost ({why}); its live processes continue: {where}", "error")


def _detach(p: Process) -> None:
    """p leaves where it ran: a new epoch, no KV, not running."""
    p.moves += 1
    p.num_computed, p.usage.pages_held = 0, 0
    if p.state == State.RUNNING:
        p.state = State.READY
    if p.resume_state == State.RUNNING:
        p.resume_state = State.READY


def _place_again(k: "Kernel", p: Process) -> None:
    p.device = ""
    m = k.models.get(p.model)
    there = devices.place(k, m, p) if m is not None else None
    if there is not None:
        devices.start(k, there, p)
