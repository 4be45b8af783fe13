"""The OpenAI-compatible HTTP gateway, through the official `openai` client: a real llmosd
with --http on a tiny random model, compared with the same prompts through the gRPC SDK.
Every request carries a bearer token made through the daemon's own CreateToken syscall."""
import asyncio
import json
import os
import pwd
import re
import threading
import time
import urllib.error
import urllib.request

import aiohttp
import openai
import pytest
from daemon import start_daemon

from llmos.syscalls.sdk import SyscallError

MODEL = "tiny-llama"
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}
LONG_PROMPT = "An operating system for language models: processes, pages, signals and syscalls."  # > 16 tokens


@pytest.fixture(scope="module")
def gw(tmp_path_factory, tiny_model_dir):
    d = start_daemon(tmp_path_factory.mktemp("http"), str(tiny_model_dir), "--kv-pages", "512", "--grace", "5",
                     "--max-procs", "24", "--http", "127.0.0.1:0", "--quota-procs", "1")
    d.url = re.search(r"http://\S+", d.ready).group(0).rstrip(",")
    with d.client(timeout=60) as admin:  # the unix socket: the daemon's own uid, an admin
        # The daemon's own user, so these requests are not held to --quota-procs 1.
        d.token = admin.create_token("tests", user=pwd.getpwuid(os.getuid()).pw_name, admin=True)[1]
        d.tokens = {user: admin.create_token(user)[1] for user in ("alice", "bob")}
    yield d
    d.stop_cleanly()


@pytest.fixture(scope="module")
def oai(gw):
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.token, max_retries=0, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def c(gw):
    with gw.client(timeout=60) as client:
        yield client


