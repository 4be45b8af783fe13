"""Usage accounting: the kernel's Charged events as plain kernel code, the rules of who reads
what, the SQLite store (sums per user, model and hour; kept across reopening), then a real
llmosd: known work as two users, the Usage syscall, `llmos usage`, GET /v1/usage, the
per-user metrics switch, and the records after a restart on the same state dir."""
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import datetime, timezone

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon import start_daemon
from llmos.kernel import ROOT, Cred, InvalidArgument, PermissionDenied, SpawnSpec, StopRules
from llmos.kernel.accounting import UsageQuery, parse_since, usage_query
from llmos.kernel.events import Charged
from llmos.syscalls.sdk import SyscallError
from llmos.usage_db import UsageDB, attach

MODEL = "tiny-llama"
LLMOS = [sys.executable, "-m", "llmos.shell.cli"]
ALICE, BOB = Cred("alice"), Cred("bob")


def charges(k) -> list[Charged]:
    seen: list[Charged] = []
    k.listeners.append(lambda events: seen.extend(e for e in events if isinstance(e, Charged)))
    return seen


def total(seen: list[Charged], owner: str, field: str) -> float:
    return sum(getattr(c, field) for c in seen if c.owner == owner)


def spec(tokens: list[int], n: int, owner: str = "", **kw) -> SpawnSpec:
    return SpawnSpec("tiny", tokens=tokens, stop=StopRules(max_tokens=n, ignore_eos=True), owner=owner, **kw)


# --- the kernel's side --------------------------------------------------------------------------
def test_a_step_is_split_by_tokens_and_adds_up_to_the_kernels_device_time(make_kernel):
    k, _ = make_kernel(pages=128, page_size=4, budget=64)
    seen = charges(k)
    k.spawn(ROOT, spec(list(range(3, 15)), 10, owner="alice"))   # 12 prompt tokens, 10 generated
    k.spawn(ROOT, spec(list(range(20, 32)), 10, owner="alice"))
    b = k.spawn(ROOT, spec(list(range(40, 49)), 6, owner="bob"))  # 9 and 6
    k.run_until_idle()
    assert total(seen, "alice", "prompt_tokens") == 24 and total(seen, "alice", "generated_tokens") == 20
    assert total(seen, "bob", "prompt_tokens") == 9 and total(seen, "bob", "generated_tokens") == 6
    assert total(seen, "alice", "processes") == 2 and total(seen, "bob", "processes") == 1
    assert {c.model for c in seen} == {"tiny"}
    a_s, b_s = total(seen, "alice", "step_seconds"), total(seen, "bob", "step_seconds")
    assert a_s > 0 and b_s > 0
    assert a_s + b_s == pytest.approx(k.device_time.step_seconds, rel=0.05)
    assert a_s + b_s <= k.device_time.step_seconds + 1e-9  # the pools' shares never count more than the steps took
    assert b.usage.generated_tokens == 6


def test_the_split_follows_each_processs_tokens(make_kernel):
    """One step of a 30-token prefill beside a 1-token one: shares 30/31 and 1/31."""
    k, _ = make_kernel(pages=128, page_size=4, budget=64)
    seen = charges(k)
    k.spawn(ROOT, spec(list(range(3, 33)), 1, owner="alice"))
    k.spawn(ROOT, spec([7], 1, owner="bob"))
    k.step()
    a, b = total(seen, "alice", "step_seconds"), total(seen, "bob", "step_seconds")
    assert a > 0 and a / b == pytest.approx(30.0)


