"""The crash-safe journal: the module on a temp dir, then a real llmosd killed with SIGKILL."""
import signal
import sqlite3
import time

import pytest
from daemon import start_daemon

from llmos.drivers.driver import SamplingParams
from llmos.journal_db import Journal, attach
from llmos.kernel import Limits, ROOT, SpawnSpec, State, StopRules

MODEL = "tiny-llama"


# --- the module, in process ------------------------------------------------------------------------
def crash(k, journal) -> None:
    """What kill -9 leaves: the committed journal; later changes never reach it."""
    assert journal.flush()
    k.listeners.clear()
    journal.close()


def spawn_mix(k):
    long = StopRules(max_tokens=60, ignore_eos=True)
    return [k.spawn(ROOT, SpawnSpec("tiny", prompt="Hello world", stop=long)),
            k.spawn(ROOT, SpawnSpec("tiny", prompt="Once upon a time", stop=long, sampling=SamplingParams(temperature=0.9, seed=7))),
            k.spawn(ROOT, SpawnSpec("tiny", messages=[{"role": "user", "content": "Hi"}], interactive=True,
                    stop=StopRules(max_tokens=5, ignore_eos=True))),
            k.spawn(ROOT, SpawnSpec("tiny", prompt="The quick brown fox", stop=StopRules(max_tokens=8, ignore_eos=True))),
            k.spawn(ROOT, SpawnSpec("tiny", prompt="An operating system", stop=long)),
            k.spawn(ROOT, SpawnSpec("tiny", prompt="Hello", stop=StopRules(max_tokens=60, stop=["e"], ignore_eos=True)))]


def test_a_recovered_kernel_goes_on_exactly_as_an_uninterrupted_one(make_kernel, tmp_path):
    k, _ = make_kernel(pages=256)
    journal = attach(k, tmp_path / "journal.db")
    procs = spawn_mix(k)
    for _ in range(12):
        k.step()
    k.signal(ROOT, procs[4].pid, "STOP")
    crash(k, journal)
    seen = {p.pid: (p.state, p.stdout, list(p.tokens)) for p in procs}
    for _ in range(5):  # uncommitted: lost by the crash, recomputed after it
        k.step()

    k2, _ = make_kernel(pages=256)
    journal2 = attach(k2, tmp_path / "journal.db")
    for pid, (state, stdout, tokens) in seen.items():
        q = k2.procs[pid]
        assert (q.stdout, q.tokens) == (stdout, tokens)
        assert q.state == (State.NEW if state == State.READY else state)
    assert k2.procs[procs[4].pid].state == State.STOPPED
    assert k2.spawn(ROOT, SpawnSpec("tiny", prompt="x", stop=StopRules(max_tokens=2))).pid == len(procs) + 1
    for kern in (k, k2):
        kern.signal(ROOT, procs[4].pid, "CONT")
        kern.run_until_idle()
        kern.write(ROOT, procs[2].pid, "Tell me more")
        kern.run_until_idle()
    for p in procs:
        q = k2.procs[p.pid]
        assert (q.stdout, q.tokens, q.state, q.reason) == (p.stdout, p.tokens, p.state, p.reason), p.pid
    assert k2.procs[procs[5].pid].reason == "stop"
    journal2.close()


def test_reaped_and_evicted_processes_leave_the_journal(make_kernel, tmp_path):
    k, _ = make_kernel()
    k.config.keep_exited = 2
    journal = attach(k, tmp_path / "journal.db")
    pids = [k.spawn(ROOT, SpawnSpec("tiny", prompt=f"Hello {i}", stop=StopRules(max_tokens=2))).pid for i in range(4)]
    k.run_until_idle()
    k.reap(ROOT, pids[3])
    crash(k, journal)
    with sqlite3.connect(tmp_path / "journal.db") as db:
        assert [r[0] for r in db.execute("SELECT pid FROM procs")] == [pids[2]]
        assert {r[0] for r in db.execute("SELECT pid FROM chunks")} == {pids[2]}
    k2, _ = make_kernel()
    attach(k2, tmp_path / "journal.db").close()
    assert list(k2.procs) == [pids[2]] and k2.procs[pids[2]].stdout == k.procs[pids[2]].stdout
    assert k2.spawn(ROOT, SpawnSpec("tiny", prompt="x", stop=StopRules(max_tokens=2))).pid == pids[3] + 1  # the reaped pid is not reused


