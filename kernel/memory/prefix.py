"""Chained hashes of full pages: a page's hash names its tokens *and* every token before it."""
from __future__ import annotations

from collections.abc import Sequence


def page_hashes(tokens: Sequence[int], page_size: int, start: int = 0, parent: int | None = None,
                salt: int = 0) -> list[int]:
    """Hashes of the full pages of `tokens` from page index `start` on.

    `parent` is the hash of page `start - 1` (None for the first page). `salt` separates
    caches whose KV differs for the same tokens (another model or adapter).
    """
    out: list[int] = []
    h = parent if parent is not None else salt
    for i in range(start, len(tokens) // page_size):
        h = hash((h, tuple(tokens[i * page_size:(i + 1) * page_size])))
        out.append(h)
    return out
