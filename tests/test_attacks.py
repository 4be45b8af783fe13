"""An attacker's suite against a real llmosd, as a normal user would try it.

Mallory holds a user token (TCP and HTTP) and, when the tests run as root, a second uid on the
unix socket. Each hole found in review is tried, with the path tricks around it: `..`, absolute
paths, symbolic links inside the store, NUL bytes, very long names and Unicode look-alikes in
every field that becomes a path or a name. After every attempt the state dir is byte for byte
what it was (its files and their contents, less the journal's own growth and the log), and
alice's process, running the whole time, produces exactly the output it produced alone.
"""
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon import start_daemon
from llmos.syscalls.sdk import Client, SyscallError
from llmos.syscalls.v1 import syscalls_pb2 as pb
from llmos.syscalls.v1 import syscalls_pb2_grpc as pb_grpc

MODEL = "tiny-llama"
VICTIM_PROMPT, VICTIM_TOKENS = "Once upon a time", 1500
DATA = "\n".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                 for q, a in [("Hello", "Hi there."), ("Bye", "See you.")])
# Names that must never become a path, a dot file, another's model or a base model.
BAD_NAMES = ["..", "../x", "../../etc", "/tmp/x", "a/b", "x\x00y", "x" * 200, "\u0455mollm2", ".hidden", "-rf",
             " ", "tiny\u2215llama", MODEL, "bob-secret", "checkpoints/../.."]