def settled(c, pids=(), timeout=10.0) -> bool:
    """Whether every pid is reaped and no process is live or holds KV pages, within timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = [p.pid for p in c.ps(live_only=True)]
        gone = all(not [p for p in c.ps() if p.pid == pid] for pid in pids)
        if not live and gone and c.meminfo(MODEL)[0].used == 0:
            return True
        time.sleep(0.05)
    return False


def post(gw, path: str, body: bytes, headers: dict | None = None, auth: bool = True) -> tuple[int, dict, dict]:
    token = {"Authorization": f"Bearer {gw.token}"} if auth else {}
    req = urllib.request.Request(gw.url + path, data=body, headers={"Content-Type": "application/json", **token,
                                                                    **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def test_chat_matches_the_grpc_sdk(gw, oai, c):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello world"}]
    want = c.chat(MODEL, msgs, max_tokens=12, ignore_eos=True)
    r = oai.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, **GREEDY)
    assert r.choices[0].message.content == want and r.choices[0].finish_reason == "length"
    assert r.object == "chat.completion" and r.model == MODEL and r.id.startswith("chatcmpl-llmos-")
    assert r.usage.completion_tokens == 12 and r.usage.total_tokens == r.usage.prompt_tokens + 12
    stream = oai.chat.completions.create(model=MODEL, messages=msgs, max_completion_tokens=12, stream=True,
                                         stream_options={"include_usage": True}, **GREEDY)
    chunks = list(stream)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == want
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    plain = list(oai.chat.completions.create(model=MODEL, messages=msgs, max_tokens=3, stream=True, **GREEDY))
    assert all(ch.usage is None for ch in plain)
    assert settled(c)


def test_completions_match_the_grpc_sdk(oai, c):
    want = c.generate(MODEL, "The quick brown fox", max_tokens=10, ignore_eos=True)
    r = oai.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=10, stop=None, **GREEDY)
    assert r.choices[0].text == want and r.object == "text_completion" and r.usage.completion_tokens == 10
    text = "".join(ch.choices[0].text for ch in oai.completions.create(
        model=MODEL, prompt=["The quick brown fox"], max_tokens=10, stream=True, **GREEDY))
    assert text == want


def test_models_and_health(gw, oai):
    assert MODEL in [m.id for m in oai.models.list()]
    assert oai.models.retrieve(MODEL).owned_by == "llmos"
    with urllib.request.urlopen(gw.url + "/health", timeout=10) as r:
        assert json.loads(r.read()) == {"status": "ok"}
    with pytest.raises(urllib.error.HTTPError) as e:  # no --metrics on this daemon: no /metrics (test_metrics.py)
        urllib.request.urlopen(gw.url + "/metrics", timeout=10)
    assert e.value.code == 404 and "error" in json.loads(e.value.read())


def test_n_choices_are_forks_sharing_the_prompt(oai, c):
    raw = oai.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": LONG_PROMPT}], max_tokens=200, n=3, stream=True,
        extra_headers={"X-LLMOS-Priority": "5"}, temperature=0, extra_body={"ignore_eos": True})
    pids = [int(p) for p in raw.headers["x-llmos-pid"].split(",")]
    stream, texts = raw.parse(), {0: "", 1: "", 2: ""}
    for ch in stream:
        for choice in ch.choices:
            texts[choice.index] += choice.delta.content or ""
        if all(len(t) > 10 for t in texts.values()):
            break
    procs = [c.stat(pid) for pid in pids]
    assert [p.ppid for p in procs] == [0, pids[0], pids[0]] and all(p.priority == 5 for p in procs)
    assert all(p.usage.cached_tokens >= 16 for p in procs[1:])  # the prompt's full pages, computed once
    stream.close()  # a client leaving mid-stream: TERM, reaped, no pages held
    assert settled(c, pids)
    assert texts[0][:10] == texts[1][:10] == texts[2][:10]  # greedy choices agree


def test_16_concurrent_streaming_clients(gw, c):
    prompts = [f"Hello world {i % 4}" for i in range(16)]
    want = {p: c.generate(MODEL, p, max_tokens=16, ignore_eos=True) for p in set(prompts)}

    async def main():
        async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=gw.token, max_retries=0, timeout=120) as ac:
            async def one(prompt: str) -> str:
                stream = await ac.completions.create(model=MODEL, prompt=prompt, max_tokens=16, stream=True, **GREEDY)
                return "".join([ch.choices[0].text async for ch in stream])
            return await asyncio.gather(*(one(p) for p in prompts))
    outs = asyncio.run(main())
    assert outs == [want[p] for p in prompts]
    assert settled(c)


def test_a_client_that_leaves_ends_its_process(oai, c):
    raw = oai.completions.with_raw_response.create(model=MODEL, prompt="Once upon a time", max_tokens=400,
                                                   stream=True, extra_body={"ignore_eos": True, "priority": -2})
    (pid,) = [int(raw.headers["x-llmos-pid"])]
    stream = raw.parse()
    next(iter(stream))
    assert c.stat(pid).priority == -2 and c.stat(pid).state in ("new", "ready", "running")
    stream.close()
    assert settled(c, [pid])
    # A non-streaming client that gives up on a process someone stopped (SIGSTOP).
    errors: list[Exception] = []

    def request() -> None:
        try:
            oai.with_options(timeout=2).completions.create(model=MODEL, prompt="Once", max_tokens=450, **GREEDY)
        except openai.APITimeoutError as e:
            errors.append(e)
    t = threading.Thread(target=request)
    t.start()
    while not (live := c.ps(live_only=True)):
        time.sleep(0.001)
    c.kill(live[0].pid, "STOP")
    t.join(30)
    assert errors and settled(c, [live[0].pid])


def test_errors_have_openai_shape_and_status(gw, oai, c):
    def fails(exc, **kw):
        with pytest.raises(exc) as e:
            oai.chat.completions.create(**{"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **kw})
        return e.value
    e = fails(openai.BadRequestError, logit_bias={"5": 10})
    assert e.status_code == 400 and e.body["param"] == "logit_bias" and "not supported" in e.body["message"]
    e = fails(openai.BadRequestError, temperature=-1)  # the kernel's InvalidArgument
    assert "temperature must be in" in e.body["message"] and e.body["type"] == "invalid_request_error"
    assert fails(openai.BadRequestError, extra_headers={"X-LLMOS-Priority": "high"}).body["param"] == "X-LLMOS-Priority"
    assert fails(openai.BadRequestError, max_tokens="many").body["param"] == "max_tokens"
    assert fails(openai.BadRequestError, messages=[{"role": "user", "content": "x", "tool_call_id": "1"}]
                 ).body["param"] == "messages[0].tool_call_id"
    e = fails(openai.NotFoundError, model="nope")
    assert e.body["code"] == "model_not_found" and "not loaded" in e.body["message"]
    status, _, body = post(gw, "/v1/completions", b"{not json")
    assert status == 400 and set(body["error"]) == {"message", "type", "param", "code"}
    e = fails(openai.BadRequestError, presence_penalty=0.0, frequency_penalty=0.5)  # 0 is accepted, 0.5 not
    assert e.body["param"] == "frequency_penalty"
    # A full process table (--max-procs 24) is 503 with Retry-After.
    pids = [c.spawn(MODEL, messages=[{"role": "system", "content": "wait"}], interactive=True) for _ in range(24)]
    try:
        status, headers, body = post(gw, "/v1/completions", json.dumps({"model": MODEL, "prompt": "x"}).encode())
        assert status == 503 and headers["Retry-After"] == "1" and "process table full" in body["error"]["message"]
        status, _, body = post(gw, "/v1/completions", json.dumps({"model": MODEL, "prompt": "x", "n": 2}).encode())
        assert status == 503
    finally:
        for pid in pids:
            c.wait(c.kill(pid).pid, reap=True)
    assert settled(c)
    with pytest.raises(SyscallError):
        c.stat(pids[0])


def test_authentication_hook_quota_status_and_metrics_hook(make_kernel):
    """The gateway in-process, with an authenticate hook (401), a pool too small for a request
    (the kernel's ResourceExhausted: 429) and a metrics hook."""
    from llmos.kernel import Cred
    from llmos.kernel.events import Spawned
    from llmos.kernel.mirror import ProcMirror
    from llmos.kernel.thread import KernelThread
    from llmos.syscalls.http.gateway import HttpGateway

    k, _ = make_kernel(pages=8, page_size=4)
    owners: list[str] = []
    k.listeners.append(lambda events: owners.extend(k.procs[e.pid].owner for e in events
                                                    if isinstance(e, Spawned) and e.pid in k.procs))
    alice, ops = Cred("alice"), Cred("ops", admin=True)
    creds = {"Bearer s3cret": alice, "Bearer 0ps": ops}

    async def main():
        kt = KernelThread(k).start()
        mirror = ProcMirror(kt, asyncio.get_running_loop())
        k.listeners.append(mirror.listener)
        gw = HttpGateway(kt, mirror, metrics=lambda: (b"llmos_up 1\n", "text/plain; version=0.0.4"),
                         authenticate=lambda h: creds.get(h.get("Authorization")))
        url = await gw.start("127.0.0.1:0")
        try:
            async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0) as bad:
                with pytest.raises(openai.AuthenticationError) as e:
                    await bad.models.list()
                assert e.value.response.headers["WWW-Authenticate"] == "Bearer"
            async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0) as ac:
                r = await ac.completions.create(model="tiny", prompt="Hello", max_tokens=4, user="end-user-7")
                assert r.usage.completion_tokens <= 4
                with pytest.raises(openai.RateLimitError) as e:
                    await ac.completions.create(model="tiny", prompt="Hello", max_tokens=64)
                assert e.value.response.headers["Retry-After"] == "1" and "KV pages" in e.value.body["message"]
            async with aiohttp.ClientSession() as s:  # the daemon's page: admin tokens only
                for header, status in ((None, 401), ("Bearer s3cret", 403), ("Bearer 0ps", 200)):
                    async with s.get(url + "/metrics", headers={"Authorization": header} if header else {}) as m:
                        assert m.status == status
                        if status == 200:
                            assert await m.text() == "llmos_up 1\n"
                        else:
                            assert (await m.json())["error"]["type"] in ("authentication_error", "permission_error")
        finally:
            await gw.stop()
            kt.stop()
    asyncio.run(main())
    assert owners and set(owners) == {"alice"} and not k.procs  # ops only read the metrics


