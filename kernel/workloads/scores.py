"""Evaluation metrics, computed by the maintained libraries themselves: corpus BLEU with
sacrebleu (its defaults: 13a tokenization, exponential smoothing, 0..100) and ROUGE-1/2/L
F-measures with rouge-score (its defaults, no stemming; the mean over items, 0..1)."""
from __future__ import annotations

import math

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def bleu(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU of the hypotheses against one reference each."""
    import sacrebleu

    return {"bleu": float(sacrebleu.corpus_bleu(hypotheses, [references]).score)}


def rouge(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures over the items."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES))
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for hyp, ref in zip(hypotheses, references, strict=True):
        for name, score in scorer.score(ref, hyp).items():
            totals[name] += score.fmeasure
    n = max(1, len(hypotheses))
    return {name: total / n for name, total in totals.items()}


def perplexity(nll_sum: float, count: int) -> dict[str, float]:
    """Perplexity and mean negative log-likelihood (nats per token) over `count` predicted tokens."""
    mean = nll_sum / count if count else float("nan")
    return {"ppl": math.exp(mean) if count else float("nan"), "nll": mean, "tokens": float(count)}


SCORERS = {"bleu": bleu, "rouge": rouge}


def preload(metric: str) -> None:
    """Import a metric's library ahead of time (off the kernel thread: rouge-score pulls in nltk)."""
    if metric == "bleu":
        import sacrebleu  # noqa: F401
    elif metric == "rouge":
        from rouge_score import rouge_scorer  # noqa: F401
