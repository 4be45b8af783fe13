"""Hypothesis strategies for syscall requests, derived from the proto's descriptors: every
field of every request, with random, extreme and malformed values."""
from __future__ import annotations

import math

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

from llmos.syscalls.v1 import syscalls_pb2 as pb

F = FieldDescriptor
INT32 = (-2**31, 2**31 - 1)
INT64 = (-2**63, 2**63 - 1)
HUGE = 200_000  # characters: under the fuzz daemon's --max-message, far over any prompt limit
SERVICE = pb.DESCRIPTOR.services_by_name["Syscalls"]


def ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = [0, 1, -1, 2, 3, 7, 16, 255, 256, 383, 384, 1 << 20, lo, hi]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


def floats() -> st.SearchStrategy[float]:
    edges = [math.nan, math.inf, -math.inf, -0.0, 0.0, 1e-300, 1e308, -1e308, 0.5, 1.0, 100.0, 101.0]
    return st.one_of(st.sampled_from(edges), st.floats(allow_nan=True, allow_infinity=True))


def texts(huge: bool = True) -> st.SearchStrategy[str]:
    odd = ["", " ", "\x00", "\n" * 50, "../../../etc/passwd", "%s%n{0}", "\u202e\ufeff", "🦙" * 100,
           "<|im_start|>", "<|im_end|>"]
    parts = [st.sampled_from(odd), st.text(max_size=40)]
    if huge:
        parts.append(st.sampled_from(["x" * HUGE, "é" * (HUGE // 2)]))
    return st.one_of(*parts)


def pids(known: list[int]) -> st.SearchStrategy[int]:
    """Live and finished pids the fuzz daemon knows, and every kind of pid it does not."""
    return st.one_of(st.sampled_from(known + [0, -1, 424242, INT32[0], INT32[1]]), st.integers(*INT32))


def _scalar(f: FieldDescriptor, overrides: dict, huge: bool) -> st.SearchStrategy:
    if f.name in overrides:
        return overrides[f.name]
    if f.type == F.TYPE_MESSAGE:
        return message(f.message_type, overrides)
    if f.type in (F.TYPE_INT32, F.TYPE_ENUM):  # proto3 enums are open: any int32 arrives
        return ints(*INT32)
    if f.type == F.TYPE_INT64:
        return ints(*INT64)
    if f.type == F.TYPE_DOUBLE:
        return floats()
    if f.type == F.TYPE_BOOL:
        return st.booleans()
    if f.type == F.TYPE_STRING:
        return texts(huge)
    if f.type == F.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.sampled_from([b"\xff\xfe" * 100, b"\n" * 1000]))
    raise TypeError(f"no strategy for field {f.full_name} of type {f.type}")


def _field(f: FieldDescriptor, overrides: dict) -> st.SearchStrategy:
    if not f.is_repeated:
        return _scalar(f, overrides, huge=True)
    one = _scalar(f, overrides, huge=False)
    if f.type == F.TYPE_MESSAGE:  # many copies of a small message: a large one could be gigabytes
        one_small = st.just(getattr(pb, f.message_type.name)(**({"role": "user"} if f.name == "messages" else {})))
    else:
        one_small = one
    oversized = st.tuples(one_small, st.sampled_from([1000, 50_000])).map(lambda xn: [xn[0]] * xn[1])
    return st.one_of(st.lists(one, max_size=4), oversized)


def message(desc: Descriptor, overrides: dict | None = None) -> st.SearchStrategy:
    """Requests of type desc: each field unset or any value its type allows (overrides by field name)."""
    overrides = overrides or {}
    cls = getattr(pb, desc.name)
    fields = {f.name: _field(f, overrides) for f in desc.fields}
    return st.fixed_dictionaries({}, optional=fields).map(lambda kw: cls(**kw))


def raw_bodies(desc: Descriptor) -> st.SearchStrategy[bytes]:
    """Bytes sent as a request of type desc: random, truncated, and other syscalls' requests."""
    others = [getattr(pb, m.input_type.name) for m in SERVICE.methods]
    foreign = st.sampled_from(others).flatmap(lambda cls: message(cls.DESCRIPTOR)).map(
        lambda msg: msg.SerializeToString())
    own = message(desc).map(lambda msg: msg.SerializeToString())
    truncated = st.tuples(own, st.integers(1, 8)).map(lambda bn: bn[0][:-bn[1]])
    wrong_wire = st.sampled_from([b"\x08", b"\x0a\xff", b"\x0a\x05\xff\xfe\xfd\xfc\xfb", b"\xff\xff\xff\xff",
                                  b"\x0d\x00", b"\x12\x80\x80\x80\x80\x10", b"\x00", b"\x07"])
    return st.one_of(st.binary(max_size=64), foreign, truncated, wrong_wire)