def test_commits_are_batched(make_kernel, tmp_path):
    k, _ = make_kernel(pages=256)
    journal = attach(k, tmp_path / "journal.db", interval_s=30, max_tokens=40)
    for i in range(4):
        k.spawn(ROOT, SpawnSpec("tiny", prompt=f"Hello {i}", stop=StopRules(max_tokens=50, ignore_eos=True)))
    k.run_until_idle()
    deadline = time.monotonic() + 10
    while journal.stats.tokens < 160 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert 4 <= journal.stats.commits <= 6 and journal.stats.tokens >= 160  # by tokens, not per step
    journal.close()


def test_a_corrupt_journal_is_moved_aside(make_kernel, tmp_path):
    (tmp_path / "journal.db").write_bytes(b"this is not a database" * 100)
    k, _ = make_kernel()
    journal = attach(k, tmp_path / "journal.db")
    (aside,) = tmp_path.glob("journal.db.corrupt-*")
    assert aside.read_bytes().startswith(b"this is not")
    (msg,) = [m for _, level, m in k.ring if level == "error"]
    assert "is corrupt" in msg and aside.name in msg
    pid = k.spawn(ROOT, SpawnSpec("tiny", prompt="Hello", stop=StopRules(max_tokens=3))).pid
    k.run_until_idle()
    crash(k, journal)
    records, next_pid = Journal(tmp_path / "journal.db").load()
    assert [r.pid for r in records] == [pid] and next_pid == pid + 1


def test_a_process_whose_model_is_gone_ends_with_a_reason(make_kernel, tmp_path):
    k, _ = make_kernel()
    journal = attach(k, tmp_path / "journal.db")
    pid = k.spawn(ROOT, SpawnSpec("tiny", prompt="Hello", stop=StopRules(max_tokens=30), limits=Limits(max_pages=40))).pid
    k.step(), k.step()
    crash(k, journal)
    from llmos.drivers.cpu import CPUDriver
    from llmos.kernel import Kernel
    k2 = Kernel(CPUDriver())
    attach(k2, tmp_path / "journal.db").close()
    p = k2.procs[pid]
    assert (p.state, p.reason) == (State.KILLED, "model 'tiny' not loaded after restart")
    assert p.tokens == k.procs[pid].tokens[:len(p.tokens)] and p.limits.max_pages == 40
    assert any("not loaded" in m for _, level, m in k2.ring if level == "warning")


# --- a real daemon, killed with SIGKILL mid-generation -------------------------------------------------
LONG = ["Hello world", "Once upon a time", "An operating system for language models"]


@pytest.fixture(scope="module")
def crashed(tmp_path_factory, tiny_model_dir):
    """A daemon with processes in every state, killed -9 mid-generation and restarted."""
    state = tmp_path_factory.mktemp("crash")
    args = (str(tiny_model_dir), "--kv-pages", "512", "--page-size", "16")
    d = start_daemon(state, *args)
    info: dict = {}
    with d.client(timeout=60) as c:
        info["done"] = c.spawn(MODEL, "The quick brown fox", max_tokens=20, ignore_eos=True)
        info["done_out"] = c.wait(info["done"]).output
        info["chat"] = c.spawn(MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, interactive=True,
                               ignore_eos=True)
        info["chat_out"] = c.wait(info["chat"], until="turn").output
        info["stopped"] = c.spawn(MODEL, "Hello", max_tokens=300, ignore_eos=True)
        next(c.read(info["stopped"]))
        c.kill(info["stopped"], "STOP")
        info["long"] = [c.spawn(MODEL, p, max_tokens=440, ignore_eos=True) for p in LONG]
        info["seeded"] = c.spawn(MODEL, LONG[0], max_tokens=440, ignore_eos=True, temperature=0.8, seed=11)
        before = ""
        for ch in c.read(info["long"][0]):
            before += ch.text
            if len(before) >= 40:
                break
        info["before"] = before
        time.sleep(0.12)  # past a commit or two (every 50 ms), and well before 440 tokens
        info["live_at_kill"] = [p.pid for p in c.ps(live_only=True)]
    d.stop(signal.SIGKILL)
    d2 = start_daemon(state, *args)
    with d2.client(timeout=60) as c:
        info["resumed_at"] = list(c.read(info["long"][0], until="now"))[-1].offset
    yield d2, info
    d2.stop_cleanly()


