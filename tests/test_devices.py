"""Several devices in one daemon (#17): `llmosd --device cpu:0,cpu:1` runs a kernel per device
under one process table. Placement by cost, fork on its parent's device, stdin, signals and
pipes across devices, the views, and a lost device's processes continuing on the daemon's own,
each greedy output equal to transformers' generate()."""
import contextlib
import time

import psutil
import pytest

from llmos.syscalls.sdk import SyscallError

from daemon import start_daemon
from llmos.kernel.placement import Candidate, cached_prefix, choose
from llmos.worker import plan

MODEL = "tiny-llama"


# --- placement, as plain data -------------------------------------------------------------------------
def cand(name, prompt=100, cached=0, live=0, free=1000, need=7):
    return Candidate(name, prompt, cached, live, free, need)


def test_placement_prefers_the_prefix_cache_then_the_idle_device():
    assert choose([cand("cpu:0", live=1), cand("cpu:1")]).device == "cpu:1"
    # A cached 96-token prefix outweighs one more process decoding there.
    assert choose([cand("cpu:0", cached=96, live=1), cand("cpu:1")]).device == "cpu:0"
    assert choose([cand("cpu:0", cached=96, live=3), cand("cpu:1")]).device == "cpu:1"
    # A device without the free pages for the prompt loses to one with them.
    assert choose([cand("cpu:0", cached=96, free=2), cand("cpu:1", live=2)]).device == "cpu:1"
    assert choose([cand("a"), cand("b")]).device == "a"  # a tie: the first listed
    with pytest.raises(ValueError):
        choose([])


def test_a_prefix_summary_counts_only_an_unbroken_chain():
    assert cached_prefix([1, 2, 3, 4], {1, 2, 4}) == 2
    assert cached_prefix([1, 2], set()) == 0


def test_device_lists_split_the_cores():
    a, b = plan("cpu:0,cpu:1", cpus=[0, 1, 2, 3])
    assert (a.label, a.base, a.cores, a.threads) == ("cpu:0", "cpu", (0, 1), 2)
    assert (b.label, b.cores, b.threads) == ("cpu:1", (2, 3), 2)
    assert [d.label for d in plan("all", gpus=2)] == ["cuda:0", "cuda:1"]
    assert [d.label for d in plan("all", gpus=0)] == ["cpu"]
    assert plan("cpu")[0].cores == ()  # one device: no pinning
    for bad, why in (("cpu:0,cpu:0", "twice"), ("cpu:0,tpu:1", "not a device"), ("auto,cpu:1", "auto names one"),
                     ("cpu:0,cpu:1,cpu:2", "at least as many cores")):
        with pytest.raises(ValueError, match=why):
            plan(bad, cpus=[0, 1])


def test_one_device_refuses_what_needs_several(make_kernel):
    from llmos.kernel import ROOT, InvalidArgument, NotFound, PermissionDenied, SpawnSpec, StopRules
    from llmos.kernel.users.cred import Cred

    k, _ = make_kernel()
    p = k.spawn(Cred("bob"), SpawnSpec("tiny", tokens=[5, 6, 7], stop=StopRules(max_tokens=8)))
    assert k.device_name == "cpu:0" and k.where("tiny") == ["cpu:0"]
    with pytest.raises(InvalidArgument, match="no device 'cpu:1'; devices are cpu:0"):
        k.migrate(Cred("bob"), p.pid, "cpu:1")
    with pytest.raises(InvalidArgument, match=r"no device 'xxxx.{60}'; devices are cpu:0"):
        k.migrate(ROOT, p.pid, "x" * 10_000)  # named back bounded
    with pytest.raises(NotFound, match=f"no process with pid {p.pid}"):
        k.migrate(Cred("eve"), p.pid, "cpu:0")  # another user's process does not exist for her
    with pytest.raises(PermissionDenied, match="only an admin may drain a device"):
        k.drain(Cred("bob"), "cpu:0")
    with pytest.raises(InvalidArgument, match=r"no device 'yyyy.{60}'; devices are cpu:0"):
        k.drain(ROOT, "y" * 10_000)
    with pytest.raises(InvalidArgument, match="65 devices named; at most 64"):
        k.replica_targets(ROOT, 0, [f"cpu:{i}" for i in range(65)])
    with pytest.raises(InvalidArgument, match=r"no device 'zzzz.{60}'; devices are cpu:0"):
        k.replica_targets(ROOT, 0, ["z" * 10_000])
    for replicas, names, why in ((2, (), "2 replicas asked, but this daemon has 1 device"),
                                 (-1, (), r"replicas must be in \[0, 64\]"), (0, ("gpu:3",), "no device 'gpu:3'")):
        with pytest.raises(InvalidArgument, match=why):
            k.replica_targets(ROOT, replicas, names)
    assert k.replica_targets(Cred("bob"), 1) == []  # one copy, here: nothing for an admin to do


