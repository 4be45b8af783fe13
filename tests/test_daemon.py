"""Every syscall end to end: a real llmosd subprocess, real gRPC over a real unix socket."""
import asyncio
import stat
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmos.syscalls.sdk import AsyncClient, SyscallError
from llmos.syscalls.v1 import syscalls_pb2 as pb
from llmos.syscalls.v1 import syscalls_pb2_grpc as pb_grpc

MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def ref(tiny_model_dir):
    from conftest import Reference
    from transformers import AutoModelForCausalLM
    return Reference(AutoModelForCausalLM.from_pretrained(tiny_model_dir))


@pytest.fixture
def c(llmosd):
    with llmosd.client(timeout=60) as client:
        yield client


def expected(ref, tokenizer, ids, n):
    return tokenizer.decode(ref.greedy(ids, n), skip_special_tokens=True)


def test_ready_line_and_socket_mode(llmosd):
    assert llmosd.ready == f"llmosd: serving on unix:{llmosd.socket} (model {MODEL})"
    assert stat.S_IMODE(llmosd.socket.stat().st_mode) == 0o600


def test_spawn_read_wait_match_transformers(c, ref, tokenizer):
    prompt = "The quick brown fox"
    pid = c.spawn(MODEL, prompt, max_tokens=24, ignore_eos=True)
    streamed = list(c.read(pid))
    r = c.wait(pid)
    want = expected(ref, tokenizer, tokenizer(prompt)["input_ids"], 24)
    assert r.output == want and "".join(ch.text for ch in streamed) == want
    assert [ch.offset for ch in streamed] == sorted(ch.offset for ch in streamed)
    assert (r.state, r.reason, streamed[-1].state) == ("exited", "length", "exited")
    assert r.usage.generated_tokens == 24 and r.usage.prompt_tokens == len(tokenizer(prompt)["input_ids"])


def test_chat_messages_use_the_template(c, ref, tokenizer):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello world"}]
    out = c.chat(MODEL, msgs, max_tokens=12, ignore_eos=True)
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert out == expected(ref, tokenizer, tokenizer(text, add_special_tokens=False)["input_ids"], 12)


def test_reattach_after_disconnect_loses_nothing(llmosd, c):
    pid = c.spawn(MODEL, "Once upon a time", max_tokens=300, ignore_eos=True)
    first = llmosd.client()
    got, offset = "", 0
    for ch in first.read(pid):
        got, offset = got + ch.text, ch.offset
        if offset >= 20:
            break
    first.close()  # the reader goes away mid-stream
    with llmosd.client() as second:
        other = threading.Thread(target=lambda: extra.append("".join(x.text for x in c.read(pid))))
        extra: list[str] = []
        other.start()  # a second reader from the start, at the same time
        rest = "".join(ch.text for ch in second.read(pid, offset))
        other.join(60)
    full = c.wait(pid).output
    assert got + rest == full and extra == [full] and len(full) > offset


def test_read_now_and_turn(c):
    pid = c.spawn(MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, interactive=True,
                  ignore_eos=True)
    turn = list(c.read(pid, until="turn"))
    assert turn[-1].state == "blocked" and turn[-1].reason == "length"
    now = list(c.read(pid, until="now"))
    assert len(now) == 1 and now[0].offset == turn[-1].offset
    c.kill(pid)


def test_interactive_write(c):
    pid = c.spawn(MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=6, interactive=True,
                  ignore_eos=True)
    first = c.wait(pid, until="turn")
    assert first.state == "blocked"
    offset = c.write(pid, "Tell me more")
    assert offset == len(first.output)
    second = c.wait(pid, until="turn")
    assert second.output.startswith(first.output) and second.usage.generated_tokens == 12
    assert second.proc.num_tokens > first.proc.num_tokens + 6
    assert c.kill(pid, "TERM").state == "killed"
    with pytest.raises(SyscallError) as e:
        c.write(pid, "again")
    assert e.value.code == "failed_precondition"


def test_stop_cont_term(c):
    pid = c.spawn(MODEL, "Hello", max_tokens=480, ignore_eos=True)
    c.kill(pid, "STOP")
    n = c.stat(pid).usage.generated_tokens
    time.sleep(0.3)
    assert c.stat(pid).state == "stopped" and c.stat(pid).usage.generated_tokens == n
    c.kill(pid, "CONT")
    deadline = time.monotonic() + 30
    while c.stat(pid).usage.generated_tokens == n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert c.stat(pid).usage.generated_tokens > n
    c.kill(pid, "KILL")
    r = c.wait(pid)
    assert (r.state, r.reason) == ("killed", "signal KILL") and r.usage.pages_held == 0