def test_forks_and_turns_charge_only_their_own_input(make_kernel):
    k, _ = make_kernel(pages=128, page_size=4, budget=64)
    seen = charges(k)
    p = k.spawn(ROOT, SpawnSpec("tiny", messages=[{"role": "user", "content": "Hi"}], interactive=True,
                                stop=StopRules(max_tokens=3, ignore_eos=True), owner="alice"))
    first = len(p.tokens)
    k.run_until_idle()
    child = k.fork(ROOT, p.pid)  # inherits its parent's tokens: they are the parent's input, not new
    k.write(ROOT, p.pid, "And then?")
    turn = len(p.tokens) - first - 3
    k.run_until_idle()
    assert total(seen, "alice", "prompt_tokens") == first + turn and turn > 0
    assert total(seen, "alice", "processes") == 2 and child.usage.generated_tokens == 3
    assert total(seen, "alice", "generated_tokens") == 3 + 3 + 3


def test_task_units_are_charged_whole_to_their_owner(make_kernel):
    class Units:
        kind = "train"

        def __init__(self) -> None:
            self.left = 3

        def run_unit(self, kernel, proc) -> bool:
            self.left -= 1
            sum(range(20000))  # some work to time
            return self.left == 0

        def close(self, kernel, proc, reason) -> None:
            pass

    k, _ = make_kernel()
    seen = charges(k)
    k.spawn_task(ROOT, "tiny", Units(), owner="carol")
    k.run_until_idle()
    assert total(seen, "carol", "processes") == 1
    assert total(seen, "carol", "task_seconds") == pytest.approx(k.device_time.task_seconds)
    assert k.device_time.task_seconds > 0
    assert total(seen, "carol", "step_seconds") == 0 == k.device_time.step_seconds


# --- who reads what -----------------------------------------------------------------------------
def test_users_read_their_own_usage_and_admins_anyones():
    assert usage_query(ALICE).user == "alice" and usage_query(ALICE, "alice").user == "alice"
    assert usage_query(ROOT).user == "" and usage_query(ROOT, "bob").user == "bob"
    with pytest.raises(PermissionDenied, match="alice may not read the usage of bob"):
        usage_query(ALICE, "bob")
    with pytest.raises(InvalidArgument, match="hour, day, model, user"):
        usage_query(ALICE, by="week")
    with pytest.raises(InvalidArgument, match="at most 256"):
        usage_query(ROOT, model="m" * 300)


def test_since_takes_iso_times_and_times_ago():
    now = 1_800_000_000.0
    assert parse_since("", now) == 0.0
    assert parse_since("24h", now) == now - 86400 and parse_since("7d", now) == now - 7 * 86400
    assert parse_since("90m", now) == now - 5400
    assert parse_since("2026-12-01", now) == datetime(2026, 12, 1, tzinfo=timezone.utc).timestamp()
    assert parse_since("2026-12-01T09:30+02:00", now) == datetime(2026, 12, 1, 7, 30, tzinfo=timezone.utc).timestamp()
    for bad in ("yesterday", "24 hours", "-3h", "2026-13-01", "1e9h", "x" * 500):
        with pytest.raises(InvalidArgument, match=r"ISO date .*\(24h, 7d\)"):
            parse_since(bad, now)


# --- the store ----------------------------------------------------------------------------------
H = 3600
T0 = 1_796_083_200  # 2026-12-01 00:00 UTC


