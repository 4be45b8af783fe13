import copy
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(min(2, torch.get_num_threads()))

from tiny import tiny_model, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


class Reference:
    """transformers' own generate() on a private copy of the model: the correctness bar."""

    def __init__(self, model):
        self.model = copy.deepcopy(model)
        self.model.generation_config.eos_token_id = None
        self.model.generation_config.pad_token_id = 0

    def greedy(self, tokens: list[int], n: int) -> list[int]:
        with torch.no_grad():
            dev = self.model.device
            out = self.model.generate(torch.tensor([tokens], device=dev),
                                      attention_mask=torch.ones(1, len(tokens), dtype=torch.long, device=dev),
                                      max_new_tokens=n, do_sample=False)
        return out[0, len(tokens):].tolist()


@pytest.fixture
def make_kernel(tokenizer):
    """A kernel serving a fresh tiny model, with its transformers reference."""
    from llmos.drivers.cpu import CPUDriver
    from llmos.kernel import Kernel, KernelConfig, SchedConfig, SpecConfig

    def make(family="llama", pages=64, page_size=4, budget=64, swap=None, preempt="swap", policy="fcfs",
             dtype=torch.float32, quantize=None, speculate: "SpecConfig | None" = None, prefill_budget=None,
             compile=False, blocks: int | None = None, **over):
        model = tiny_model(family, dtype=dtype, **over)
        if blocks:  # weights that are GGUF block values (4 or 8 bits), as a model loaded from a GGUF file
            from tiny import block_values
            block_values(model, blocks)
        if quantize:  # the reference is then transformers' generate() on the same quantized model
            from llmos.drivers.quant import quantize_model
            quantize_model(model, quantize, calibration=list(range(3, 200)))
        ref = Reference(model)
        cfg = KernelConfig(page_size=page_size, kv_pages=pages, swap_pages=swap,
                           sched=SchedConfig(policy=policy, token_budget=budget, preempt=preempt,
                                             prefill_budget=prefill_budget or budget,  # default: every step at `budget`
                                             speculate=speculate or SpecConfig()))
        k = Kernel(CPUDriver(compile=compile), cfg)
        k.adopt_model("tiny", model, tokenizer)
        return k, ref
    return make


@pytest.fixture(scope="session")
def model_store():
    """The model store shared by every test that uses the real default model.

    It lives under the repo's .pytest_cache (or LLMOS_TEST_STORE), so the GGUF is
    converted once per checkout, not once per test run.
    """
    from llmos.kernel.models import ModelStore

    root = os.environ.get("LLMOS_TEST_STORE") or os.path.join(os.path.dirname(__file__), "..", ".pytest_cache",
                                                               "llmos-models")
    return ModelStore(root)


from daemon import llmosd, tiny_model_dir  # noqa: E402,F401  (the session's daemon, for the syscall and shell tests)
