"""Users, tokens and quotas end to end: real llmosd subprocesses, real unix and TCP sockets.

The unix socket's user is the peer's uid (SO_PEERCRED, through llmosd's relay); TCP needs a
bearer token. The daemon's own uid is an admin. A second uid is simulated by a client that
drops root with setuid (only when the tests run as root); other users come from tokens.
"""
import json
import os
import pwd
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from daemon import start_daemon
from llmos.kernel.users.callers import User, bearer_user
from llmos.syscalls.sdk import Client, SyscallError
from llmos.kernel.users.tokens import TokenStore

MODEL = "tiny-llama"
LLMOS = [sys.executable, "-m", "llmos.shell.cli"]
USERS_TOML = """
[users.carol]
procs = 1

[users.dave]
tokens_per_min = 30
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refusal(fn) -> SyscallError:
    with pytest.raises(SyscallError) as e:
        fn()
    return e.value


class Users:
    """The users daemon: its public socket (open to every uid), its TCP address, and tokens by user."""

    def __init__(self, d, sock: Path, addr: str) -> None:
        self.d, self.sock, self.addr = d, sock, addr
        self.tokens: dict[str, str] = {}

    def unix(self, **kw) -> Client:
        return Client(self.sock, timeout=60, **kw)

    def tcp(self, user: str | None = None, token: str | None = None) -> Client:
        return Client(self.addr, timeout=60, token=token or (self.tokens[user] if user else None))


@pytest.fixture(scope="module")
def users(tmp_path_factory, tiny_model_dir):
    state = tmp_path_factory.mktemp("users-state")
    public = Path(tempfile.mkdtemp(prefix="llmos-users-"))
    public.chmod(0o755)  # a socket other uids can reach
    (state / "users.toml").write_text(USERS_TOML)
    addr = f"127.0.0.1:{free_port()}"
    d = start_daemon(state, str(tiny_model_dir), "--kv-pages", "512", "--page-size", "16", "--grace", "2",
                     "--socket", str(public / "llmosd.sock"), "--socket-mode", "0666", "--listen", addr,
                     "--quota-procs", "2", "--quota-pages", "24", "--config", str(state / "users.toml"))
    u = Users(d, public / "llmosd.sock", addr)
    with u.unix() as root:
        for name in ("alice", "bob", "carol", "dave"):
            u.tokens[name] = root.create_token(name)[1]
        u.tokens["ops"] = root.create_token("ops", user="operator", admin=True)[1]
    yield u
    d.stop_cleanly()
    shutil.rmtree(public, ignore_errors=True)


def test_the_daemon_owner_is_an_admin_on_the_unix_socket(users):
    with users.unix() as c:
        me = c.whoami()
    assert (me.user, me.admin, me.via, me.uid) == (pwd.getpwuid(os.getuid()).pw_name, True, "unix", os.getuid())
    assert not me.limits.HasField("procs")  # the admins are unlimited
    assert stat.S_IMODE(users.sock.stat().st_mode) == 0o666
    assert f"unix:{users.sock}, {users.addr}" in users.d.ready
    private = users.d.state_dir / "run" / f"grpc-{users.d.proc.pid}.sock"  # the relay's far end
    assert stat.S_IMODE(private.parent.stat().st_mode) == 0o700
    with Client(private, timeout=30) as c:  # reached around the relay: no uid on record
        e = refusal(c.whoami)
    assert e.code == "unauthenticated" and "did not come through llmosd's socket" in e.message


def test_tcp_needs_a_valid_token(users):
    with users.tcp() as c:
        e = refusal(c.ps)
    assert e.code == "unauthenticated" and "bearer token is required" in e.message
    with users.tcp(token="llmos_0123456789ab_forged") as c:
        assert refusal(c.ps).code == "unauthenticated"
    with users.tcp("alice") as c:
        me = c.whoami()
        assert (me.user, me.admin, me.via, me.token) == ("alice", False, "token", "alice")
        assert (me.limits.procs, me.limits.pages, me.limits.HasField("tokens_per_min")) == (2, 24, False)
    with grpc.insecure_channel(users.addr) as ch:  # health probes need no token
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_tokens_are_managed_from_the_shell_and_stored_hashed(users):
    env = {**os.environ, "LLMOS_SOCKET": str(users.sock)}
    shell = lambda *a: subprocess.run([*LLMOS, *a], capture_output=True, text=True, timeout=60, env=env)  # noqa: E731
    r = shell("token", "create", "erin", "--user", "erin")
    secret = r.stdout.strip()
    assert r.returncode == 0 and secret.startswith("llmos_"), r.stderr
    listed = json.loads(shell("token", "list", "--json").stdout)
    erin = next(t for t in listed if t["name"] == "erin")
    assert erin["user"] == "erin" and not erin["admin"] and secret not in json.dumps(listed)
    db = users.d.state_dir / "tokens.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert secret.encode() not in db.read_bytes() and secret.split("_", 2)[2].encode() not in db.read_bytes()
    with sqlite3.connect(db) as conn:
        assert all(len(h) == 32 for (h,) in conn.execute("SELECT hash FROM tokens"))
    with users.tcp(token=secret) as c:
        assert c.whoami().user == "erin"
        assert shell("token", "revoke", erin["id"]).returncode == 0
        assert refusal(c.whoami).code == "unauthenticated"  # at once, on the same connection
    assert "erin" not in shell("token", "list").stdout
    r = shell("token", "revoke", "erin")
    assert r.returncode == 1 and "no token named" in r.stderr
    with users.tcp("alice") as c:
        assert refusal(lambda: c.create_token("mine")).code == "permission_denied"
        assert refusal(c.tokens).code == "permission_denied"


def test_another_users_processes_are_invisible(users):
    with users.tcp("alice") as alice, users.tcp("bob") as bob, users.tcp("ops") as ops, users.unix() as root:
        a = alice.spawn(MODEL, "Hello", max_tokens=4, interactive=True, ignore_eos=True)
        alice.wait(a, until="turn")
        b = bob.spawn(MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, interactive=True)
        assert a in {p.pid for p in alice.ps()} and a not in {p.pid for p in bob.ps()}
        assert a not in {p.pid for p in bob.ps(owner="alice")}
        assert {a, b} <= {p.pid for p in root.ps()} and {a, b} <= {p.pid for p in ops.ps()}
        calls = {"stat": lambda c, pid: c.stat(pid), "kill": lambda c, pid: c.kill(pid),
                 "read": lambda c, pid: list(c.read(pid)), "wait": lambda c, pid: c.wait(pid),
                 "write": lambda c, pid: c.write(pid, "hi"), "fork": lambda c, pid: c.fork(pid),
                 "pipe_src": lambda c, pid: c.pipe(pid, b), "pipe_dst": lambda c, pid: c.pipe(b, pid)}
        unknown = 987654
        for name, call in calls.items():
            hidden, missing = refusal(lambda: call(bob, a)), refusal(lambda: call(bob, unknown))
            assert (hidden.code, hidden.message) == (missing.code, missing.message.replace(str(unknown), str(a))), name
        assert alice.stat(a).state == "blocked"  # untouched by bob's attempts
        assert ops.stat(a).owner == "alice" and ops.kill(b).state == "killed"  # an admin controls everything
        alice.kill(a)


def test_only_admins_manage_the_daemon(users, tiny_model_dir):
    with users.tcp("alice") as alice:
        e = refusal(lambda: alice.spawn(MODEL, "Hi", owner="bob"))
        assert e.code == "permission_denied" and "may not start processes as bob" in e.message
        for call in (lambda: alice.load(str(tiny_model_dir), name="x"), lambda: alice.unload(MODEL),
                     alice.dmesg, alice.shutdown):
            e = refusal(call)
            assert e.code == "permission_denied" and e.message.startswith("only an admin may"), e.message
        assert alice.models().loaded and alice.meminfo() and alice.devices()  # the machine's state is shared
    with users.tcp("ops") as ops:
        assert ops.dmesg(limit=1)


def test_each_quota_is_refused_naming_it_and_its_limit(users):
    with users.tcp("alice") as alice:
        pids = [alice.spawn(MODEL, "Hi", max_tokens=4, interactive=True) for _ in range(2)]
        e = refusal(lambda: alice.spawn(MODEL, "Hi", max_tokens=4))
        assert (e.code, e.message) == ("resource_exhausted", "user alice is at their limit of 2 concurrent processes")
        for pid in pids:
            alice.kill(pid)
        e = refusal(lambda: alice.spawn(MODEL, "Hi", max_tokens=400))
        assert e.code == "resource_exhausted" and "needs up to 26 KV pages, over user alice's limit of 24" in e.message
        pid = alice.spawn(MODEL, "Hi", max_tokens=200, interactive=True)
        e = refusal(lambda: alice.spawn(MODEL, "Hi", max_tokens=200))
        assert e.code == "resource_exhausted" and "user alice is at their limit of 24 KV pages" in e.message
        alice.kill(pid)
    with users.tcp("carol") as carol:  # [users.carol] procs = 1
        pid = carol.spawn(MODEL, "Hi", max_tokens=4, interactive=True)
        assert "their limit of 1 concurrent processes" in refusal(lambda: carol.spawn(MODEL, "Hi")).message
        carol.kill(pid)


def test_tokens_per_minute_hold_a_process_back_then_refuse(users):
    with users.tcp("dave") as dave:  # [users.dave] tokens_per_min = 30
        pid = dave.spawn(MODEL, "Hi", max_tokens=200, ignore_eos=True)
        deadline = time.monotonic() + 30
        while dave.whoami().used.tokens_per_min < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        p = dave.stat(pid)
        assert p.state in ("new", "ready") and p.usage.prompt_tokens + p.usage.generated_tokens <= 31
        e = refusal(lambda: dave.spawn(MODEL, "Hi", max_tokens=4))
        assert (e.code, e.message) == ("resource_exhausted", "user dave is at their limit of 30 tokens per minute")
        with users.tcp("alice") as alice:  # others are not held back
            assert alice.generate(MODEL, "Hi", max_tokens=40, ignore_eos=True)
        dave.kill(pid)


CHILD = r"""
import json, os, sys
import grpc
import grpc._channel  # imported lazily by the first channel, when the checkout may be closed to uid 65534
from llmos.kernel.users.callers import User, bearer_user
from llmos.syscalls.sdk import Client, SyscallError
sock, root_pid, model = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.setgroups([]); os.setgid(65534); os.setuid(65534)  # everything is imported: /root is closed to us now

