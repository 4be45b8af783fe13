"""llmosd on the real default model, SmolLM2-135M-Instruct, through the SDK and the shell."""
import subprocess
import sys

import pytest

from daemon import start_daemon

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def real_daemon(tmp_path_factory, model_store):
    d = start_daemon(tmp_path_factory.mktemp("real"), "smollm2-135m", "--store", str(model_store.root),
                     "--kv-memory", "256MiB", timeout=600)
    yield d
    assert d.stop() == 0


def test_the_default_model_answers_a_chat_prompt(real_daemon):
    from llmos import load_model

    model = load_model("smollm2-135m", real_daemon.socket)
    answer = model.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=40)
    assert "Paris" in answer


def test_the_shell_runs_a_chat_prompt(real_daemon):
    r = subprocess.run([sys.executable, "-m", "llmos.shell.cli", "run", "smollm2-135m",
                        "What is the capital of France?", "--chat", "-n", "40", "-t", "0"],
                       capture_output=True, text=True, timeout=120, env=real_daemon.env)
    assert r.returncode == 0 and "Paris" in r.stdout
