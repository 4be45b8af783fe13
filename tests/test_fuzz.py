"""Every syscall fuzzed with random and malformed input against a real llmosd over its real
sockets: it must answer a clean status (never INTERNAL or UNKNOWN), stay up, leak no KV page
and leave no process stuck.

The daemon is this module's own (a small KV pool, a small --max-message, a TCP listener for a
non-admin token), so Shutdown's bad inputs can be fuzzed and the page count checked exactly.
"""
import math
import socket
import time

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon import start_daemon
from fuzzing import SERVICE, message, pids, raw_bodies, texts
from llmos.syscalls.v1 import syscalls_pb2 as pb
from llmos.syscalls.v1 import syscalls_pb2_grpc as pb_grpc

MODEL = "tiny-llama"
MAX_MESSAGE = 256 << 10
EXITED, BLOCKED = 1, 2  # the fixture's first two processes, on a fresh daemon
CLEAN = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
         grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION,
         grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}
BLOCKING = {"Read", "Wait", "Pipe"}  # these wait, by design, on a process that has not ended
FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


class Fuzz:
    """The fuzz daemon and a channel per kind of caller."""

    def __init__(self, d, addr: str, token: str) -> None:
        self.d = d
        self.admin = grpc.insecure_channel(f"unix:{d.socket}")
        self.tcp = grpc.insecure_channel(addr)
        self.token = token
        self.stub = pb_grpc.SyscallsStub(self.admin)

    def channel(self, caller: str) -> tuple[grpc.Channel, tuple | None]:
        if caller == "admin":
            return self.admin, None
        token = self.token if caller == "user" else caller
        return self.tcp, (("authorization", f"Bearer {token}"),)

    def live(self, *pids: int) -> bool:
        try:
            return any(self.stub.Stat(pb.StatRequest(pid=p), timeout=10).proc.state not in ("exited", "killed")
                       for p in pids)
        except grpc.RpcError:
            return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fz(tmp_path_factory, tiny_model_dir):
    addr = f"127.0.0.1:{free_port()}"
    d = start_daemon(tmp_path_factory.mktemp("fuzz-state"), str(tiny_model_dir), "--kv-pages", "64",
                     "--page-size", "16", "--max-message", str(MAX_MESSAGE), "--listen", addr, "--grace", "2")
    with d.client(timeout=60) as c:
        assert c.spawn(MODEL, "Hello", max_tokens=3) == EXITED
        c.wait(EXITED)
        assert c.spawn(MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, interactive=True) == BLOCKED
        c.wait(BLOCKED, until="turn")
        token = c.create_token("mallory")[1]
    f = Fuzz(d, addr, token)
    yield f
    f.admin.close(), f.tcp.close()
    d.stop_cleanly()


def overrides(rpc: str) -> dict:
    known = pids([EXITED, BLOCKED])
    models = st.one_of(st.sampled_from([MODEL, MODEL + ":int8", "nope", ""]), texts())
    o = {"pid": known, "src": known, "dst": known, "model": models, "tokens": st.integers(-5, 400)}
    if rpc == "UnloadModel":
        o["name"] = texts().filter(lambda n: n != MODEL)
    if rpc == "LoadModel":
        o["model"] = st.one_of(st.sampled_from(["/", ".", "/dev/null", "/proc/self", "someorg/somemodel"]), texts())
    return o


def requests(rpc: str) -> st.SearchStrategy:
    method = SERVICE.methods_by_name[rpc]
    if rpc == "Shutdown":  # only refused ones: an accepted Shutdown would stop the daemon
        bad = st.one_of(st.floats(max_value=-1e-300), st.sampled_from([math.nan, -math.inf]))
        return bad.map(lambda g: pb.ShutdownRequest(grace_s=g))
    return message(method.input_type, overrides(rpc))


def callers() -> st.SearchStrategy[str]:
    bad_tokens = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", max_size=60).map(lambda t: "llmos_" + t)
    return st.one_of(st.sampled_from(["admin", "admin", "user"]), bad_tokens)


