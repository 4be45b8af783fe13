"""Drivers: device selection, telemetry, and CUDA where a GPU exists."""
import pytest
import torch

from llmos.drivers import open_driver
from llmos.kernel import Kernel, KernelConfig, ROOT, SpawnSpec, StopRules


def test_cpu_driver_describes_the_host():
    d = open_driver("cpu", threads=2)
    info = d.describe()
    assert info.kind == "cpu" and info.threads == 2 and 0 < info.free_memory <= info.total_memory


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "tpu:0", ""])
def test_bad_device_names_are_refused(bad):
    with pytest.raises(ValueError, match="auto, cpu or cuda:N"):
        open_driver(bad)


def test_auto_picks_cpu_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert open_driver("auto").kind == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA device"):
        open_driver("cuda:0")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_cuda_driver_matches_transformers(tokenizer):
    from conftest import Reference
    from tiny import tiny_model

    d = open_driver("cuda:0")
    info = d.describe()
    assert info.kind == "cuda" and info.total_memory > 0
    model = tiny_model("llama")
    ref = Reference(model)
    ref.model.to("cuda:0")  # the bar is transformers on the same device
    k = Kernel(d, KernelConfig(page_size=4, kv_pages=64))
    k.adopt_model("tiny", model, tokenizer)
    batch = [[5, 6, 7], list(range(10, 40)), [9] * 9]
    procs = [k.spawn(ROOT, SpawnSpec("tiny", tokens=t, stop=StopRules(max_tokens=10, ignore_eos=True))) for t in batch]
    k.run_until_idle()
    for t, p in zip(batch, procs):
        assert p.out_tokens == ref.greedy(t, 10)


@pytest.mark.parametrize("tied", [False, True])
def test_packed_weights_compute_the_same_model(tied):
    import copy

    from tiny import tiny_model

    from llmos.drivers import packed
    from llmos.drivers.quant import model_bytes

    model = tiny_model("qwen2", tie_word_embeddings=tied)  # q/k/v carry biases
    plain = copy.deepcopy(model)
    assert packed.pack_model(model) == 2 * 7 + 1  # every Linear, the LM head included
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    ids = torch.tensor([list(range(3, 40))])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, plain(ids).logits, atol=1e-5)
    if not tied:
        assert model_bytes(model) == model_bytes(plain)
    # A deep copy (the trainer's twin, an export) is a plain model with the same weights and ties.
    twin = copy.deepcopy(model)
    assert all(type(twin.get_submodule(n)) is torch.nn.Linear for n, m in plain.named_modules()
               if type(m) is torch.nn.Linear)
    for (n, p), q in zip(plain.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), n
    assert (twin.lm_head.weight is twin.model.embed_tokens.weight) == tied


def test_packed_rows_do_not_depend_on_their_batch():
    from llmos.drivers.packed import PackedGroup

    lins = [torch.nn.Linear(64, 96), torch.nn.Linear(64, 32)]
    group = PackedGroup(lins, tied=set())
    x = torch.randn(37, 64)
    with torch.inference_mode():
        full = group.compute(x)
        for n in (1, 3, 16):
            assert torch.equal(group.compute(x[:n]), full[:n])
    want = torch.cat([lin(x) for lin in lins], dim=1)
    assert torch.allclose(full, want, atol=1e-5)


def test_the_cpu_driver_serves_packed_weights(tokenizer):
    from tiny import tiny_model

    from llmos.drivers.packed import PackedLinear

    k = Kernel(open_driver("cpu", threads=2), KernelConfig(page_size=4, kv_pages=64))
    model = tiny_model("llama")
    nparams = sum(p.numel() for p in model.parameters())
    m = k.adopt_model("tiny", model, tokenizer)
    assert m.info.num_parameters == nparams  # counted before packing moved the weights out of parameters
    served = k.driver.runners["tiny"].model
    assert isinstance(served.model.layers[0].self_attn.q_proj, PackedLinear)
    assert isinstance(served.lm_head, PackedLinear)
