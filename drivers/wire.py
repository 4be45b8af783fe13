"""The driver interface on the wire: steps and results as msgpack, so a driver can run in
another process or on another machine."""
from __future__ import annotations

import dataclasses

import msgpack

from llmos.drivers.driver import DeviceInfo, ModelInfo, SamplingParams, SeqSlice, StepInput


def pack_step(batch: StepInput) -> bytes:
    seqs = [[s.seq_id, s.token_ids, s.start_pos, s.page_table, s.sample,
             [s.sampling.temperature, s.sampling.top_k, s.sampling.top_p, s.sampling.seed], s.adapter]
            for s in batch.seqs]
    return msgpack.packb({"seqs": seqs, "moves": [list(m) for m in batch.moves]})


def unpack_step(data: bytes) -> StepInput:
    d = msgpack.unpackb(data)
    seqs = [SeqSlice(i, toks, start, table, sample, SamplingParams(*sp), adapter)
            for i, toks, start, table, sample, sp, adapter in d["seqs"]]
    return StepInput(seqs, [tuple(m) for m in d["moves"]])


def pack_info(info: DeviceInfo | ModelInfo) -> bytes:
    return msgpack.packb(dataclasses.asdict(info))


def unpack_info(cls: type, data: bytes):
    return cls(**msgpack.unpackb(data))
