"""Paged attention, plugged into transformers models through their AttentionInterface.

A forward pass runs every scheduled process's new tokens packed into one row [1, T]. For
each layer this function writes the new keys and values into the KV pool at
`slot_mapping`, then reads each process's whole context back through its page table.
Processes owed one token (decode) are attended together in one call: llmos::paged_decode
(drivers/csrc/paged_attention.cpp), which reads each row's pages where they lie, or, where it
does not serve, one padded SDPA call over the pages gathered; longer slices (prefill chunks)
are attended one by one. The metadata arrives as a keyword
argument of the model's forward, so nothing global names "the current batch". A forward
without it (scoring a whole window, training) is plain causal attention over its own tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from llmos.drivers import ext

ATTN_NAME = "llmos_paged"


@dataclass
class PrefillSlice:
    """A run of several new tokens of one process: rows [start, end) of the packed batch."""

    start: int
    end: int
    first_pos: int  # position of the first new token in its sequence
    pages: torch.Tensor  # [num_pages] page ids covering positions [0, first_pos + end - start)


@dataclass
class PagedBatch:
    """Everything paged attention needs for one forward pass, passed explicitly."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: [num_pages, page_size, kv_heads, head_dim]
    slot_mapping: torch.Tensor  # [T]: page * page_size + offset of each new token
    decode_rows: torch.Tensor | None  # [B] rows of the packed batch that are single-token slices
    decode_pages: torch.Tensor | None  # [B, P] page tables, padded with page 0
    decode_lens: torch.Tensor | None  # [B] context length including the new token
    prefills: list[PrefillSlice]
    _masks: dict = field(default_factory=dict)

    def decode_mask(self, window: int | None) -> torch.Tensor:
        """[B, 1, 1, P*S] bool: which padded key positions each decode row may see."""
        key = ("d", window)
        if key not in self._masks:
            page_size = self.kv[0][0].shape[1]
            kpos = torch.arange(self.decode_pages.shape[1] * page_size, device=self.slot_mapping.device)
            lens = self.decode_lens[:, None]
            mask = kpos[None, :] < lens
            if window is not None:
                mask &= kpos[None, :] > (lens - 1) - window
            self._masks[key] = mask[:, None, None, :]
        return self._masks[key]

    def prefill_mask(self, i: int, window: int | None) -> torch.Tensor | None:
        """[n, L] bool causal mask of prefill slice i; None when plain causal SDPA is exact."""
        s = self.prefills[i]
        n = s.end - s.start
        if s.first_pos == 0 and window is None:
            return None
        key = ("p", i, window)
        if key not in self._masks:
            dev = self.slot_mapping.device
            qpos = torch.arange(s.first_pos, s.first_pos + n, device=dev)[:, None]
            kpos = torch.arange(s.first_pos + n, device=dev)[None, :]
            mask = kpos <= qpos
            if window is not None:
                mask &= kpos > qpos - window
            self._masks[key] = mask
        return self._masks[key]