def test_the_store_sums_by_hour_day_model_and_user_and_keeps_them(tmp_path):
    db = UsageDB(tmp_path / "usage.db", interval_s=0.01).start()
    db.submit(T0 + 10, [Charged("alice", "m", prompt_tokens=5, generated_tokens=2, step_seconds=0.5, processes=1),
                        Charged("alice", "m", generated_tokens=1, step_seconds=0.25)])
    db.submit(T0 + H + 5, [Charged("alice", "m:int8", prompt_tokens=3, task_seconds=2.0, processes=1)])
    db.submit(T0 + 86400 + 1, [Charged("bob", "m", prompt_tokens=7, generated_tokens=4, step_seconds=1.0)])
    rows = db.query(UsageQuery(by="hour"))
    assert [(r.user, r.model, r.period_start, r.prompt_tokens, r.generated_tokens) for r in rows] == [
        ("alice", "m", T0, 5, 3), ("alice", "m:int8", T0 + H, 3, 0), ("bob", "m", T0 + 86400, 7, 4)]
    assert rows[0].step_seconds == 0.75 and rows[0].processes == 1 and rows[1].task_seconds == 2.0
    days = db.query(UsageQuery(by="day", user="alice"))
    assert [(r.model, r.period_start, r.prompt_tokens) for r in days] == [("m", T0, 5), ("m:int8", T0, 3)]
    by_model = db.query(UsageQuery(by="model"))
    assert [(r.user, r.model, r.prompt_tokens, r.period_start) for r in by_model] == [("", "m", 12, T0),
                                                                                      ("", "m:int8", 3, T0 + H)]
    by_user = db.query(UsageQuery(by="user", since=T0 + H + 1800))  # the hour holding `since` counts whole
    assert [(r.user, r.model, r.prompt_tokens) for r in by_user] == [("alice", "", 3), ("bob", "", 7)]
    assert db.query(UsageQuery(model="nope")) == []
    assert db.user_totals()["alice"] == (8, 3, 0.75, 2.0, 2)
    db.close()
    again = UsageDB(tmp_path / "usage.db").start()
    assert again.query(UsageQuery(by="hour")) == rows
    assert (tmp_path / "usage.db").stat().st_mode & 0o777 == 0o600
    again.close()


def test_a_corrupt_store_is_moved_aside(tmp_path, make_kernel):
    k, _ = make_kernel()
    (tmp_path / "usage.db").write_bytes(b"not a database" * 100)
    db = attach(k, tmp_path / "usage.db", interval_s=0.01)
    assert any(p.name.startswith("usage.db.corrupt-") for p in tmp_path.iterdir())
    k.spawn(ROOT, spec([5, 6, 7], 2, owner="dave"))
    k.run_until_idle()
    assert [(r.user, r.prompt_tokens, r.generated_tokens) for r in db.query(UsageQuery(by="user"))] == [
        ("dave", 3, 2)]
    db.close()


# --- a real daemon ------------------------------------------------------------------------------
def _start(state, tiny_model_dir, *extra):
    d = start_daemon(state, str(tiny_model_dir), "--kv-pages", "256", "--grace", "2",
                     "--metrics", "127.0.0.1:0", "--http", "127.0.0.1:0", *extra)
    d.http = re.search(r"http://[^\s,]+", d.ready).group(0)
    d.metrics = re.search(r"metrics at (http://\S+)", d.ready).group(1)
    return d


def _get(url: str, token: str | None = None) -> tuple[int, dict | str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read().decode()
            return r.status, json.loads(body) if "json" in r.headers.get("Content-Type", "") else body
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())


def _labels(metrics_url: str) -> tuple[set[str], str]:
    with urllib.request.urlopen(metrics_url, timeout=30) as r:
        page = r.read().decode()
    return {name for f in text_string_to_metric_families(page) for s in f.samples for name in s.labels}, page


def _sums(rows) -> dict[str, tuple]:
    out: dict[str, list] = {}
    for r in rows:
        s = out.setdefault(r.user, [0, 0, 0.0, 0])
        s[0] += r.prompt_tokens
        s[1] += r.generated_tokens
        s[2] += r.step_seconds
        s[3] += r.processes
    return {u: tuple(s) for u, s in out.items()}