def test_a_process_whose_pages_are_in_flight_does_not_fork(make_kernel):
    from llmos.kernel import ROOT, FailedPrecondition, SpawnSpec, StopRules

    k, _ = make_kernel()
    p = k.spawn(ROOT, SpawnSpec("tiny", tokens=[5, 6, 7], stop=StopRules(max_tokens=8)))
    p.device, p.incoming = "cpu:2", "cpu:1"  # the state kernel/migrate.py leaves between cpu:1 and cpu:2
    with pytest.raises(FailedPrecondition, match="is migrating to cpu:2; fork it once it has arrived there"):
        k.fork(ROOT, p.pid)
    assert len(k.procs) == 1


def test_kv_pages_carry_a_process_to_another_kernel_exactly(make_kernel):
    """Migration by pages, between two kernels in one process: the target computes one token, not the context."""
    from llmos.kernel import ROOT, SpawnSpec, StopRules, devices, migrate, uplink

    a, ref = make_kernel(pages=64, page_size=4)
    b, _ = make_kernel(pages=64, page_size=4)
    prompt = list(range(5, 27))
    p = a.spawn(ROOT, SpawnSpec("tiny", tokens=prompt, stop=StopRules(max_tokens=30, ignore_eos=True)))
    while len(p.out_tokens) < 10:
        a.step()
    kv = migrate.export(a, a.model("tiny"), p)
    per_page = 2 * a.model("tiny").info.num_layers * 4 * 2 * 16 * 4  # k and v, layers, 4 tokens, 2 heads of 16, fp32
    assert kv[0] == p.num_computed == len(p.tokens) - 1 and len(kv[1]) == -(-kv[0] // 4) * per_page
    uplink.adopt(b, uplink.Uplink(b, lambda msg: None), devices.record(p), kv)
    q = b.procs[p.pid]
    assert (q.num_computed, q.out_tokens, q.stdout) == (p.num_computed, p.out_tokens, p.stdout)
    assert b.step() == 1  # its context came as pages: one decode token, no recompute
    b.run_until_idle()
    assert q.out_tokens == ref.greedy(prompt, 30) and q.state.value == "exited"
    with pytest.raises(ValueError, match="16384 bytes do not fit 2 pages of this pool"):
        b.driver.write_pages("tiny", [0, 1], kv[1])  # 8 pages of KV into 2


def test_a_pool_summary_sends_prefix_hashes_only_when_they_change(make_kernel):
    from llmos.kernel import ROOT, SpawnSpec, StopRules, uplink

    k, _ = make_kernel(page_size=4)
    up = uplink.Uplink(k, lambda msg: None)
    assert up.summary()[0]["tiny"][1] == [] and up.summary()[0]["tiny"][1] is None
    k.spawn(ROOT, SpawnSpec("tiny", tokens=list(range(5, 22)), stop=StopRules(max_tokens=2)))
    k.run_until_idle()
    assert len(up.summary()[0]["tiny"][1]) == 4 and up.summary()[0]["tiny"][1] is None


@contextlib.contextmanager
def kernel_and_worker(tmp_path, tiny_model_dir, cfg):
    """A kernel (in this process) with a real worker device cpu:1 under it, the tiny model on both."""
    import dataclasses

    from llmos.drivers.cpu import CPUDriver
    from llmos.kernel import ROOT, Kernel, devices
    from llmos.kernel.models import ModelStore
    from llmos.kernel.users.quota import Quotas
    from llmos.worker import DeviceSpec, WorkerLink

    k = Kernel(CPUDriver(), cfg, ModelStore(tmp_path / "store"))
    m = k.load_model(ROOT, str(tiny_model_dir))
    link = WorkerLink(DeviceSpec("cpu:1", "cpu", 1), dataclasses.replace(cfg, quotas=Quotas()), str(tmp_path / "store"))
    try:
        d = devices.Device("cpu:1", link, info=link.wait_ready())
        link.on_news = d.inbox.append
        k.devices.append(d)
        k.add_replicas(devices.load_replicas(ROOT, [d], {"ref": str(tiny_model_dir), "name": m.name}))
        yield k, m
    finally:
        link.close()


def test_an_idle_replica_unloads_after_its_keep_alive(tmp_path, tiny_model_dir):
    from llmos.kernel import ROOT, KernelConfig, SpawnSpec, StopRules

    with kernel_and_worker(tmp_path, tiny_model_dir, KernelConfig(kv_pages=256, keep_alive_s=1.0)) as (k, m):
        busy = k.spawn(ROOT, SpawnSpec(m.name, tokens=[5, 6, 7], stop=StopRules(max_tokens=400, ignore_eos=True)))
        p = k.spawn(ROOT, SpawnSpec(m.name, tokens=[8, 9, 10], stop=StopRules(max_tokens=50, ignore_eos=True)))
        assert (busy.device, p.device) == ("", "cpu:1")
        k.signal(ROOT, busy.pid, "KILL")
        deadline = time.monotonic() + 30
        while not p.state.done and time.monotonic() < deadline:
            k.step()
            time.sleep(0.002)
        assert p.state.done and k.where(m.name) == ["cpu:0", "cpu:1"]  # used a moment ago
        time.sleep(1.2)
        k.step()
        assert k.where(m.name) == ["cpu:0"] and "idle for 1 s (keep-alive)" in k.ring[-1][2]
        assert k.spawn(ROOT, SpawnSpec(m.name, tokens=[5], stop=StopRules(max_tokens=2))).device == ""


def test_tokens_per_minute_hold_a_process_on_another_device(tmp_path, tiny_model_dir):
    """A real worker device under a kernel whose user has a tokens-per-minute quota."""
    from llmos.kernel import ROOT, KernelConfig, SpawnSpec, StopRules
    from llmos.kernel.users.cred import Cred
    from llmos.kernel.users.quota import Quotas, UserLimits

    cfg = KernelConfig(kv_pages=256, quotas=Quotas(users={"bob": UserLimits(tokens_per_min=40)}))
    with kernel_and_worker(tmp_path, tiny_model_dir, cfg) as (k, m):
        k.drain(ROOT, "cpu:0")  # everything new goes to cpu:1
        p = k.spawn(Cred("bob"), SpawnSpec(m.name, tokens=list(range(5, 15)),
                                           stop=StopRules(max_tokens=200, ignore_eos=True)))
        assert p.device == "cpu:1"
        deadline = time.monotonic() + 60
        while p.pid not in k.held and time.monotonic() < deadline:
            k.step()
            time.sleep(0.002)
        time.sleep(0.5)
        k.step()
        n = len(p.out_tokens)
        time.sleep(1.0)
        k.step()
        used = k.quota.tokens_used("bob", time.monotonic())
        assert p.pid in k.held and len(p.out_tokens) == n and p.state.value == "ready"
        assert 40 <= used < 40 + 40, used  # enforced a step and a message late, not token by token


# --- a daemon with two CPU devices --------------------------------------------------------------------
@pytest.fixture(scope="module")
def two(tmp_path_factory, tiny_model_dir):
    d = start_daemon(tmp_path_factory.mktemp("two-devices"), str(tiny_model_dir), "--device", "cpu:0,cpu:1",
                     "--threads", "2")
    yield d
    d.stop_cleanly()
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(d.state_dir) in " ".join(p.info["cmdline"] or [])]