def paged_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float | None = None,
                    sliding_window: int | None = None, llmos_batch: PagedBatch | None = None,
                    **_: object) -> tuple[torch.Tensor, None]:
    """query [1, H, T, D], key/value [1, Hkv, T, D] → output [1, T, H, D]."""
    if llmos_batch is None:
        return plain_attention(query, key, value, attention_mask, scaling, sliding_window, **_)
    b = llmos_batch
    k_pool, v_pool = b.kv[module.layer_idx]
    num_pages, page_size, kv_heads, head_dim = k_pool.shape
    k_new = key[0].transpose(0, 1)  # [T, Hkv, D]
    v_new = value[0].transpose(0, 1)
    k_flat = k_pool.view(num_pages * page_size, kv_heads, head_dim)
    v_flat = v_pool.view(num_pages * page_size, kv_heads, head_dim)
    k_flat.index_copy_(0, b.slot_mapping, k_new.to(k_pool.dtype))
    v_flat.index_copy_(0, b.slot_mapping, v_new.to(v_pool.dtype))

    q = query[0]  # [H, T, D]
    gqa = q.shape[0] != kv_heads
    if not b.prefills and b.decode_rows is not None:  # every row is a decode, in order: no row gather or scatter
        od = _decode(q.transpose(0, 1).unsqueeze(2), k_pool, v_pool, b, sliding_window, scaling, gqa)
        return od.transpose(1, 2), None  # [B, 1, H, D] is [1, T, H, D] in memory order
    out = torch.empty(q.shape[1], q.shape[0], q.shape[2], dtype=q.dtype, device=q.device)  # [T, H, D]
    if b.decode_rows is not None:
        rows = b.decode_rows
        qd = q.index_select(1, rows).transpose(0, 1).unsqueeze(2)  # [B, H, 1, D]
        out[rows] = _decode(qd, k_pool, v_pool, b, sliding_window, scaling, gqa)[:, :, 0, :]
    for i, s in enumerate(b.prefills):
        qp = q[:, s.start:s.end].unsqueeze(0)  # [1, H, n, D]
        mask = b.prefill_mask(i, sliding_window)
        if mask is None:  # the slice is its process's whole context: no need to read the pool back
            kp, vp = key[:, :, s.start:s.end], value[:, :, s.start:s.end]
        else:
            kp = _gather(k_pool, s.pages[None], 1)[:, :, :s.first_pos + s.end - s.start].to(q.dtype)
            vp = _gather(v_pool, s.pages[None], 1)[:, :, :s.first_pos + s.end - s.start].to(q.dtype)
        op = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, is_causal=mask is None,
                                            scale=scaling, enable_gqa=gqa)
        out[s.start:s.end] = op[0].transpose(0, 1)
    return out.unsqueeze(0), None


def plain_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float | None = None,
                    sliding_window: int | None = None, dropout: float = 0.0, **_: object) -> tuple[torch.Tensor, None]:
    """A forward with no llmos_batch (scoring a window, a training step): causal SDPA over the
    given tokens alone, no pages read or written. [B, H, T, D] → [B, T, H, D]."""
    n = query.shape[2]
    mask = attention_mask
    if mask is None and sliding_window is not None and sliding_window < n:
        pos = torch.arange(n, device=query.device)
        mask = (pos[None, :] <= pos[:, None]) & (pos[None, :] > pos[:, None] - sliding_window)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=mask is None,
                                         dropout_p=dropout, scale=scaling, enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


def _decode(qd: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, b: PagedBatch, window: int | None,
            scaling: float | None, gqa: bool) -> torch.Tensor:
    """Attention of the decode rows qd [B, H, 1, D] over their page tables → [B, H, 1, D]: read
    in place by llmos::paged_decode where it serves (fp32 on the CPU, the fused ops built), else
    the pages gathered into one padded copy for SDPA."""
    if in_place(qd, k_pool):
        scale = scaling if scaling is not None else qd.shape[-1] ** -0.5
        out = torch.ops.llmos.paged_decode(qd[:, :, 0], k_pool, v_pool, b.decode_pages, b.decode_lens, scale, window or 0)
        return out.unsqueeze(2)
    kd = _gather(k_pool, b.decode_pages, qd.shape[0]).to(qd.dtype)  # [B, Hkv, L, D]
    vd = _gather(v_pool, b.decode_pages, qd.shape[0]).to(qd.dtype)
    return F.scaled_dot_product_attention(qd, kd, vd, attn_mask=b.decode_mask(window), scale=scaling, enable_gqa=gqa)


def in_place(q: torch.Tensor, pool: torch.Tensor) -> bool:
    """Whether decode attention reads the pool in place (llmos::paged_decode, drivers/csrc/)."""
    return q.device.type == "cpu" and q.dtype == pool.dtype == torch.float32 and ext.available()


def _gather(pool: torch.Tensor, pages: torch.Tensor, bsz: int) -> torch.Tensor:
    """Read whole pages through page tables: [B, P] → [B, Hkv, P*S, D]."""
    g = pool.index_select(0, pages.flatten())  # [B*P, S, Hkv, D]; ~6x faster than pool[pages]
    return g.view(bsz, -1, pool.shape[2], pool.shape[3]).transpose(1, 2)


def register() -> str:
    """Register paged attention with transformers (idempotent); returns its name.

    No mask function is registered on purpose: transformers then skips building masks,
    and the masks this function needs come from the PagedBatch.
    """
    AttentionInterface.register(ATTN_NAME, paged_attention)
    return ATTN_NAME