def outcome(fn):
    try:
        return ["ok", fn()]
    except SyscallError as e:
        return [e.code, e.message]

with Client(sock, timeout=60) as c:
    me = c.whoami()
    pid = c.spawn(model, "Hi", max_tokens=2)
    print(json.dumps({"me": [me.user, me.admin, me.via, me.uid], "ps": [p.pid for p in c.ps()],
                      "stat": outcome(lambda: c.stat(root_pid).pid), "own": c.stat(pid).owner,
                      "as_root": outcome(lambda: c.spawn(model, "Hi", owner="root")),
                      "load": outcome(lambda: c.load(model, quantize="int8").name), "pid": pid}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as a second uid needs root")
def test_a_second_uid_is_a_user_of_its_own(users):
    nobody = pwd.getpwuid(65534).pw_name
    with users.unix() as root:
        mine = root.spawn(MODEL, "Hello", max_tokens=4, interactive=True)
        r = subprocess.run([sys.executable, "-c", CHILD, str(users.sock), str(mine), MODEL], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["me"] == [nobody, False, "unix", 65534]
        assert mine not in out["ps"] and out["pid"] in out["ps"] and out["own"] == nobody
        assert out["stat"] == ["not_found", f"no process with pid {mine}"]
        assert out["as_root"][0] == "permission_denied" and out["load"][0] == "permission_denied"
        assert root.stat(out["pid"]).owner == nobody  # the admin sees theirs too
        root.kill(mine)


def self_signed(tmp: Path) -> tuple[Path, Path]:
    if not shutil.which("openssl"):
        pytest.skip("no openssl to make a certificate")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_tls_round_trip_and_tokens_survive_a_restart(tmp_path, tiny_model_dir):
    cert, key = self_signed(tmp_path)
    addr = f"127.0.0.1:{free_port()}"
    args = (str(tiny_model_dir), "--kv-pages", "128", "--grace", "1", "--listen", addr,
            "--tls-cert", str(cert), "--tls-key", str(key))
    d = start_daemon(tmp_path / "state", *args)
    try:
        with Client(d.socket, timeout=60) as root:
            secret = root.create_token("remote")[1]
        with Client(addr, timeout=60, token=secret, ca=cert) as c:
            assert c.whoami().user == "remote"
            assert c.generate(MODEL, "Hello", max_tokens=4, ignore_eos=True)
        with Client(addr, timeout=60, ca=cert) as c:
            assert refusal(c.ps).code == "unauthenticated"
        with Client(addr, timeout=10, token=secret) as c:  # plaintext against TLS: no answer
            assert refusal(c.ps).code == "unavailable"
    finally:
        d.stop_cleanly()
    d = start_daemon(tmp_path / "state", *args)
    try:
        with Client(addr, timeout=60, token=secret, ca=cert) as c:
            assert c.whoami().user == "remote"
    finally:
        assert d.stop() == 0


def test_shell_flags_and_whoami(users):
    env = {k: v for k, v in os.environ.items() if k != "LLMOS_TOKEN"}
    r = subprocess.run([*LLMOS, "--socket", users.addr, "--token", users.tokens["bob"], "whoami"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0 and r.stdout.startswith("bob via token bob\nprocesses 0 of 2, KV pages 0 of 24"), r
    r = subprocess.run([*LLMOS, "--socket", users.addr, "ps"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1 and "bearer token is required" in r.stderr and len(r.stderr.splitlines()) == 1


def test_token_store_alone(tmp_path):
    store = TokenStore(tmp_path / "t.db")
    info, secret = store.create("ci", user="alice")
    assert store.verify(secret) == info and store.verify(secret + "x") is None and store.verify("garbage") is None
    with pytest.raises(ValueError, match="already exists"):
        store.create("ci")
    with pytest.raises(ValueError, match="not a valid name"):
        store.create("no spaces")
    store.close()
    again = TokenStore(tmp_path / "t.db")
    assert bearer_user(f"Bearer {secret}", again) == User("alice", False, "token", token="ci")
    assert bearer_user(f"Basic {secret}", again) is None and bearer_user(None, again) is None
    assert again.verify(secret) == info and again.revoke("ci") == info and again.verify(secret) is None
    assert bearer_user(f"Bearer {secret}", again) is None
