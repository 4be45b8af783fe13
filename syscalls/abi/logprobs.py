"""Log-probabilities of generated tokens: what a process records when its sampling asks for
them, what Read and Wait return, and what the OpenAI gateway shapes as `logprobs`.

They are log-softmax of the model's logits for that position, after any grammar mask and
before temperature, top-k or top-p (the model's own distribution over what was allowed).
"""
from __future__ import annotations

from dataclasses import dataclass, field

MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its id, its text, its log-probability and the top alternatives
    ((token, text, logprob), most likely first). `text_end` is where its text ends in the
    process's output, so a stream can hand each chunk the tokens whose text it carries."""

    token: int
    text: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()
    text_end: int = field(default=0, compare=False)
