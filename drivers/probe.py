"""Fixed texts for quantization: one to calibrate activation ranges on, and a different one
to probe perplexity with, so a load can check that quantized weights still model language
about as well as the originals."""
from __future__ import annotations

import math

import torch

from llmos.drivers.driver import score_windows
from llmos.drivers.score import window_nll

PROBE_TEXT = (
    "The sun rose slowly over the hills, and the village began to wake. A baker opened his shop "
    "and the smell of fresh bread filled the narrow street. Children ran to school, laughing and "
    "calling to each other, while their parents hurried to the market to buy vegetables, fish and "
    "fruit for the week. In the small library at the end of the road, an old woman sorted books "
    "that had been returned the day before. She had worked there for forty years and knew every "
    "reader by name. Outside, the river flowed past the mill as it always had, carrying leaves and "
    "small branches towards the sea. Scientists say that water covers about seventy percent of the "
    "surface of the Earth, and that most of it is salt water in the oceans. Fresh water is found in "
    "rivers, lakes, glaciers and underground. Plants need water, light and carbon dioxide to make "
    "their food through photosynthesis, and in doing so they release the oxygen that animals breathe. "
    "A computer program is a sequence of instructions that tells a machine what to do. Programmers "
    "write these instructions in languages such as Python, C or Java, and then test them carefully, "
    "because a single mistake can make the whole program fail.")

CALIBRATION_TEXT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nCan you explain how a hash table works, with a short example in Python?<|im_end|>\n"
    "<|im_start|>assistant\nA hash table stores key-value pairs. It runs each key through a hash function "
    "to pick a bucket, so looking a key up takes constant time on average. For example:\n\n"
    "```python\nphone = {}\nphone['alice'] = '555-0100'\nprint(phone.get('alice'))\n```\n\n"
    "When two keys land in the same bucket, the table resolves the collision by chaining or probing.<|im_end|>\n"
    "The history of the city goes back more than two thousand years. Merchants crossed its bridges, "
    "armies laid siege to its walls in 1453 and 1683, and its population grew from 12,000 to 1.8 million. "
    "Q: What is 17 multiplied by 3? A: 51. Q: Name three primary colours. A: Red, blue and yellow.")


def perplexity(model: torch.nn.Module, ids: list[int], window: int = 512) -> float:
    """exp(mean next-token negative log-likelihood) of `ids`, in one forward pass per window
    (windows of window + 1 tokens overlapping by one, as evaluation processes cut them)."""
    dev = next(model.parameters()).device
    window = min(window, getattr(model.config, "max_position_embeddings", window) - 1)
    nll, count = 0.0, 0
    for chunk in score_windows(ids, window):
        n, c = window_nll(model, dev, chunk)
        nll, count = nll + n, count + c
    return math.exp(nll / max(1, count))
