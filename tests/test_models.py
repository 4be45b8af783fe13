"""Model sources: a local transformers directory, loading, unloading and chat rendering."""
import pytest

from llmos.drivers.cpu import CPUDriver
from llmos.kernel import FailedPrecondition, Kernel, KernelConfig, NotFound, ROOT, SpawnSpec, StopRules
from llmos.kernel.models import ModelStore


@pytest.fixture
def model_dir(tmp_path, tokenizer):
    from tiny import tiny_model

    path = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_load_a_local_directory_and_run(model_dir, tmp_path):
    from conftest import Reference
    from transformers import AutoModelForCausalLM

    k = Kernel(CPUDriver(), KernelConfig(kv_pages=32), ModelStore(tmp_path / "store"))
    m = k.load_model(ROOT, str(model_dir))
    assert m.name == "tiny-llama" and m.info.architecture == "LlamaForCausalLM" and m.info.num_layers == 2
    assert k.load_model(ROOT, str(model_dir)) is m  # already loaded: the same model
    p = k.spawn(ROOT, SpawnSpec("tiny-llama", prompt="Hello world", stop=StopRules(max_tokens=8, ignore_eos=True)))
    k.run_until_idle()
    ref = Reference(AutoModelForCausalLM.from_pretrained(model_dir))
    assert p.out_tokens == ref.greedy(p.tokens[:p.usage.prompt_tokens], 8)
    assert any("loaded model tiny-llama" in msg for _, _, msg in k.ring)


def test_unload_frees_the_name(model_dir, tmp_path):
    k = Kernel(CPUDriver(), KernelConfig(kv_pages=32), ModelStore(tmp_path / "store"))
    k.load_model(ROOT, str(model_dir), name="a")
    k.unload_model(ROOT, "a")
    with pytest.raises(NotFound, match="not loaded"):
        k.spawn(ROOT, SpawnSpec("a", prompt="x"))
    with pytest.raises(NotFound, match="not loaded"):
        k.unload_model(ROOT, "a")


def test_a_directory_without_config_is_named_as_such(tmp_path):
    k = Kernel(CPUDriver(), KernelConfig(kv_pages=8), ModelStore(tmp_path / "store"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFound, match="no config.json"):
        k.load_model(ROOT, str(tmp_path / "empty"))


def test_a_kernel_without_a_store_cannot_load(tmp_path):
    with pytest.raises(FailedPrecondition, match="no model store"):
        Kernel(CPUDriver(), KernelConfig(kv_pages=8)).load_model(ROOT, "smollm2-135m")