@pytest.fixture(scope="module")
def ref(tiny_model_dir):
    from conftest import Reference
    from transformers import AutoModelForCausalLM
    return Reference(AutoModelForCausalLM.from_pretrained(tiny_model_dir))


@pytest.fixture
def c(two):
    with two.client(timeout=60) as client:
        yield client


def expected(ref, tokenizer, prompt, n, skip=0):
    return tokenizer.decode(ref.greedy(tokenizer(prompt)["input_ids"], n)[skip:], skip_special_tokens=True)


def wait_tokens(c, pid, n, timeout=60):
    deadline = time.monotonic() + timeout
    while c.stat(pid).usage.generated_tokens < n and time.monotonic() < deadline:
        time.sleep(0.01)


def test_the_model_and_the_views_cover_both_devices(c):
    (m,) = [m for m in c.models().loaded if m.name == MODEL]
    assert list(m.devices) == ["cpu:0", "cpu:1"]
    devs = c.devices()
    assert [(d.kind, d.index, d.threads) for d in devs] == [("cpu", 0, 1), ("cpu", 1, 1)]


def test_placement_spreads_processes_and_outputs_match_transformers(c, ref, tokenizer):
    prompts = [f"Process {i} starts here" for i in range(4)]
    pids = []
    for p in prompts:  # each stopped at once: one that ended before the next spawn would free its device
        pids.append(c.spawn(MODEL, p, max_tokens=20, ignore_eos=True))
        c.kill(pids[-1], "STOP")
    placed = [c.stat(pid).device for pid in pids]
    assert sorted(placed) == ["cpu:0", "cpu:0", "cpu:1", "cpu:1"]
    assert all(c.stat(pid).usage.generated_tokens < 20 for pid in pids)  # all four were live when placed
    for pid in pids:
        c.kill(pid, "CONT")
    remote = pids[placed.index("cpu:1")]
    streamed = "".join(ch.text for ch in c.read(remote))
    for pid, prompt in zip(pids, prompts):
        r = c.wait(pid)
        assert (r.state, r.reason, r.usage.generated_tokens) == ("exited", "length", 20)
        assert r.output == expected(ref, tokenizer, prompt, 20)
    assert streamed == c.wait(remote).output
    assert c.ps(live_only=True) == []