def test_after_kill_9_every_process_is_back_under_its_pid(crashed):
    d, info = crashed
    with d.client(timeout=60) as c:
        procs = {p.pid: p for p in c.ps()}
        assert procs[info["done"]].state == "exited" and procs[info["chat"]].state == "blocked"
        assert procs[info["stopped"]].state == "stopped"
        assert set(info["live_at_kill"]) <= set(procs)
        assert set(info["long"]) <= set(info["live_at_kill"])  # killed mid-generation (they may be done by now)
        assert c.spawn(MODEL, "Hello", max_tokens=2) > max(procs)
        assert any("journal: restored" in ln.msg for ln in c.dmesg())


def test_outputs_equal_an_uninterrupted_run(crashed):
    d, info = crashed
    with d.client(timeout=120) as c:
        for pid, prompt in zip(info["long"], LONG):
            again = c.spawn(MODEL, prompt, max_tokens=440, ignore_eos=True)
            assert c.wait(pid).output == c.wait(again).output and c.wait(pid).usage.generated_tokens == 440
        again = c.spawn(MODEL, LONG[0], max_tokens=440, ignore_eos=True, temperature=0.8, seed=11)
        assert c.wait(info["seeded"]).output == c.wait(again).output


def test_readers_reattach_with_no_gap_and_no_duplicate(crashed):
    d, info = crashed
    pid, before = info["long"][0], info["before"]
    with d.client(timeout=120) as c:
        full = c.wait(pid).output
        assert info["resumed_at"] >= len(before)  # it went on from the journal, not from its prompt
        rest = "".join(ch.text for ch in c.read(pid, len(before)))
        assert before + rest == full and "".join(ch.text for ch in c.read(pid)) == full


def test_finished_interactive_and_stopped_processes(crashed):
    d, info = crashed
    with d.client(timeout=120) as c:
        r = c.wait(info["done"])
        assert (r.output, r.state, r.reason) == (info["done_out"], "exited", "length")
        assert "".join(ch.text for ch in c.read(info["done"])) == info["done_out"]
        assert c.wait(info["chat"], until="turn").output == info["chat_out"]
        offset = c.write(info["chat"], "Tell me more")
        assert offset == len(info["chat_out"])
        fresh = c.spawn(MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, interactive=True,
                        ignore_eos=True)
        c.wait(fresh, until="turn"), c.write(fresh, "Tell me more")
        assert c.wait(info["chat"], until="turn").output == c.wait(fresh, until="turn").output
        c.kill(info["stopped"], "CONT")
        again = c.spawn(MODEL, "Hello", max_tokens=300, ignore_eos=True)
        assert c.wait(info["stopped"]).output == c.wait(again).output


def test_a_corrupt_journal_is_reported_and_the_daemon_starts(tmp_path, tiny_model_dir):
    (tmp_path / "journal.db").write_bytes(b"\x00garbage" * 512)
    d = start_daemon(tmp_path, str(tiny_model_dir))
    try:
        with d.client(timeout=60) as c:
            assert any("is corrupt" in ln.msg and ln.level == "error" for ln in c.dmesg())
            pid = c.spawn(MODEL, "Hello", max_tokens=3)
            assert c.wait(pid).state == "exited"
    finally:
        d.stop()
    assert list(tmp_path.glob("journal.db.corrupt-*")) and "is corrupt" in d.log.read_text()