def test_requests_need_a_live_token(gw, c):
    """No token, a wrong one or a revoked one: 401 in OpenAI's shape, and no process. Loopback
    is no exception: a TCP peer has no uid to trust."""
    body = json.dumps({"model": MODEL, "prompt": "Hi", "max_tokens": 2}).encode()
    before = {p.pid for p in c.ps()}
    status, headers, err = post(gw, "/v1/completions", body, auth=False)
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert set(err["error"]) == {"message", "type", "param", "code"} and err["error"]["type"] == "authentication_error"
    for header in ("Bearer llmos_0123456789ab_forged", f"Basic {gw.token}", gw.token, "Bearer "):
        assert post(gw, "/v1/completions", body, {"Authorization": header}, auth=False)[0] == 401, header
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=60) as anonymous:
        with pytest.raises(openai.AuthenticationError):
            anonymous.models.list()
    with urllib.request.urlopen(gw.url + "/health", timeout=10) as r:  # probes need no token
        assert r.status == 200
    secret = c.create_token("carol", user="carol")[1]
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=secret, max_retries=0, timeout=60) as carol:
        assert carol.completions.create(model=MODEL, prompt="Hi", max_tokens=2, **GREEDY).usage.completion_tokens == 2
        c.revoke_token("carol")
        with pytest.raises(openai.AuthenticationError):  # at once
            carol.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    assert {p.pid for p in c.ps()} == before and settled(c)