def test_placement_follows_the_prefix_cache(c, ref, tokenizer):
    system = [" ".join(f"Rule {i}.{j}: answer briefly." for j in range(12)) for i in range(2)]

    def ask(i, q):
        return [{"role": "system", "content": system[i]}, {"role": "user", "content": q}]
    a = c.spawn(MODEL, messages=ask(0, "First"), max_tokens=300, ignore_eos=True)
    b = c.spawn(MODEL, messages=ask(1, "Second"), max_tokens=300, ignore_eos=True)
    assert (c.stat(a).device, c.stat(b).device) == ("cpu:0", "cpu:1")
    # Each device is as busy as the other: the one holding a prompt's system prefix gets it.
    for i, dev in ((1, "cpu:1"), (0, "cpu:0"), (1, "cpu:1")):
        pid = c.spawn(MODEL, messages=ask(i, "Again"), max_tokens=2, ignore_eos=True)
        assert c.stat(pid).device == dev
        r = c.wait(pid)
        assert r.usage.cached_tokens > 0
        text = tokenizer.apply_chat_template(ask(i, "Again"), tokenize=False, add_generation_prompt=True)
        assert r.output == tokenizer.decode(ref.greedy(tokenizer(text, add_special_tokens=False)["input_ids"], 2),
                                            skip_special_tokens=True)
    for pid in (a, b):
        c.kill(pid, "KILL")


def test_fork_stays_on_its_parents_device_and_shares_its_pages(c, ref, tokenizer):
    busy = c.spawn(MODEL, "Keep cpu:0 busy", max_tokens=400, ignore_eos=True)
    prompt = "An operating system for language models"
    parent = c.spawn(MODEL, prompt, max_tokens=6, interactive=True, ignore_eos=True)
    assert (c.stat(busy).device, c.stat(parent).device) == ("cpu:0", "cpu:1")
    c.wait(parent, until="turn")
    child = c.fork(parent, max_tokens=6)
    r = c.wait(child, until="turn")
    assert c.stat(child).device == "cpu:1" and r.proc.ppid == parent and r.usage.cached_tokens > 0
    assert r.output == expected(ref, tokenizer, prompt, 12, skip=6)
    for pid in (busy, parent, child):
        c.kill(pid, "KILL")