def test_fork_shares_the_prefix(c, ref, tokenizer):
    prompt = "An operating system for language models"
    ids = tokenizer(prompt)["input_ids"]
    parent = c.spawn(MODEL, prompt, max_tokens=6, interactive=True, ignore_eos=True)
    c.wait(parent, until="turn")
    child = c.fork(parent, max_tokens=6)
    r = c.wait(child, until="turn")
    assert r.proc.ppid == parent and r.usage.cached_tokens > 0
    assert r.output == tokenizer.decode(ref.greedy(ids, 12)[6:], skip_special_tokens=True)
    for pid in (parent, child):
        c.kill(pid)


def test_pipe_feeds_the_output_to_an_interactive_process(c):
    a = c.spawn(MODEL, "Hello world", max_tokens=8, ignore_eos=True)
    b = c.spawn(MODEL, messages=[{"role": "user", "content": "Summarize"}], max_tokens=5, interactive=True,
                ignore_eos=True)
    offset = c.pipe(a, b)
    r = c.wait(b, until="turn")
    before = c.wait(a).output
    assert offset > 0 and len(r.output) > offset and r.usage.generated_tokens == 10
    assert r.proc.num_tokens >= r.usage.prompt_tokens + 10 + len(before) // 8
    for bad, code in [((a, a), "invalid_argument"), ((a, 99999), "not_found"), ((b, a), "failed_precondition")]:
        with pytest.raises(SyscallError) as e:
            c.pipe(*bad)
        assert e.value.code == code
    c.kill(b)


def test_ps_and_stat_filter(c):
    pid = c.spawn(MODEL, "Hello", max_tokens=5, interactive=True, ignore_eos=True, owner="alice")
    c.wait(pid, until="turn")
    assert [p.pid for p in c.ps(owner="alice")] == [pid]
    assert pid in [p.pid for p in c.ps(states=["blocked"], live_only=True)]
    assert all(p.state in ("exited", "killed") for p in c.ps(states=["exited", "killed"]))
    assert c.stat(pid).interactive and c.stat(pid).owner == "alice"
    c.kill(pid)
    assert pid not in [p.pid for p in c.ps(live_only=True)]


def test_meminfo_devices_models_dmesg(c, tiny_model_dir):
    (pool,) = c.meminfo(MODEL)
    assert pool.total == 512 and pool.page_size == 16 and pool.free + pool.used == pool.total
    (dev,) = c.devices()
    assert dev.kind == "cpu" and dev.total_memory > 0 and dev.threads == 1
    (m,) = [m for m in c.models().loaded if m.name == MODEL]
    assert m.architecture == "LlamaForCausalLM" and m.source == str(tiny_model_dir) and m.kv_pages == 512
    assert any(f"loaded model {MODEL}" in ln.msg for ln in c.dmesg())
    assert len(c.dmesg(limit=1)) == 1


def test_load_and_unload(c, tiny_model_dir):
    assert c.load(str(tiny_model_dir), name="second").name == "second"
    assert {m.name for m in c.models().loaded} >= {MODEL, "second"}
    pid = c.spawn("second", "Hello", max_tokens=5, interactive=True)
    with pytest.raises(SyscallError) as e:
        c.unload("second")
    assert e.value.code == "failed_precondition"
    c.kill(pid)
    c.unload("second")
    assert "second" not in {m.name for m in c.models().loaded}