def stream_as(gw, token: str, max_tokens: int = 400):
    """A long streaming completion under `token`: its pid and the open stream, one chunk read."""
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=token, max_retries=0, timeout=60)
    raw = client.completions.with_raw_response.create(model=MODEL, prompt="Once upon a time", max_tokens=max_tokens,
                                                      stream=True, extra_body={"ignore_eos": True})
    stream = raw.parse()
    next(iter(stream))
    return int(raw.headers["x-llmos-pid"]), stream, client


def test_a_users_http_process_is_theirs_alone(gw, c):
    pid, stream, client = stream_as(gw, gw.tokens["alice"])
    try:
        with gw.client(timeout=60, token=gw.tokens["alice"]) as alice, \
                gw.client(timeout=60, token=gw.tokens["bob"]) as bob:
            assert c.stat(pid).owner == "alice" and alice.stat(pid).owner == "alice"
            assert pid in {p.pid for p in alice.ps()} and pid not in {p.pid for p in bob.ps()}
            for call in (lambda: bob.stat(pid), lambda: bob.kill(pid), lambda: bob.wait(pid)):
                with pytest.raises(SyscallError) as e:
                    call()
                assert (e.value.code, e.value.message) == ("not_found", f"no process with pid {pid}")
            assert c.stat(pid).state in ("new", "ready", "running")  # untouched by bob
    finally:
        stream.close()
        client.close()
    assert settled(c, [pid])


def test_a_users_quota_is_429_with_retry_after(gw, c):
    """--quota-procs 1: alice's second concurrent request is refused; bob is not held back."""
    pid, stream, client = stream_as(gw, gw.tokens["alice"])
    try:
        with pytest.raises(openai.RateLimitError) as e:
            client.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
        assert e.value.status_code == 429 and e.value.response.headers["Retry-After"] == "1"
        assert "user alice is at their limit of 1 concurrent processes" in e.value.body["message"]
        status, headers, _ = post(gw, "/v1/completions", json.dumps({"model": MODEL, "prompt": "x"}).encode(),
                                  {"Authorization": f"Bearer {gw.tokens['alice']}"})
        assert status == 429 and headers["Retry-After"] == "1"
        with openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.tokens["bob"], max_retries=0, timeout=60) as bob:
            assert bob.completions.create(model=MODEL, prompt="Hi", max_tokens=2, **GREEDY).usage.completion_tokens == 2
    finally:
        stream.close()
        client.close()
    assert settled(c, [pid])
