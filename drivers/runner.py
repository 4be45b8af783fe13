"""ModelRunner: turns a scheduled step into tensors (positions, slot mapping, page tables),
runs the model once over the packed tokens (each slice under its LoRA adapter, if any), and samples."""
from __future__ import annotations

import math

import torch

from llmos.drivers.attention import PagedBatch, PrefillSlice
from llmos.drivers.compiled import CompiledDecode
from llmos.drivers.driver import StepInput, StepOutput
from llmos.drivers.lora import LoraSet
from llmos.drivers.lean import LeanDecoder
from llmos.drivers.grammar_mask import mask_logits
from llmos.drivers.sampler import accept, logprobs, sample
from llmos.drivers.stack import StackedDecode


class ModelRunner:
    """One loaded model on one device, with its KV pool and host swap space."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model = model
        self.device = device
        cfg = model.config
        self.num_layers = cfg.num_hidden_layers
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.dtype = next(model.parameters()).dtype
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.swap: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.page_size = 0
        self.lora = LoraSet(model)  # adapters served over this model (drivers/lora.py)
        self.lean = LeanDecoder(model) if LeanDecoder.supports(model) else None
        self.compiled: CompiledDecode | None = None  # decode steps through torch.compile (drivers/compiled.py)
        self.stack: StackedDecode | None = None  # decode steps as one C++ call (drivers/stack.py)

    def kv_bytes_per_page(self, page_size: int) -> int:
        """Bytes of one page of KV, keys and values of every layer."""
        return 2 * self.num_layers * page_size * self.kv_heads * self.head_dim * self.dtype.itemsize

    def swap_bytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k, _ in self.swap)

    def free_kv(self) -> None:
        self.kv, self.swap = [], []
        if self.stack is not None:
            self.stack.reset()

    def alloc_kv(self, num_pages: int, page_size: int, swap_pages: int) -> int:
        """Allocate the pool; returns its size in bytes."""
        self.page_size = page_size
        shape = (num_pages, page_size, self.kv_heads, self.head_dim)
        sshape = (swap_pages, page_size, self.kv_heads, self.head_dim)
        pin = self.device.type == "cuda"
        self.kv = [(torch.zeros(shape, dtype=self.dtype, device=self.device),
                    torch.zeros(shape, dtype=self.dtype, device=self.device)) for _ in range(self.num_layers)]
        # Swap slots are always written before they are read: no need to fill them.
        self.swap = [(torch.empty(sshape, dtype=self.dtype, pin_memory=pin),
                      torch.empty(sshape, dtype=self.dtype, pin_memory=pin)) for _ in range(self.num_layers)]
        if self.compiled is not None:
            self.compiled.warm(self.kv)
        return sum(k.numel() * k.element_size() * 2 for k, _ in self.kv)

    def read_pages(self, pages: list[int]) -> bytes:
        """These pages' keys and values, every layer, as bytes: [pages, layers, 2, page_size,
        kv_heads, head_dim] of the pool's dtype, page by page (plain bytes cross a pipe or Ray as
        they are, and a run of pages is a slice of them)."""
        idx = torch.tensor(pages, dtype=torch.long, device=self.device)
        kv = torch.stack([torch.stack((k[idx], v[idx]), dim=1) for k, v in self.kv], dim=1).cpu().contiguous()
        return kv.view(torch.uint8).numpy().tobytes()

    def write_pages(self, pages: list[int], kv: bytes) -> None:
        """Write read_pages' bytes (of a pool of the same model) into these pages."""
        shape = (len(pages), self.num_layers, 2, self.page_size, self.kv_heads, self.head_dim)
        want = math.prod(shape) * self.dtype.itemsize
        if not isinstance(kv, (bytes, bytearray)) or len(kv) != want:
            got = f"{len(kv)} bytes" if isinstance(kv, (bytes, bytearray)) else type(kv).__name__
            raise ValueError(f"KV pages of {got} do not fit {len(pages)} pages of this pool ({want} bytes)")
        data = torch.frombuffer(bytearray(kv), dtype=torch.uint8).view(self.dtype).view(shape).to(self.device)
        idx = torch.tensor(pages, dtype=torch.long, device=self.device)
        for i, (k, v) in enumerate(self.kv):
            k[idx] = data[:, i, 0]
            v[idx] = data[:, i, 1]

    def apply_moves(self, moves: list[tuple[str, int, int]]) -> None:
        """Copy-on-write copies and swap traffic, in the order the memory manager decided them."""
        for kind, src, dst in moves:
            for (k, v), (sk, sv) in zip(self.kv, self.swap):
                if kind == "copy":
                    k[dst].copy_(k[src]); v[dst].copy_(v[src])
                elif kind == "out":
                    sk[dst].copy_(k[src]); sv[dst].copy_(v[src])
                else:
                    k[dst].copy_(sk[src]); v[dst].copy_(sv[src])

    @torch.inference_mode()
    def step(self, batch: StepInput) -> StepOutput:
        """Run one forward pass; the sampled token of each slice that asked for one (and its
        log-probabilities, where its sampling asked)."""
        self.apply_moves(batch.moves)
        if not batch.seqs:
            return StepOutput()
        meta, ids, pos, keep = self._prepare(batch)
        with self.lora.applied([(s.adapter, len(s.token_ids)) for s in batch.seqs]):
            logits = self.forward(meta, ids, pos, keep)
        sampled = [s for s in batch.seqs if s.sample]
        if not sampled:
            return StepOutput()
        # A slice with a draft has a row of logits for each proposal and one after them.
        rows = [(s, j) for s in sampled for j in range(len(s.draft) + 1)]
        params = [s.sampling for s, _ in rows]
        # A constrained row after proposals is masked as the grammar stands after them.
        dead = mask_logits(logits, [s.grammar for s, _ in rows], [s.draft[:j] for s, j in rows])
        tokens = sample(logits, params, [s.start_pos + len(s.token_ids) - len(s.draft) + j for s, j in rows])
        lps = logprobs(logits, params, tokens)
        out, i = StepOutput(), 0
        for s in sampled:
            drawn = tokens[i:i + len(s.draft) + 1]
            a = accept(s.draft, drawn)
            out.tokens[s.seq_id] = drawn[a]
            if i + a in lps:
                out.logprobs[s.seq_id] = lps[i + a]
            if i + a in dead:
                out.grammar_ended[s.seq_id] = dead[i + a]
            if s.draft:
                out.accepted[s.seq_id] = drawn[:a]
                if lps:
                    out.accepted_logprobs[s.seq_id] = [lps[i + j] for j in range(a)]
            i += len(drawn)
        return out

    def forward(self, meta: PagedBatch, ids: list[int], pos: list[int], keep: list[int]) -> torch.Tensor:
        """Logits [len(keep), vocab]: through the lean forward where the model has its shape,
        else through transformers' own."""
        dev = self.device
        ids_t, pos_t = torch.tensor([ids], device=dev), torch.tensor([pos], device=dev)
        keep_t = torch.tensor(keep, dtype=torch.long, device=dev)
        if self.lean is not None:  # adapters hook the projections, which the direct path skips
            hooked = bool(self.lora.adapters)
            decodes = meta.decode_rows is not None and not meta.prefills
            fast = decodes and not hooked and (self.stack is not None or self.compiled is not None)
            return self.lean(ids_t, pos_t, meta, keep_t, hooked=hooked, layers=self._decode_layers if fast else None)
        return self.model(input_ids=ids_t, position_ids=pos_t, use_cache=False, logits_to_keep=keep_t,
                          llmos_batch=meta).logits[0]

    def _decode_layers(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: PagedBatch) -> torch.Tensor:
        """The decoder layers of a step of decode rows: one DecodeStack call where it serves this
        row count, else the compiled graphs, else the direct path op by op (the same bits each way)."""
        out = self.stack(h, cos, sin, batch) if self.stack is not None else None
        if out is not None:
            return out
        if self.compiled is not None:
            return self.compiled(h, cos, sin, batch)
        d = self.lean.direct
        return self.lean.run_layers(d.layers, h, cos, sin, d.turn(cos, sin), batch)

    def _prepare(self, batch: StepInput) -> tuple[PagedBatch, list[int], list[int], list[int]]:
        size, dev = self.page_size, self.device
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        keep: list[int] = []
        d_rows: list[int] = []
        d_tables: list[list[int]] = []
        d_lens: list[int] = []
        prefills: list[PrefillSlice] = []
        for s in batch.seqs:
            row, n, table = len(ids), len(s.token_ids), s.page_table
            ids.extend(s.token_ids)
            span = range(s.start_pos, s.start_pos + n)
            pos.extend(span)
            slots.extend(table[p // size] * size + p % size for p in span)
            end_pos = s.start_pos + n
            if s.draft:  # a verify: every row attends, as a decode row, to the context up to itself
                for j in range(n):
                    d_rows.append(row + j)
                    d_tables.append(table[:-(-(s.start_pos + j + 1) // size)])
                    d_lens.append(s.start_pos + j + 1)
                keep.extend(range(row + n - len(s.draft) - 1, row + n))
                continue
            if n == 1:
                d_rows.append(row)
                d_tables.append(table[:-(-end_pos // size)])
                d_lens.append(end_pos)
            else:
                pages = torch.tensor(table[:-(-end_pos // size)], dtype=torch.long, device=dev)
                prefills.append(PrefillSlice(row, row + n, s.start_pos, pages))
            if s.sample:
                keep.append(row + n - 1)
        decode_rows = decode_pages = decode_lens = None
        if d_rows:
            width = max(len(t) for t in d_tables)
            padded = [t + [0] * (width - len(t)) for t in d_tables]
            decode_rows = torch.tensor(d_rows, dtype=torch.long, device=dev)
            decode_pages = torch.tensor(padded, dtype=torch.long, device=dev)
            decode_lens = torch.tensor(d_lens, dtype=torch.long, device=dev)
        meta = PagedBatch(kv=self.kv, slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
                          decode_rows=decode_rows, decode_pages=decode_pages, decode_lens=decode_lens,
                          prefills=prefills)
        return meta, ids, pos, keep