def call(fz: Fuzz, rpc: str, body, caller: str = "admin", raw: bool = False):
    """Make one call; returns (status code, details, response or None)."""
    ch, md = fz.channel(caller)
    method = SERVICE.methods_by_name[rpc]
    stream = method.server_streaming
    ser = (lambda b: b) if raw else None
    path = f"/{SERVICE.full_name}/{rpc}"
    out_cls = getattr(pb, method.output_type.name)
    make = ch.stream_unary if method.client_streaming else ch.unary_stream if stream else ch.unary_unary
    fn = make(path, request_serializer=ser or type(body).SerializeToString, response_deserializer=out_cls.FromString)
    timeout = 1.5 if rpc in BLOCKING else 30
    try:
        # A client-streaming syscall (Eval, Train) gets the body twice: fields, then a data chunk.
        r = fn(iter([body, body]) if method.client_streaming else body, timeout=timeout, metadata=md)
        return grpc.StatusCode.OK, "", (list(r) if stream else r)
    except grpc.RpcError as e:
        return e.code(), e.details() or "", None


def check(fz: Fuzz, rpc: str, code, details: str, resp, req=None) -> None:
    if code == grpc.StatusCode.OK and rpc in ("Spawn", "Fork"):  # keep the pool free for what follows
        fz.stub.Kill(pb.KillRequest(pid=resp.pid, signal=pb.KILL), timeout=30)
    allowed = set(CLEAN)
    if rpc == "LoadModel":
        allowed.add(grpc.StatusCode.UNAVAILABLE)  # a hub id, offline
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and rpc in BLOCKING and req is not None:
        targets = [req.src, req.dst] if rpc == "Pipe" else [req.pid]
        assert fz.live(*targets), f"{rpc} timed out on pids {targets}, none of them live"
        return
    assert code in allowed, f"{rpc} answered {code}: {details[:300]}"
    assert "Traceback" not in details
    assert fz.d.proc.poll() is None, fz.d.log.read_text()[-3000:]


@pytest.mark.parametrize("rpc", [m.name for m in SERVICE.methods])
def test_fuzz_fields(fz, rpc):
    @FUZZ
    @given(req=requests(rpc), caller=callers())
    def run(req, caller):
        code, details, resp = call(fz, rpc, req, caller)
        check(fz, rpc, code, details, resp, req)
    run()


def _parses_as_shutdown(body: bytes) -> bool:
    try:
        req = pb.ShutdownRequest.FromString(body)
    except Exception:  # noqa: BLE001 - not a ShutdownRequest: the daemon refuses it too
        return False
    return not req.HasField("grace_s") or req.grace_s >= 0


@pytest.mark.parametrize("rpc", [m.name for m in SERVICE.methods])
def test_fuzz_raw_bytes(fz, rpc):
    desc = SERVICE.methods_by_name[rpc].input_type

    @FUZZ
    @given(body=raw_bodies(desc).filter(lambda b: rpc != "Shutdown" or not _parses_as_shutdown(b)))
    def run(body):
        code, details, resp = call(fz, rpc, body, raw=True)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and rpc in BLOCKING:
            req = getattr(pb, desc.name).FromString(body)
            return check(fz, rpc, code, details, resp, req)
        check(fz, rpc, code, details, resp)
    run()


def test_malformed_bytes_name_the_message(fz):
    code, details, _ = call(fz, "Spawn", b"\x0a\x05\xff\xfe\xfd\xfc\xfb", raw=True)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "malformed request" in details and "SpawnRequest" in details
    code, _, _ = call(fz, "Read", b"\xff\xff", raw=True)
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_request_over_max_message_is_refused_naming_the_limit(fz):
    code, details, _ = call(fz, "Spawn", pb.SpawnRequest(model=MODEL, prompt="x" * (MAX_MESSAGE + 1)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and str(MAX_MESSAGE) in details, details
    code, _, _ = call(fz, "Whoami", pb.WhoamiRequest())
    assert code == grpc.StatusCode.OK and fz.d.proc.poll() is None


def test_after_the_fuzz_the_daemon_serves_and_nothing_leaked(fz):
    with fz.d.client(timeout=60) as c:
        pid = c.spawn(MODEL, "The quick brown fox", max_tokens=8, ignore_eos=True)
        streamed = "".join(ch.text for ch in c.read(pid))
        r = c.wait(pid)
        assert (r.state, r.reason, r.output) == ("exited", "length", streamed)
        for p in c.ps(live_only=True):
            c.kill(p.pid, "KILL")
        for p in c.ps():
            assert c.wait(p.pid, timeout=30).state in ("exited", "killed")
        assert c.ps(live_only=True) == []
        for m in c.models().loaded:
            if m.name != MODEL:
                c.unload(m.name)
        deadline = time.monotonic() + 10
        while (pools := c.meminfo()) and any(p.used or p.swapped for p in pools) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [(p.model, p.used, p.swapped) for p in pools] == [(MODEL, 0, 0)]