def test_stdin_signals_and_pipes_cross_devices(c, ref, tokenizer):
    busy = [c.spawn(MODEL, f"Keep a device busy {i}", max_tokens=480, ignore_eos=True) for i in range(3)]
    assert [c.stat(pid).device for pid in busy] == ["cpu:0", "cpu:1", "cpu:0"]
    b = c.spawn(MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=6, interactive=True,
                ignore_eos=True)
    assert c.stat(b).device == "cpu:1"
    first = c.wait(b, until="turn")
    assert first.state == "blocked" and first.usage.generated_tokens == 6
    assert c.write(b, "Tell me more") == len(first.output)
    second = c.wait(b, until="turn")
    assert second.output.startswith(first.output) and second.usage.generated_tokens == 12

    c.kill(busy[1], "KILL")
    c.kill(busy[0], "STOP")  # a signal on the daemon's own device; the rest go to cpu:1
    long = c.spawn(MODEL, "Hello", max_tokens=480, ignore_eos=True)
    assert c.stat(long).device == "cpu:1"
    wait_tokens(c, long, 2)
    c.kill(long, "STOP")
    time.sleep(0.2)
    n = c.stat(long).usage.generated_tokens
    time.sleep(0.3)
    assert c.stat(long).state == "stopped" and c.stat(long).usage.generated_tokens == n
    c.kill(long, "CONT")
    wait_tokens(c, long, n + 1)
    assert c.stat(long).usage.generated_tokens > n
    assert c.renice(long, 5).priority == 5 and c.stat(long).priority == 5
    c.kill(long, "TERM")
    assert c.wait(long).reason == "terminated"

    c.kill(busy[2], "KILL")
    a = c.spawn(MODEL, "Hello world", max_tokens=8, ignore_eos=True)
    assert c.stat(a).device == "cpu:0"  # its output crosses to b on cpu:1
    offset = c.pipe(a, b)
    r = c.wait(b, until="turn")
    assert offset == len(second.output) and len(r.output) > offset and r.usage.generated_tokens == 18
    assert c.kill(b, "TERM").state == "killed"
    c.kill(busy[0], "KILL")
    assert c.ps(live_only=True) == []


def test_migration_mid_generation_loses_and_doubles_nothing(c, ref, tokenizer):
    prompt = "A process that moves between devices"
    pid = c.spawn(MODEL, prompt, max_tokens=150, ignore_eos=True)
    assert c.stat(pid).device == "cpu:0"
    wait_tokens(c, pid, 10)
    reader = c.read(pid)
    first = next(reader)
    hops = []
    for to, by, after in (("cpu:1", "tokens", 40), ("cpu:0", "pages", 70), ("cpu:1", "", 100)):
        r = c.migrate(pid, to, by)
        hops.append((r.source, r.how))
        assert c.stat(pid).device == to
        wait_tokens(c, pid, after)
    rest = "".join(ch.text for ch in reader)
    r = c.wait(pid)
    assert hops == [("cpu:0", "tokens"), ("cpu:1", "pages"), ("cpu:0", "pages")]  # auto: pages past 64 tokens
    assert (r.state, r.reason, r.usage.generated_tokens) == ("exited", "length", 150)
    assert r.output == first.text + rest == expected(ref, tokenizer, prompt, 150)
    with pytest.raises(SyscallError) as e:
        c.migrate(pid, "cpu:1")
    assert e.value.code == "failed_precondition" and "already exited" in str(e.value)
    live = c.spawn(MODEL, "Stay", max_tokens=300, ignore_eos=True)
    for to, code, words in (("cpu:9", "invalid_argument", "devices are cpu:0, cpu:1"),
                            (c.stat(live).device, "failed_precondition", "already runs on")):
        with pytest.raises(SyscallError) as e:
            c.migrate(live, to)
        assert e.value.code == code and words in str(e.value)
    for by, code, words in (("teleport", "invalid_argument", "moves by auto, pages, tokens"),):
        with pytest.raises(SyscallError) as e:
            c.migrate(live, "cpu:1", by)
        assert e.value.code == code and words in str(e.value)
    c.kill(live, "KILL")