BAD = [
    ("Spawn", pb.SpawnRequest(model="nope", prompt="x"), grpc.StatusCode.NOT_FOUND),
    ("Spawn", pb.SpawnRequest(model=MODEL), grpc.StatusCode.INVALID_ARGUMENT),
    ("Spawn", pb.SpawnRequest(model=MODEL, prompt="x", messages=[pb.ChatMessage(role="user", content="y")]),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("Spawn", pb.SpawnRequest(model=MODEL, messages=[pb.ChatMessage(role="wizard", content="y")]),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("Spawn", pb.SpawnRequest(model=MODEL, prompt="x", sampling=pb.Sampling(temperature=-1)),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("Spawn", pb.SpawnRequest(model=MODEL, prompt="x", sampling=pb.Sampling(temperature=float("nan"))),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("Spawn", pb.SpawnRequest(model=MODEL, tokens=[10**6]), grpc.StatusCode.INVALID_ARGUMENT),
    ("Spawn", pb.SpawnRequest(model=MODEL, prompt="x", max_tokens=0), grpc.StatusCode.INVALID_ARGUMENT),
    ("Spawn", pb.SpawnRequest(model=MODEL, prompt="x " * 600), grpc.StatusCode.INVALID_ARGUMENT),
    ("Spawn", pb.SpawnRequest(model=MODEL, prompt="hello world " * 20, limits=pb.Limits(max_pages=1)),
     grpc.StatusCode.RESOURCE_EXHAUSTED),
    ("Spawn", pb.SpawnRequest(model=MODEL, prompt="x", limits=pb.Limits(max_wall_s=float("inf"))),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("Kill", pb.KillRequest(pid=424242), grpc.StatusCode.NOT_FOUND),
    ("Kill", pb.KillRequest(pid=1, signal=99), grpc.StatusCode.INVALID_ARGUMENT),
    ("Write", pb.WriteRequest(pid=424242, text="x"), grpc.StatusCode.NOT_FOUND),
    ("Wait", pb.WaitRequest(pid=-3), grpc.StatusCode.NOT_FOUND),
    ("Fork", pb.ForkRequest(pid=424242), grpc.StatusCode.NOT_FOUND),
    ("Stat", pb.StatRequest(pid=0), grpc.StatusCode.NOT_FOUND),
    ("Ps", pb.PsRequest(states=["sleepy"]), grpc.StatusCode.INVALID_ARGUMENT),
    ("MemInfo", pb.MemInfoRequest(model="nope"), grpc.StatusCode.NOT_FOUND),
    ("LoadModel", pb.LoadModelRequest(model="no-such-model"), grpc.StatusCode.NOT_FOUND),
    ("LoadModel", pb.LoadModelRequest(model="someorg/somemodel"), grpc.StatusCode.UNAVAILABLE),
    ("UnloadModel", pb.UnloadModelRequest(name="nope"), grpc.StatusCode.NOT_FOUND),
    ("Dmesg", pb.DmesgRequest(limit=-1), grpc.StatusCode.INVALID_ARGUMENT),
    ("Shutdown", pb.ShutdownRequest(grace_s=-1), grpc.StatusCode.INVALID_ARGUMENT),
]


def test_bad_input_gets_the_right_status_and_never_hurts_the_daemon(llmosd):
    with grpc.insecure_channel(f"unix:{llmosd.socket}") as ch:
        stub = pb_grpc.SyscallsStub(ch)
        for rpc, req, code in BAD:
            with pytest.raises(grpc.RpcError) as e:
                getattr(stub, rpc)(req, timeout=30)
            assert e.value.code() == code, (rpc, req, e.value.details())
            assert e.value.details() and "Traceback" not in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Read(pb.ReadRequest(pid=1, offset=-1), timeout=30))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as e:  # over the receive limit
            stub.Spawn(pb.SpawnRequest(model=MODEL, prompt="x" * (17 << 20)), timeout=30)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="llmos.v1.Syscalls"))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert llmosd.proc.poll() is None


def test_32_concurrent_clients(llmosd, ref, tokenizer):
    prompts = [f"Hello world {i % 4}" for i in range(32)]
    outs: dict[int, str] = {}

    def one(i: int) -> None:
        with llmosd.client(timeout=120) as cl:
            pid = cl.spawn(MODEL, prompts[i], max_tokens=16, ignore_eos=True)
            outs[i] = "".join(ch.text for ch in cl.read(pid))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    want = {p: expected(ref, tokenizer, tokenizer(p)["input_ids"], 16) for p in set(prompts)}
    assert len(outs) == 32 and all(outs[i] == want[prompts[i]] for i in range(32))


def test_async_client_and_a_responsive_event_loop(llmosd):
    async def main():
        async with AsyncClient(llmosd.socket) as ac:
            pids = [await ac.spawn(MODEL, "Hello", max_tokens=400, ignore_eos=True) for _ in range(8)]
            async with grpc.aio.insecure_channel(f"unix:{llmosd.socket}") as ch:
                health, worst = health_pb2_grpc.HealthStub(ch), 0.0
                for _ in range(20):
                    t0 = time.monotonic()
                    await health.Check(health_pb2.HealthCheckRequest())
                    worst = max(worst, time.monotonic() - t0)
            outs = await asyncio.gather(*(ac.wait(pid) for pid in pids))
            return worst, outs
    worst, outs = asyncio.run(main())
    assert worst < 0.5 and all(r.usage.generated_tokens == 400 for r in outs)


def test_wall_time_limit_fires_while_blocked(c):
    pid = c.spawn(MODEL, "Hello", max_tokens=3, interactive=True, max_wall_s=0.5)
    r = c.wait(pid, timeout=10)
    assert r.state == "killed" and r.reason.startswith("limit: wall time")


def test_wait_reap_forgets_the_process(c):
    pid = c.spawn(MODEL, "Hello", max_tokens=3)
    assert c.wait(pid, reap=True).proc.pid == pid
    with pytest.raises(SyscallError) as e:
        c.stat(pid)
    assert e.value.code == "not_found"

