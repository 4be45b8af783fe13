"""The daemon's life: a second one refused, graceful SIGTERM, Shutdown, a stale socket, TCP."""
import signal
import socket
import subprocess
import sys
import threading

from daemon import start_daemon

from llmos.syscalls.sdk import Client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_lets_running_processes_finish(tmp_path, tiny_model_dir):
    port = free_port()
    d = start_daemon(tmp_path / "a", str(tiny_model_dir), "--listen", f"127.0.0.1:{port}", "--grace", "60")
    assert f"127.0.0.1:{port}" in d.ready
    second = subprocess.run([sys.executable, "-m", "llmos.main", "--state-dir", str(tmp_path / "a"), "--model",
                             "none"], capture_output=True, text=True, timeout=60)
    assert second.returncode == 1 and "already serving" in second.stderr
    with d.client() as admin:  # TCP needs a bearer token; the owner makes one over the unix socket
        token = admin.create_token("lifecycle")[1]
    with Client(f"127.0.0.1:{port}", token=token) as c:  # over TCP
        pid = c.spawn("tiny-llama", "Hello", max_tokens=400, ignore_eos=True)
        got: list = []
        reader = threading.Thread(target=lambda: got.extend(c.read(pid)))
        reader.start()
        d.proc.send_signal(signal.SIGTERM)
        reader.join(60)
    assert got[-1].state == "exited" and got[-1].reason == "length"
    assert d.proc.wait(60) == 0 and not d.socket.exists()
    log = d.log.read_text()
    assert "msg=\"shutting down\"" in log and "msg=stopped" in log


def test_a_stale_socket_is_replaced_and_shutdown_stops(tmp_path, tiny_model_dir):
    d = start_daemon(tmp_path / "b", str(tiny_model_dir), "--log-format", "json")
    d.stop(signal.SIGKILL)
    assert d.socket.exists()  # left behind by the dead daemon
    d = start_daemon(tmp_path / "b", str(tiny_model_dir), "--log-format", "json")
    with d.client() as c:
        pid = c.spawn("tiny-llama", "Hello", max_tokens=3, interactive=True)
        c.shutdown(grace=1)
    assert d.proc.wait(60) == 0
    assert '"msg": "ended live processes at shutdown"' in d.log.read_text()
    assert pid


def test_boot_errors_are_one_line(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "llmos.main", "--state-dir", str(tmp_path), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    r = run("--device", "tpu")
    assert r.returncode == 2 and r.stderr.strip() == "llmosd: error: --device: 'tpu' is not a device: use auto, cpu, cpu:N, cuda:N or all"
    r = run("--device", "cpu", "--model", "no-such-model")
    assert r.returncode == 1 and "llmosd: error: cannot load the model 'no-such-model'" in r.stderr
    assert "Traceback" not in r.stderr