def test_drain_moves_every_process_off_a_device(c, ref, tokenizer):
    prompts = [f"Drained process {i}" for i in range(4)]
    pids = [c.spawn(MODEL, p, max_tokens=120, ignore_eos=True) for p in prompts]
    assert sorted(c.stat(pid).device for pid in pids) == ["cpu:0", "cpu:0", "cpu:1", "cpu:1"]
    on1 = [pid for pid in pids if c.stat(pid).device == "cpu:1"]
    moved = c.drain("cpu:1")
    assert sorted((m.pid, m.device) for m in moved) == [(pid, "cpu:0") for pid in on1]
    assert {c.stat(pid).device for pid in pids} == {"cpu:0"}
    extra = c.spawn(MODEL, "Not on a drained device", max_tokens=4, ignore_eos=True)
    assert c.stat(extra).device == "cpu:0"
    assert c.drain("cpu:1", undo=True) == []
    back = c.spawn(MODEL, "Open again", max_tokens=4, ignore_eos=True)
    assert c.stat(back).device == "cpu:1"
    for pid, prompt in zip(pids, prompts):
        assert c.wait(pid).output == expected(ref, tokenizer, prompt, 120)
    for pid in (extra, back):
        c.wait(pid)


def test_the_shell_shows_and_moves_processes_across_devices(two, c):
    import subprocess
    import sys

    def llmos(*args):
        return subprocess.run([sys.executable, "-m", "llmos.shell.cli", *args], capture_output=True, text=True,
                              timeout=60, env=two.env)
    pids = [c.spawn(MODEL, f"Shell {i}", max_tokens=400, ignore_eos=True) for i in range(2)]
    for pid in pids:  # stopped, they stay live (and movable) while the shell runs
        c.kill(pid, "STOP")
    ps = llmos("ps", "--live")
    head = ps.stdout.splitlines()[0].split()
    assert ps.returncode == 0 and head[:4] == ["PID", "PPID", "MODEL", "DEVICE"]
    rows = {int(ln.split()[0]): ln.split()[3] for ln in ps.stdout.splitlines()[1:]}
    assert rows == {pids[0]: "cpu:0", pids[1]: "cpu:1"}
    r = llmos("migrate", str(pids[1]), "--to", "cpu:0", "--by", "tokens")
    assert r.returncode == 0 and r.stdout.startswith(f"pid {pids[1]}: cpu:1 -> cpu:0 (") and "recompute" in r.stdout
    lsdev = llmos("lsdev")
    assert lsdev.returncode == 0 and [ln.split()[0] for ln in lsdev.stdout.splitlines()[1:3]] == ["cpu:0", "cpu:1"]
    free = llmos("free")
    assert [ln.split()[:2] for ln in free.stdout.splitlines()[1:]] == [[MODEL, "cpu:0"], [MODEL, "cpu:1"]]
    drained = llmos("drain", "cpu:0")
    assert drained.returncode == 0 and drained.stdout.startswith("cpu:0: drained, 2 process(es) moved")
    assert {(c.stat(pid).device, c.stat(pid).state) for pid in pids} == {("cpu:1", "stopped")}
    assert llmos("drain", "cpu:0", "--undo").stdout == "cpu:0: open to new processes again\n"
    bad = llmos("migrate", str(pids[0]), "--to", "gpu:9")
    assert bad.returncode != 0 and "no device 'gpu:9'; devices are cpu:0, cpu:1" in bad.stderr
    for pid in pids:
        c.kill(pid, "KILL")


def test_a_lost_device_hands_its_processes_back_with_no_gap(two, c, ref, tokenizer):
    busy = c.spawn(MODEL, "Keep cpu:0 busy", max_tokens=300, ignore_eos=True)
    prompt = "A process on a device that dies"
    pid = c.spawn(MODEL, prompt, max_tokens=200, ignore_eos=True)
    assert c.stat(pid).device == "cpu:1"
    wait_tokens(c, pid, 10)
    reader = c.read(pid)
    first = next(reader)
    workers = [p for p in psutil.Process(two.proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]
    assert len(workers) == 1
    workers[0].kill()
    rest = "".join(ch.text for ch in reader)
    r = c.wait(pid)
    assert (r.state, r.reason, r.usage.generated_tokens) == ("exited", "length", 200)
    assert r.output == expected(ref, tokenizer, prompt, 200) == first.text + rest
    assert c.stat(pid).device == "cpu:0"
    assert [d.telemetry_error for d in c.devices()][1].startswith("its process ended")
    later = c.spawn(MODEL, "After the loss", max_tokens=4, ignore_eos=True)
    assert c.stat(later).device == "cpu:0" and c.wait(later).usage.generated_tokens == 4
    c.kill(busy, "KILL")
