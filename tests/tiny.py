"""Tiny random models and a tiny tokenizer, built from configs: no hub, no downloads."""
from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (AutoModelForCausalLM, LlamaConfig, MistralConfig, PreTrainedTokenizerFast,
                          Qwen2Config)

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = ["The quick brown fox jumps over the lazy dog.", "Hello world, this is llmos speaking.",
          "An operating system for language models: processes, pages, signals and syscalls.",
          "Once upon a time there was a kernel that scheduled tokens fairly."] * 20
VOCAB = 384


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 8, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def tiny_config(family: str = "llama", **over):
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  eos_token_id=2, bos_token_id=0, pad_token_id=0, tie_word_embeddings=False)
    common.update(over)
    if family == "llama":
        return LlamaConfig(**common)
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "mistral":
        common.setdefault("sliding_window", None)
        return MistralConfig(**common)
    raise ValueError(family)


def tiny_model(family: str = "llama", seed: int = 0, dtype=torch.float32, **over):
    torch.manual_seed(seed)
    cfg = tiny_config(family, **over)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    # Larger weights than the default init make logits peaked, so greedy argmax is not a
    # coin toss between near-equal logits that any change of summation order would flip.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.15)
    return model.eval()


def block_values(model, bits: int = 4) -> None:
    """Round every Linear weight of `model`, in place, to the values of GGUF blocks (Q4_1 for
    bits=4, Q8_0 for 8) dequantized to fp32, as a model loaded from a GGUF file holds them."""
    with torch.no_grad():
        for mod in model.modules():
            if type(mod) is torch.nn.Linear:
                mod.weight.copy_(block_rounded(mod.weight, bits))


def block_rounded(w: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """w [out, in] rounded to block values: fp16 scales (and minimums) per 32 inputs, dequantized
    as the GGUF reader does it (a multiply, then an add)."""
    g = w.detach().float().reshape(w.shape[0], -1, 32)
    if bits == 4:
        lo = g.amin(-1).half().float()
        d = ((g.amax(-1) - lo) / 15).half().float()
        q = ((g - lo[..., None]) / d[..., None]).round().clamp(0, 15)
        return (q * d[..., None] + lo[..., None]).reshape(w.shape)
    d = (g.abs().amax(-1) / 127).half().float()
    q = (g / d[..., None]).round().clamp(-128, 127)
    return (q * d[..., None]).reshape(w.shape)
