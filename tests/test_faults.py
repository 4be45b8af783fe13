"""Faults around a real llmosd with a deliberately tiny KV pool: clients killed mid-stream, a
pool far too small for the work, and models that cannot be loaded.

Processes are not tied to the connection that made them (only the HTTP gateway ends a process
whose client disconnects): a client that dies leaves its process running to its end, or
blocked for input and re-attachable; either way its pages come back once it ends.
"""
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from daemon import start_daemon
from llmos.syscalls.sdk import SyscallError

MODEL = "tiny-llama"
PAGES = 8  # 128 tokens of KV for everyone together
CLIENT = """
import sys
from llmos.syscalls.sdk import Client
with Client(sys.argv[1]) as c:
    interactive = sys.argv[2] == "interactive"
    pid = c.spawn("tiny-llama", messages=[{"role": "user", "content": "Hi"}], max_tokens=int(sys.argv[3]),
                  ignore_eos=True, interactive=interactive)
    print(pid, flush=True)
    for ch in c.read(pid):
        print(ch.offset, flush=True)
"""


@pytest.fixture(scope="module")
def d(tmp_path_factory, tiny_model_dir):
    daemon = start_daemon(tmp_path_factory.mktemp("faults-state"), str(tiny_model_dir), "--kv-pages", str(PAGES),
                          "--page-size", "16", "--token-budget", "32", "--grace", "2")
    yield daemon
    daemon.stop_cleanly()


@pytest.fixture(scope="module")
def ref(tiny_model_dir):
    from conftest import Reference
    from transformers import AutoModelForCausalLM
    return Reference(AutoModelForCausalLM.from_pretrained(tiny_model_dir))


def no_pages_in_use(c, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (pool := c.meminfo(MODEL)[0]).used and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (pool.used, pool.swapped) == (0, 0)
    assert c.ps(live_only=True) == []


def client_killed_mid_stream(d, mode: str, max_tokens: int) -> int:
    """Run the SDK in a subprocess, SIGKILL it once output streams; returns the pid it spawned."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-c", CLIENT, str(d.socket), mode, str(max_tokens)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    pid = int(proc.stdout.readline())
    proc.stdout.readline()  # a first chunk has arrived: the stream is live
    with d.client(timeout=60) as c:
        c.kill(pid, "STOP")  # hold the process mid-answer (unless it has already ended) while its client dies
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        c.kill(pid, "CONT")
    return pid


def test_a_client_killed_mid_stream_leaves_its_process_to_finish(d):
    pid = client_killed_mid_stream(d, "batch", 100)
    with d.client(timeout=60) as c:
        r = c.wait(pid)
        assert (r.state, r.reason, r.usage.generated_tokens, r.usage.pages_held) == ("exited", "length", 100, 0)
        assert "".join(ch.text for ch in c.read(pid)) == r.output
        no_pages_in_use(c)


def test_an_interactive_process_outlives_its_killed_client_and_kill_frees_it(d):
    pid = client_killed_mid_stream(d, "interactive", 40)
    with d.client(timeout=60) as c:
        turn = c.wait(pid, until="turn")  # re-attachable: it waits for its next input
        assert turn.state == "blocked" and turn.usage.generated_tokens == 40 and turn.usage.pages_held > 0
        c.write(pid, "And then?")
        assert c.wait(pid, until="turn").usage.generated_tokens == 80
        with pytest.raises(SyscallError) as e:  # a third turn would outgrow the whole pool: refused, not stuck
            c.write(pid, "And then?")
        assert e.value.code == "resource_exhausted" and f"the pool holds only {PAGES} pages" in e.value.message
        assert c.stat(pid).state == "blocked"
        c.kill(pid)
        assert c.wait(pid).usage.pages_held == 0
        no_pages_in_use(c)


def test_a_full_pool_queues_and_swaps_and_every_output_is_right(d, ref, tokenizer):
    prompts = [f"Hello world {i}" for i in range(12)]  # each needs up to 3 pages: 36 wanted, 8 exist
    outs: dict[int, str] = {}
    errors: list[Exception] = []

    def one(i: int) -> None:
        try:
            with d.client(timeout=300) as cl:
                pid = cl.spawn(MODEL, prompts[i], max_tokens=32, ignore_eos=True)
                outs[i] = "".join(ch.text for ch in cl.read(pid))
                r = cl.wait(pid, reap=True)
                assert (r.state, r.reason) == ("exited", "length")
                usage.append(r.usage)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    usage: list = []
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == [] and len(outs) == len(prompts)
    for i, p in enumerate(prompts):
        want = tokenizer.decode(ref.greedy(tokenizer(p)["input_ids"], 32), skip_special_tokens=True)
        assert outs[i] == want, (i, p)
    assert sum(u.preemptions for u in usage) > 0 and sum(u.swaps for u in usage) > 0
    with d.client(timeout=60) as c:
        no_pages_in_use(c)


def corrupt(src, dst, how: str):
    shutil.copytree(src, dst)
    if how == "garbage config.json":
        (dst / "config.json").write_text("{this is not json")
    elif how == "truncated weights":
        os.truncate(dst / "model.safetensors", 1000)
    elif how == "no weights":
        (dst / "model.safetensors").unlink()
    else:
        (dst / "tokenizer.json").write_text("garbage")
    return dst


@pytest.mark.parametrize("how", ["garbage config.json", "truncated weights", "no weights", "garbage tokenizer"])
def test_a_corrupt_model_fails_to_load_and_the_daemon_keeps_serving(d, tiny_model_dir, tmp_path, how):
    bad = corrupt(tiny_model_dir, tmp_path / "bad-model", how)
    with d.client(timeout=60) as c:
        pid = c.spawn(MODEL, "Once upon a time", max_tokens=60, ignore_eos=True)  # running through the failure
        with pytest.raises(SyscallError) as e:
            c.load(str(bad), name="bad")
        assert e.value.code == "invalid_argument" and "cannot load the model" in e.value.message
        assert "\n" not in e.value.message and "Traceback" not in e.value.message
        assert [m.name for m in c.models().loaded] == [MODEL]
        assert c.wait(pid).usage.generated_tokens == 60
        assert c.generate(MODEL, "Hello", max_tokens=4, ignore_eos=True)
        no_pages_in_use(c)


def test_a_model_path_too_long_for_the_filesystem_is_a_clean_error(d):
    with d.client(timeout=60) as c:
        with pytest.raises(SyscallError) as e:
            c.load("🦙" * 100)
        assert e.value.code == "invalid_argument" and "File name too long" in e.value.message
