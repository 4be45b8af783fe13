"""The shell as a user runs it: one-shot commands from bash, and the REPL in a pseudo-terminal."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pexpect
import pytest

MODEL = "tiny-llama"
LLMOS = [sys.executable, "-m", "llmos.shell.cli"]


def llmos(d, *args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*LLMOS, *args], capture_output=True, text=True, timeout=60, env=env or d.env, **kw)


def one_line_error(r: subprocess.CompletedProcess) -> None:
    assert r.returncode != 0 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


def test_run_prints_exactly_the_generated_text(llmosd):
    r = llmos(llmosd, "run", MODEL, "The quick brown fox", "--max-tokens", "20", "--temperature", "0",
              "--ignore-eos")
    with llmosd.client() as c:
        want = c.generate(MODEL, "The quick brown fox", max_tokens=20, temperature=0, ignore_eos=True)
    assert r.returncode == 0 and r.stdout == want and r.stderr == ""


def test_run_json(llmosd):
    r = llmos(llmosd, "run", MODEL, "Hello", "-n", "4", "--ignore-eos", "--json")
    out = json.loads(r.stdout)
    assert out["state"] == "exited" and out["proc"]["usage"]["generated_tokens"] == 4 and out["output"]


def test_tables_as_json(llmosd):
    pid = json.loads(llmos(llmosd, "run", MODEL, "Hi", "-n", "3", "--json").stdout)["pid"]
    assert pid in [p["pid"] for p in json.loads(llmos(llmosd, "ps", "--json").stdout)]
    assert json.loads(llmos(llmosd, "free", "--json").stdout)[0]["model"] == MODEL
    assert json.loads(llmos(llmosd, "lsdev", "--json").stdout)[0]["kind"] == "cpu"
    assert MODEL in [m["name"] for m in json.loads(llmos(llmosd, "models", "--json").stdout)["loaded"]]
    assert "PID" in llmos(llmosd, "ps").stdout and "TOTAL" in llmos(llmosd, "free").stdout
    assert "loaded model" in llmos(llmosd, "dmesg").stdout


def test_stop_cont_fork_wait_kill(llmosd):
    with llmosd.client() as c:
        pid = c.spawn(MODEL, "Hello", max_tokens=6, interactive=True, ignore_eos=True)
        c.wait(pid, until="turn")
        assert llmos(llmosd, "stop", str(pid)).returncode == 0
        assert c.stat(pid).state == "stopped"
        assert llmos(llmosd, "cont", str(pid)).returncode == 0
        assert c.stat(pid).state == "blocked"
        child = int(llmos(llmosd, "fork", str(pid), "--text", "more", "--max-tokens", "4").stdout)
        assert c.stat(child).ppid == pid
        assert llmos(llmosd, "kill", str(pid), "-s", "KILL").returncode == 0
        r = llmos(llmosd, "wait", str(pid))
        assert r.returncode == 1 and "killed: signal KILL" in r.stderr
        c.wait(child, until="turn")
        c.kill(child)
        r = llmos(llmosd, "wait", str(child))
        assert r.stdout == c.wait(child).output and c.stat(child).usage.generated_tokens == 4
        assert llmos(llmosd, "attach", str(child)).stdout == r.stdout


def test_load_unload(llmosd, tiny_model_dir):
    r = llmos(llmosd, "load", str(tiny_model_dir), "--name", "shell-loaded")
    assert r.returncode == 0 and r.stdout.startswith("loaded shell-loaded")
    assert llmos(llmosd, "unload", "shell-loaded").returncode == 0
    one_line_error(llmos(llmosd, "unload", "shell-loaded"))


@pytest.mark.parametrize("args", [["kill", "424242"], ["kill", "abc"], ["run"], ["frobnicate"],
                                  ["run", "nope", "hi"], ["run", MODEL, "hi", "-t", "-5"], ["kill", "1", "-s", "HUP"]])
def test_bad_input_is_one_line(llmosd, args):
    one_line_error(llmos(llmosd, *args))


def test_no_daemon_says_how_to_start_one(tmp_path):
    env = {**os.environ, "LLMOS_SOCKET": str(tmp_path / "none.sock")}
    for args in (["ps"], ["run", MODEL, "hi"], []):
        r = subprocess.run([*LLMOS, *args], capture_output=True, text=True, timeout=60, env=env)
        one_line_error(r)
        assert "llmosd" in r.stderr


def test_ctrl_c_during_run_terminates_the_process(llmosd):
    """Ctrl-C sends TERM to the running pid. The tiny model can finish its 480 tokens before
    the signal lands, so a run that beat the signal is tried again."""
    with llmosd.client() as c:
        for _ in range(5):
            before = {q.pid for q in c.ps()}  # the daemon is shared: other tests' processes may be live
            # A test run started in the background (`... &`) inherits SIGINT ignored: restore it.
            p = subprocess.Popen([*LLMOS, "run", MODEL, "Hello", "-n", "480", "--ignore-eos"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=llmosd.env,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            mine, deadline = [], time.monotonic() + 30
            while not mine and time.monotonic() < deadline:
                mine = [q for q in c.ps(model=MODEL) if q.pid not in before]
            (proc,) = mine  # `run` may still be inside its Spawn call: Ctrl-C must reach the pid anyway
            p.send_signal(signal.SIGINT)
            code = p.wait(30)
            r = c.wait(proc.pid, timeout=10)
            if code == 0 and (r.state, r.reason) == ("exited", "length"):
                continue  # it finished first
            assert code == 130
            assert (r.state, r.reason) == ("killed", "terminated")
            assert f"[pid {proc.pid} sent TERM]" in p.stderr.read().decode()
            return
        pytest.fail("every run finished before Ctrl-C reached it")


def test_chat_from_a_pipe(llmosd):
    r = llmos(llmosd, "chat", MODEL, "-n", "4", "--ignore-eos", input="Hello\nMore please\n/exit\n")
    assert r.returncode == 0 and r.stdout.count("you> ") == 3 and len(r.stdout.splitlines()) == 3
    with llmosd.client() as c:
        (p,) = [p for p in c.ps() if p.interactive and p.usage.generated_tokens == 8]
        assert p.state == "killed"


def test_top_draws_frames(llmosd):
    r = llmos(llmosd, "top", "-i", "2", "-d", "0.05")
    assert r.returncode == 0 and "llmos top" in r.stdout and "PID" in r.stdout


def _screen(child) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", child.before or "")


def test_repl(llmosd):
    env = {**llmosd.env, "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm"}
    with llmosd.client() as c:
        want = c.generate(MODEL, "Hello world", max_tokens=10, ignore_eos=True)
    child = pexpect.spawn(LLMOS[0], LLMOS[1:], env=env, encoding="utf-8", timeout=30, dimensions=(50, 200))
    try:
        child.expect("Ctrl-D to leave")
        child.sendline("run tiny-llama 'Hello world' -n 10 --ignore-eos")
        child.expect_exact(want)
        child.sendline("ps --live")
        child.expect("REASON")
        child.sendline("run tiny-llama 'Hello world' -n 8 | run tiny-llama Summarize -n 5 --ignore-eos")
        child.sendline("kill 424242")
        child.expect("error: no process with pid 424242")
        with llmosd.client() as c:
            # the far end waited for input: it answered once, to the first command's output
            piped = [p for p in c.ps() if p.interactive and p.usage.generated_tokens == 5]
            assert piped and piped[-1].state == "killed"
        child.send("fre\t")
        child.expect("free")
        child.sendline("")
        child.expect("TOTAL")
        child.sendline("frobnicate")
        child.expect("error: argument COMMAND: invalid choice")
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert "run tiny-llama 'Hello world' -n 10 --ignore-eos" in (llmosd.state_dir / "history").read_text()