SKIP = {"journal.db", "journal.db-wal", "journal.db-shm", "usage.db", "usage.db-wal", "usage.db-shm",
        "llmosd.log", "llmosd.sock"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fingerprint(root: Path) -> dict[str, tuple]:
    """Every entry under root (less the journal, the usage records, the log and the sockets): kind, mode and content."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.name in SKIP or rel.startswith("run"):
            continue
        st_ = path.lstat()
        if stat.S_ISLNK(st_.st_mode):
            out[rel] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st_.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st_.st_mode))
        elif stat.S_ISREG(st_.st_mode):
            out[rel] = ("file", stat.S_IMODE(st_.st_mode), hashlib.sha256(path.read_bytes()).hexdigest())
    return out


class Target:
    """The daemon under attack and the ways in."""

    def __init__(self, d, sock: Path, addr: str, http: str, tokens: dict[str, str], data_dir: Path) -> None:
        self.d, self.sock, self.addr, self.http, self.tokens, self.data_dir = d, sock, addr, http, tokens, data_dir

    def tcp(self, user: str) -> Client:
        return Client(self.addr, timeout=60, token=self.tokens[user])

    def unix(self) -> Client:
        return Client(self.sock, timeout=60)

    def post(self, route: str, body: dict, user: str = "mallory") -> tuple[int, dict]:
        return self.request("POST", route, body, user)

    def request(self, method: str, route: str, body: dict | None = None, user: str | None = "mallory"):
        headers = {"Content-Type": "application/json"}
        if user:
            headers["Authorization"] = f"Bearer {self.tokens[user]}"
        req = urllib.request.Request(self.http + route, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw.startswith(b"{") else {"text": raw.decode()}
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def target(tmp_path_factory, tiny_model_dir):
    state = tmp_path_factory.mktemp("attacked")
    state.chmod(0o777)  # a careless state dir: what llmosd keeps there must be private anyway
    (state / "models").mkdir(mode=0o777)
    data_dir = tmp_path_factory.mktemp("admin-data")
    (data_dir / "d.jsonl").write_text(DATA)
    (data_dir / "t.txt").write_text("The quick brown fox jumps over the lazy dog. " * 5)
    public = Path(tempfile.mkdtemp(prefix="llmos-attacks-"))
    public.chmod(0o755)
    addr, http = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    d = start_daemon(state, str(tiny_model_dir), "--kv-pages", "512", "--page-size", "16", "--grace", "2",
                     "--socket", str(public / "llmosd.sock"), "--socket-mode", "0666", "--listen", addr,
                     "--http", http, "--metrics", "127.0.0.1:0", "--data-dirs", str(data_dir),
                     "--quota-tokens-per-min", "100000000")
    tokens = {}
    with Client(public / "llmosd.sock", timeout=60) as root:
        for name in ("mallory", "alice", "bob"):
            tokens[name] = root.create_token(name)[1]
        tokens["ops"] = root.create_token("ops", user="operator", admin=True)[1]
    t = Target(d, public / "llmosd.sock", addr, f"http://{http}", tokens, data_dir)
    data = state.parent / "bob.jsonl"
    data.write_text(DATA)
    with t.tcp("bob") as bob:  # bob's own adapter, which mallory must not see, use or take
        pid, name = bob.train(MODEL, data, name="bob-secret", steps=2, rank=2, batch=1, checkpoint_every=1)
        assert bob.wait(pid).state == "exited" and name == "bob-secret"
    yield t
    d.stop_cleanly()


@pytest.fixture(scope="module")
def victim(target):
    """Alice's reference output, alone; then the same process started again, left running."""
    with target.tcp("alice") as a:
        alone = a.wait(a.spawn(MODEL, VICTIM_PROMPT, max_tokens=VICTIM_TOKENS, ignore_eos=True, priority=10)).output
        pid = a.spawn(MODEL, VICTIM_PROMPT, max_tokens=VICTIM_TOKENS, ignore_eos=True, priority=10)
    return alone, pid


@pytest.fixture
def untouched(target, victim):
    """The state dir is byte for byte what it was before the test, and alice's process is fine."""
    before = fingerprint(target.d.state_dir)
    yield
    assert fingerprint(target.d.state_dir) == before
    assert target.d.proc.poll() is None


def refused(fn) -> SyscallError:
    with pytest.raises(SyscallError) as e:
        fn()
    return e.value


# --- 1. names that become paths, and names that belong to someone else -------------------------------
@pytest.mark.parametrize("name", BAD_NAMES)
def test_train_names_never_become_paths_or_take_anothers_model(target, untouched, tmp_path, name):
    data = tmp_path / "mine.jsonl"
    data.write_text(DATA)
    with target.tcp("mallory") as m:
        e = refused(lambda: m.train(MODEL, data, name=name, steps=1, rank=2, batch=1))
    assert e.code in ("invalid_argument", "permission_denied"), e.message
    if name == "bob-secret":
        assert e.code == "permission_denied" and "belongs to another user" in e.message
    elif name == MODEL:
        assert "names a base model" in e.message
    else:
        assert "is not a valid name" in e.message and "ASCII letters, digits and '-_.+:'" in e.message


def test_a_symlink_inside_the_store_is_never_followed(target, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (target.d.state_dir / "models" / "work").mkdir(exist_ok=True)  # where a name's work in progress goes
    link = target.d.state_dir / "models" / "work" / "trap"
    link.symlink_to(outside)
    try:
        data = tmp_path / "d.jsonl"
        data.write_text(DATA)
        with target.tcp("mallory") as m:
            e = refused(lambda: m.train(MODEL, data, name="trap", steps=1, rank=2, batch=1))
        assert e.code == "invalid_argument" and "symbolic link" in e.message
        assert list(outside.iterdir()) == []
    finally:
        link.unlink()


# --- 2. data from the client, never from the daemon's disk -----------------------------------------
@pytest.mark.parametrize("path", ["/etc/passwd", "/nonexistent/file", "~/.bashrc", "../journal.db",
                                  "journal.db", "/proc/self/environ"])
def test_a_user_cannot_have_llmosd_read_its_files(target, untouched, path):
    with target.tcp("mallory") as m:
        t = refused(lambda: m.train(MODEL, server_path=path, steps=1))
        e = refused(lambda: m.eval(MODEL, "", "ppl", server_path=path))
    want = "only an admin may have llmosd read files from its own disk; user mallory is not one"
    assert (t.code, t.message) == (e.code, e.message) == ("permission_denied", want)  # the same for every path


def test_an_admin_reads_only_inside_data_dirs(target, untouched):
    with target.tcp("ops") as ops:
        e = refused(lambda: ops.eval(MODEL, "", "ppl", server_path="/etc/passwd"))
        assert e.code == "permission_denied" and "outside the directories llmosd reads data from" in e.message
        pid = ops.eval(MODEL, "", "ppl", server_path=str(target.data_dir / "t.txt"))
        r = ops.wait(pid, reap=True)
        assert r.state == "exited" and r.results["tokens"] > 10


# --- 3. priority and bounded work ----------------------------------------------------------------------
def test_nice_is_unix_nice(target, untouched):
    with target.tcp("mallory") as m:
        e = refused(lambda: m.spawn(MODEL, "Hi", priority=-5))
        assert e.code == "permission_denied" and "only an admin may go below 0" in e.message
        pid = m.spawn(MODEL, messages=[{"role": "user", "content": "Hi"}], interactive=True, max_tokens=2, priority=5)
        assert m.renice(pid, 10).priority == 10 and m.renice(pid, 5).priority == 5  # back to where it started
        assert refused(lambda: m.renice(pid, 4)).code == "permission_denied"
        assert refused(lambda: m.renice(pid, -20)).code == "permission_denied"
        m.kill(pid, "KILL")
        m.wait(pid, reap=True)
    status, body = target.post("/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 2, "priority": -5})
    assert status == 403 and "only an admin may go below 0" in body["error"]["message"]
    with target.tcp("ops") as ops:  # an admin sets any value
        pid = ops.spawn(MODEL, messages=[{"role": "system", "content": "Wait."}], interactive=True, priority=-20)
        assert ops.renice(pid, -10).priority == -10 and ops.renice(pid, -20).priority == -20
        ops.kill(pid, "KILL")
        ops.wait(pid, reap=True)


def test_task_work_is_bounded(target, untouched, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(DATA)
    with target.tcp("mallory") as m:
        e = refused(lambda: m.train(MODEL, data, name="mine", batch=64, micro_batch=64, max_len=512))
        assert e.code == "invalid_argument" and "over the 2048 tokens a unit of task work may take" in e.message
        e = refused(lambda: m.eval(MODEL, data, "ppl", window=4096))
        assert e.code == "invalid_argument"


@pytest.mark.parametrize("body,param", [
    ({"n": 17}, "n"), ({"max_tokens": 10 ** 9}, "max_tokens"), ({"stop": ["x"] * 17}, "stop"),
    ({"messages": [{"role": "user", "content": "x"}] * 5000}, "messages"),
    ({"messages": [{"role": "user", "content": "x" * ((1 << 20) + 1)}]}, "messages")])
def test_http_limits_are_400s_that_name_them(target, untouched, body, param):
    status, out = target.post("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                                                       "max_tokens": 2, **body})
    assert status == 400 and out["error"]["param"] == param, out


# --- 4. exposure ---------------------------------------------------------------------------------------
def test_metrics_over_http_need_an_admin_token(target, untouched):
    assert target.request("GET", "/metrics", user=None)[0] == 401
    assert target.request("GET", "/metrics", user="mallory")[0] == 403
    status, page = target.request("GET", "/metrics", user="ops")
    assert status == 200 and "llmos_generated_tokens_total" in page["text"]


def test_users_see_names_and_sizes_never_paths_or_others_models(target, untouched):
    with target.tcp("mallory") as m:
        models = m.models()
        names = [x.name for x in models.loaded]
        assert names == [MODEL] and "bob-secret" not in models.stored
        assert all(x.source == "" for x in models.loaded) and models.loaded[0].weight_bytes > 0
        e = refused(lambda: m.spawn("bob-secret", "Hi"))
        assert e.code == "not_found" and e.message == f"model 'bob-secret' is not loaded (loaded: {MODEL})"
        assert refused(lambda: m.unload("bob-secret")).code == "not_found"
        assert refused(lambda: m.unload(MODEL)).code == "permission_denied"
        assert refused(lambda: m.load(str(target.d.state_dir))).code == "permission_denied"
    status, body = target.request("GET", "/v1/models")
    assert status == 200 and [x["id"] for x in body["data"]] == [MODEL]
    with target.tcp("bob") as bob:
        assert "bob-secret" in [x.name for x in bob.models().loaded] and bob.models().loaded[0].source == ""
    with target.tcp("ops") as ops:
        assert {x.name: x.source for x in ops.models().loaded}[MODEL]  # admins see where it came from


def test_the_daemons_files_are_private_whatever_the_state_dirs_mode(target):
    state = target.d.state_dir
    assert stat.S_IMODE(state.stat().st_mode) == 0o777  # as the careless admin left it
    for name in ("journal.db", "tokens.db"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE((state / "models").stat().st_mode) == 0o700


def test_listeners_off_loopback_need_tls_or_insecure(tmp_path):
    from llmos import config

    for flag in ("--listen", "--http"):
        with pytest.raises(config.ConfigError, match="not a loopback address and bearer tokens would cross"):
            config.load([flag, "0.0.0.0:7070"], env={})
        assert getattr(config.load([flag, "0.0.0.0:7070", "--insecure"], env={}), flag[2:]) == "0.0.0.0:7070"
        assert getattr(config.load([flag, "127.0.0.1:7070"], env={}), flag[2:]) == "127.0.0.1:7070"
    with pytest.raises(config.ConfigError, match="its page has no authentication"):
        config.load(["--metrics", "0.0.0.0:9100"], env={})
    assert config.load(["--metrics", "9100"], env={}).metrics == "127.0.0.1:9100"
    cfg = config.load(["--listen", "0.0.0.0:7070", "--insecure"], env={})
    assert config.insecure_listeners(cfg) == ["--listen 0.0.0.0:7070"]


# --- the second uid on the unix socket -------------------------------------------------------------
NOBODY = r"""
import json, os, sys
import grpc._channel
from llmos.syscalls.sdk import Client, SyscallError
sock, data = sys.argv[1], sys.argv[2]
os.setgroups([]); os.setgid(65534); os.setuid(65534)

def outcome(fn):
    try:
        return ["ok", str(fn())]
    except SyscallError as e:
        return [e.code, e.message]

with Client(sock, timeout=60) as c:
    out = {"whoami": [c.whoami().user, c.whoami().admin],
           "nice": outcome(lambda: c.spawn("tiny-llama", "Hi", priority=-1)),
           "path": outcome(lambda: c.train("tiny-llama", server_path="/etc/shadow", steps=1)),
           "name": outcome(lambda: c.train("tiny-llama", data, name="..", steps=1)),
           "bob": outcome(lambda: c.train("tiny-llama", data, name="bob-secret", steps=1, rank=2, batch=1)),
           "models": [m.name for m in c.models().loaded]}
print(json.dumps(out))
"""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as a second uid")
def test_a_second_uid_on_the_unix_socket_gets_no_further(target, untouched, tmp_path):
    data = Path(tempfile.mkdtemp(prefix="llmos-nobody-")) / "d.jsonl"
    data.write_text(DATA)
    data.parent.chmod(0o755), data.chmod(0o644)
    r = subprocess.run([sys.executable, "-c", NOBODY, str(target.sock), str(data)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["whoami"][1] is False
    assert out["nice"][0] == out["path"][0] == out["bob"][0] == "permission_denied"
    assert out["name"][0] == "invalid_argument" and out["models"] == [MODEL]


# --- hypothesis: every name and path field, as a normal user -------------------------------------------
names = st.one_of(st.sampled_from(BAD_NAMES), st.text(max_size=300),
                  st.text(alphabet="./\\\x00~-_+:abc", max_size=40))


@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(field=st.sampled_from(["train.name", "train.path", "train.data_name", "eval.path", "eval.data_name",
                              "load.model", "load.name", "unload.name", "spawn.model", "token.name"]),
       value=names)
def test_fuzz_names_and_paths_leave_the_state_dir_as_it_was(target, victim, field, value):
    before = fingerprint(target.d.state_dir)
    with grpc.insecure_channel(target.addr) as ch:
        stub = pb_grpc.SyscallsStub(ch)
        md = (("authorization", f"Bearer {target.tokens['mallory']}"),)
        kind, what = field.split(".")
        try:
            if kind == "train":  # rank 1000 is refused too, after the name and the data: no file is ever written
                req = pb.TrainRequest(model=MODEL, rank=1000, data=DATA.encode(), data_name="d.jsonl")
                setattr(req, what, value)
                if what == "path":
                    req.ClearField("data"), req.ClearField("data_name")
                stub.Train(iter([req]), metadata=md, timeout=60)
            elif kind == "eval":
                req = pb.EvalRequest(model=MODEL, metric="nope", data=b"x", data_name="d.txt")
                setattr(req, what, value)
                stub.Eval(iter([req]), metadata=md, timeout=60)
            elif kind == "load":
                stub.LoadModel(pb.LoadModelRequest(**{what: value}), metadata=md, timeout=60)
            elif kind == "unload":
                stub.UnloadModel(pb.UnloadModelRequest(name=value), metadata=md, timeout=60)
            elif kind == "spawn":
                stub.Spawn(pb.SpawnRequest(model=value, prompt="Hi", max_tokens=1), metadata=md, timeout=60)
            else:
                stub.CreateToken(pb.CreateTokenRequest(name=value), metadata=md, timeout=60)
            ok = True
        except grpc.RpcError as e:
            ok = False
            assert e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                                grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED), e.details()
    assert not ok or kind == "spawn"  # only a spawn on the loaded model may succeed, and it writes no file
    assert fingerprint(target.d.state_dir) == before
    assert target.d.proc.poll() is None


def test_the_victim_ran_to_the_same_output(target, victim):
    """Last: alice's process, running through every attack above, ends as it did alone."""
    alone, pid = victim
    with target.tcp("alice") as a:
        r = a.wait(pid)
    assert (r.state, r.output) == ("exited", alone)


def test_the_http_gateway_speaks_tls(tmp_path, tiny_model_dir):
    import ssl

    from test_users import self_signed

    cert, key = self_signed(tmp_path)
    port = free_port()
    d = start_daemon(tmp_path / "state", str(tiny_model_dir), "--kv-pages", "64", "--http", f"127.0.0.1:{port}",
                     "--http-tls-cert", str(cert), "--http-tls-key", str(key))
    try:
        assert f"https://127.0.0.1:{port}" in d.ready
        ctx = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", context=ctx, timeout=30) as r:
            assert r.status == 200
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP is not served on it
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10)
    finally:
        d.stop_cleanly()


def test_insecure_listeners_are_warned_about(tmp_path, tiny_model_dir):
    d = start_daemon(tmp_path / "state", str(tiny_model_dir), "--kv-pages", "64", "--listen", f"0.0.0.0:{free_port()}",
                     "--insecure")
    try:
        assert "off loopback without TLS (--insecure)" in d.log.read_text()
    finally:
        d.stop_cleanly()