def test_known_work_as_two_users_end_to_end(tmp_path, tiny_model_dir):
    state = tmp_path / "state"
    d = _start(state, tiny_model_dir, "--metrics-per-user")
    try:
        with d.client(timeout=60) as root:
            tokens = {u: root.create_token(u)[1] for u in ("alice", "bob")}
            ops = root.create_token("ops", user="ops", admin=True)[1]
        with d.client(timeout=60, token=tokens["alice"]) as a, d.client(timeout=60, token=tokens["bob"]) as b:
            pids = [a.spawn(MODEL, tokens=list(range(3, 15)), max_tokens=10, ignore_eos=True),
                    a.spawn(MODEL, tokens=list(range(20, 32)), max_tokens=10, ignore_eos=True),
                    b.spawn(MODEL, tokens=list(range(40, 49)), max_tokens=6, ignore_eos=True)]
            for c, pid in zip((a, a, b), pids):
                c.wait(pid, reap=True)
            mine = a.usage()
            assert {r.user for r in mine} == {"alice"} and {r.model for r in mine} == {MODEL}
            assert _sums(mine)["alice"][:2] == (24, 20) and _sums(mine)["alice"][3] == 2
            assert _sums(b.usage(by="day"))["bob"][:2] == (9, 6)
            with pytest.raises(SyscallError) as e:
                b.usage(user="alice")
            assert e.value.code == "permission_denied" and "alice" in str(e.value)
            with pytest.raises(SyscallError) as e:
                a.usage(since="last tuesday")
            assert e.value.code == "invalid_argument" and "24h, 7d" in str(e.value)
        with d.client(timeout=60) as root:
            everyone = root.usage(by="user")
            sums = _sums(everyone)
            assert set(sums) == {"alice", "bob"} and sums["alice"][:2] == (24, 20) and sums["bob"][:2] == (9, 6)
            assert sums["alice"][2] > 0 and sums["bob"][2] > 0
            daemon_total = root.stats().step_seconds
            assert sums["alice"][2] + sums["bob"][2] == pytest.approx(daemon_total, rel=0.05)
            assert _sums(root.usage(user="bob")) == {"bob": sums["bob"]}
            assert root.usage(since="2000-01-01", model="no-such-model") == []

        status, body = _get(d.http + "/v1/usage?by=user", tokens["alice"])
        assert status == 403 and "only an admin" in body["error"]["message"]
        status, body = _get(d.http + "/v1/usage?by=user&since=7d", ops)
        assert status == 200 and {(r["user"], r["prompt_tokens"], r["generated_tokens"]) for r in body["data"]} == {
            ("alice", 24, 20), ("bob", 9, 6)}
        status, body = _get(d.http + "/v1/usage?by=week", ops)
        assert status == 400 and "hour, day, model, user" in body["error"]["message"]
        status, body = _get(d.http + "/v1/usage?usr=alice", ops)
        assert status == 400 and "'usr'" in body["error"]["message"]

        out = subprocess.run([*LLMOS, "usage", "--by", "user"], env=d.env, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert re.search(r"alice\s+\*\s+24\s+20\s", out.stdout) and re.search(r"bob\s+\*\s+9\s+6\s", out.stdout)
        out = subprocess.run([*LLMOS, "usage", "--json", "--user", "bob"], env=d.env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert sum(r["prompt_tokens"] for r in json.loads(out.stdout)) == 9
        assert {r["user"] for r in json.loads(out.stdout)} == {"bob"}

        labels, page = _labels(d.metrics)
        assert "user" in labels
        fam = {f.name: f for f in text_string_to_metric_families(page)}
        gen = {s.labels["user"]: s.value for s in fam["llmos_user_generated_tokens"].samples
               if s.name.endswith("_total")}
        assert gen == {"alice": 20, "bob": 6}
        assert fam["llmos_step_seconds"].samples[0].value == pytest.approx(daemon_total, rel=0.05)
    finally:
        d.stop_cleanly()

    d = _start(state, tiny_model_dir)  # the same state dir, without --metrics-per-user
    try:
        with d.client(timeout=60) as root:
            assert _sums(root.usage(by="user")) == sums  # kept across the restart
            assert root.stats().step_seconds == 0.0  # the daemon's own total starts again
        labels, _ = _labels(d.metrics)
        assert "user" not in labels and "state" in labels  # no user label without the switch
    finally:
        d.stop_cleanly()
