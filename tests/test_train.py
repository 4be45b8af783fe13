"""Training processes: the task hook, LoRA fine-tuning, checkpoints and resume, sharing the device."""
import json
from pathlib import Path

import pytest

from llmos.kernel import ROOT, SpawnSpec, tasks
from llmos.kernel.workloads import train
from llmos.kernel.workloads.dataset import DatasetError
from llmos.kernel.errors import FailedPrecondition, InvalidArgument
from llmos.kernel.models import ModelStore
from llmos.kernel.proc import Process, State

PAIRS = [("Hello world", "The quick brown fox."), ("Once upon", "a time there was a kernel.")]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "mydata.jsonl"
    path.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                       {"role": "assistant", "content": a}]}) for q, a in PAIRS))
    return str(path)


@pytest.fixture
def kernel(make_kernel, tmp_path):
    k, ref = make_kernel(pages=128)
    k.store = ModelStore(tmp_path / "store")
    return k, ref


def spec(data, **over):
    """A TrainSpec for the file at `data` and its bytes: train.start's (spec, data), as the Train syscall hands them over."""
    opts = {"steps": 12, "lr": 1e-2, "rank": 4, "batch": 2, "micro_batch": 2, "checkpoint_every": 2, **over}
    return train.TrainSpec(Path(data).name, **opts), Path(data).read_bytes()


# --- the task hook, no model ------------------------------------------------------------------------
class Unit:
    kind = "test"

    def __init__(self):
        self.units = 0


def test_tasks_get_a_share_of_device_time_by_nice():
    assert [round(tasks.share(n), 3) for n in (-10, 0, 5, 10, 19)] == [0.9, 0.5, 0.25, 0.125, 0.036]
    a = Process(pid=1, spec=SpawnSpec("m"), tokens=[], priority=0, task=Unit(), state=State.READY)
    b = Process(pid=2, spec=SpawnSpec("m"), tokens=[], priority=10, task=Unit(), state=State.READY)
    stopped = Process(pid=3, spec=SpawnSpec("m"), tokens=[], priority=-5, task=Unit(), state=State.STOPPED)
    plain = Process(pid=4, spec=SpawnSpec("m"), tokens=[1], state=State.READY)
    assert tasks.pick([a, b, stopped, plain], token_work=True, used=0.4) is a
    assert tasks.pick([a, b], token_work=True, used=0.6) is None  # over nice 0's half: the streams go first
    assert tasks.pick([b], token_work=True, used=0.2) is None     # nice 10 may use 12.5%
    assert tasks.pick([b], token_work=True, used=0.1) is b
    assert tasks.pick([b], token_work=False, used=0.99) is b       # an idle device runs it every step
    share = tasks.DeviceShare()
    share.add(task=False, seconds=0.03)
    share.add(task=True, seconds=0.5)   # one big unit
    assert share.task_fraction() > 0.9
    for _ in range(1000):               # then 30 s of decode steps: the unit's weight fades
        share.add(task=False, seconds=0.03)
    assert share.task_fraction() < 0.1


def test_decode_time_before_any_task_is_no_credit_for_the_first(kernel):
    k, _ = kernel
    k.device_share.add(task=False, seconds=60.0)  # a minute of streams, no task anywhere
    first = k.spawn_task(ROOT, "tiny", Unit())
    assert k.device_share.token_s == 0.0
    k.device_share.add(task=True, seconds=1.0)
    k.spawn_task(ROOT, "tiny", Unit())  # a second task joins the running account
    assert k.device_share.task_s > 0.0
    k.signal(ROOT, first.pid, "KILL")


@pytest.mark.parametrize("nice,unit_s", [(0, 0.5), (0, 2.0), (10, 0.5), (10, 2.0)])
def test_streams_keep_the_time_their_share_leaves_them(nice, unit_s):
    """A task whose units are far longer than a decode step still takes only its share of the
    device's time, measured over a long run (no model: the step loop's bookkeeping alone)."""
    share, task = tasks.DeviceShare(), Process(pid=1, spec=SpawnSpec("m"), tokens=[], priority=nice, task=Unit(),
                                               state=State.READY)
    spent = {True: 0.0, False: 0.0}
    while sum(spent.values()) < 1200:
        share.add(task=False, seconds=0.03)  # a decode step
        spent[False] += 0.03
        if tasks.pick([task], token_work=True, used=share.task_fraction()) is task:
            share.add(task=True, seconds=unit_s)
            spent[True] += unit_s
    assert spent[True] / sum(spent.values()) == pytest.approx(tasks.share(nice), abs=0.015)


# --- fine-tuning ------------------------------------------------------------------------------------
def test_loss_falls_and_greedy_output_moves_towards_the_target(kernel, data):
    k, _ = kernel
    p = train.start(k, ROOT, "tiny", *spec(data, steps=25))
    k.run_until_idle()
    assert p.state == State.EXITED and "registered model tiny+mydata" in p.reason, p.stdout
    losses = p.task.losses
    assert losses[-1] < losses[0] / 4
    assert "step 25/25 loss" in p.stdout and "steps/s" in p.stdout and "tok/s" in p.stdout
    assert "tiny+mydata" in k.models and "tiny+mydata" in k.store.list()
    msgs = [{"role": "user", "content": PAIRS[0][0]}]
    target = k.models["tiny"].codec.encode_more(PAIRS[0][1])
    outs = {}
    for model in ("tiny", "tiny+mydata"):
        q = k.spawn(ROOT, SpawnSpec(model, messages=msgs, stop=train_stop(len(target))))
        k.run_until_idle()
        outs[model] = q.out_tokens
    close = {m: sum(a == b for a, b in zip(o, target)) for m, o in outs.items()}
    assert close["tiny+mydata"] > close["tiny"] and close["tiny+mydata"] >= len(target) // 2, outs
    k.unload_model(ROOT, "tiny+mydata")
    assert "tiny+mydata" not in k.models


def train_stop(n):
    from llmos.kernel.proc import StopRules
    return StopRules(max_tokens=n, ignore_eos=True)


def test_inference_keeps_streaming_and_base_output_is_unchanged(kernel, data):
    k, ref = kernel
    prompt = [5, 6, 7, 8, 9]
    want = ref.greedy(prompt, 120)  # long enough for the fine-tune's share of the device to finish steps
    t = train.start(k, ROOT, "tiny", *spec(data, steps=200, micro_batch=1))
    q = k.spawn(ROOT, SpawnSpec("tiny", tokens=prompt, stop=train_stop(120)))
    while not q.state.done:
        before = len(q.out_tokens)
        k.step()
        assert len(q.out_tokens) == before + 1 or q.state.done  # a token every step while training runs
    assert q.out_tokens == want  # the served base model is untouched by the LoRA twin
    assert t.state == State.READY and t.task.step > 0
    while t.task.step < 2:  # to its first checkpoint (every 2 steps), however fast the decoding was
        k.step()
    k.signal(ROOT, t.pid, "KILL")
    assert t.state == State.KILLED and "continue with --resume" in t.stdout
    q2 = k.spawn(ROOT, SpawnSpec("tiny", tokens=prompt, stop=train_stop(120)))
    k.run_until_idle()
    assert q2.out_tokens == want


def test_stop_and_cont_pause_training(kernel, data):
    k, _ = kernel
    p = train.start(k, ROOT, "tiny", *spec(data))
    for _ in range(5):
        k.step()
    k.signal(ROOT, p.pid, "STOP")
    at = p.task.step
    assert not k.has_work()
    for _ in range(5):
        k.step()
    assert p.task.step == at and p.state == State.STOPPED
    k.signal(ROOT, p.pid, "CONT")
    k.run_until_idle()
    assert p.state == State.EXITED and p.task.step == 12


def test_resume_after_kill_continues_the_same_loss_trajectory(make_kernel, data, tmp_path):
    runs = {}
    for label in ("straight", "killed"):
        k, _ = make_kernel(pages=128)
        k.store = ModelStore(tmp_path / label)
        p = train.start(k, ROOT, "tiny", *spec(data, steps=8, checkpoint_every=3))
        if label == "killed":
            while p.task.step < 4:
                k.step()
            k.signal(ROOT, p.pid, "KILL")
            assert "the last checkpoint is step 3" in p.stdout
            p = train.start(k, ROOT, "tiny", train.TrainSpec(Path(data).name), resume=True)  # the kept copy of the data
            assert p.task.step == 3 and p.task.spec.steps == 8
        k.run_until_idle()
        assert p.state == State.EXITED, p.stdout
        runs[label] = p.task.losses
    assert len(runs["killed"]) == 8
    assert runs["killed"] == pytest.approx(runs["straight"], abs=1e-6)


def test_bad_requests_are_refused_before_anything_runs(kernel, data, tmp_path):
    k, _ = kernel
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    with pytest.raises(DatasetError, match="line 2: no 'messages' or 'text' field"):
        train.start(k, ROOT, "tiny", *spec(str(bad)))
    with pytest.raises(InvalidArgument, match="rank must be in"):
        train.start(k, ROOT, "tiny", *spec(data, rank=0))
    with pytest.raises(FailedPrecondition, match="no checkpoint of tiny\\+mydata"):
        train.start(k, ROOT, "tiny", *spec(data), resume=True)
    assert not k.procs


# --- end to end: the daemon, the shell, a crash and --resume -----------------------------------------
def test_llmos_train_through_the_daemon_survives_a_crash(tiny_model_dir, data, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from daemon import start_daemon

    def llmos(d, *args):
        return subprocess.run([sys.executable, "-m", "llmos.shell.cli", *args], capture_output=True, text=True,
                              timeout=120, env=d.env)

    state = tmp_path / "state"
    d = start_daemon(state, str(tiny_model_dir), "--kv-pages", "256", "--page-size", "16")
    try:
        r = llmos(d, "train", "tiny-llama", data, "--steps", "100000", "--lr", "0.01", "--rank", "4", "--batch", "2",
                  "--checkpoint-every", "2", "--detach")
        assert r.returncode == 0, r.stderr
        pid = int(r.stdout)
        run = llmos(d, "run", "tiny-llama", "Hello", "-n", "6", "--ignore-eos")  # inference beside training
        assert run.returncode == 0 and run.stdout
        with d.client() as c:
            def out():
                return "".join(ch.text for ch in c.read(pid, 0, "now"))
            deadline = time.monotonic() + 60
            while "step 3/" not in out() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert c.kill(pid, "STOP").state == "stopped"
            last = int(out().rsplit("step ", 1)[1].split("/")[0])  # checkpoints are at even steps
    finally:
        d.stop(signal.SIGKILL)  # a crash: the journal and the checkpoints are all that survive
    d = start_daemon(state, str(tiny_model_dir), "--kv-pages", "256", "--page-size", "16")
    try:
        with d.client() as c:
            assert "continues with --resume" in c.stat(pid).reason
        r = llmos(d, "train", "tiny-llama", data, "--resume", "--steps", str(last + 4))
        assert r.returncode == 0, r.stderr
        assert "resuming tiny-llama+mydata from step" in r.stdout and f"step {last + 4}/{last + 4} loss" in r.stdout
        assert "registered model tiny-llama+mydata" in r.stdout
        assert "tiny-llama+mydata" in llmos(d, "models").stdout
        assert llmos(d, "run", "tiny-llama+mydata", "Hello world", "-n", "4").returncode == 0
        assert llmos(d, "unload", "tiny-llama+mydata").returncode == 0
        bad = llmos(d, "train", "tiny-llama", str(tmp_path / "missing.jsonl"))
        assert bad.returncode != 0 and "cannot read" in bad.stderr and "No such file" in bad.stderr
        assert "Traceback" not in bad.stderr
    finally:
        assert d.stop() == 0


def test_term_checkpoints_a_fine_tune_and_resume_goes_on_from_there(kernel, data):
    k, _ = kernel
    p = train.start(k, ROOT, "tiny", *spec(data, steps=50, checkpoint_every=0))
    while p.task.step < 3:
        k.step()
    step = p.task.step
    k.signal(ROOT, p.pid, "TERM")
    k.step()
    assert p.state == State.KILLED and p.reason == f"terminated: checkpoint at step {step}/50: continue with --resume"
    r = train.start(k, ROOT, "tiny", train.TrainSpec(Path(data).name), resume=True)
    assert r.task.step == step
    k.signal(ROOT, r.pid, "KILL")  # KILL keeps no checkpoint of its own
    assert r.state == State.KILLED and r.reason == "signal KILL"


def test_names_and_owners_of_adapters(kernel, data):
    """Nobody, an admin included, trains over a base model's name (its files would be replaced);
    a user never trains over or resumes another user's adapter or checkpoints."""
    from llmos.kernel import Cred, PermissionDenied

    k, _ = kernel
    with pytest.raises(InvalidArgument, match="'tiny' names a base model"):
        train.start(k, ROOT, "tiny", *spec(data, name="tiny"))
    alice, bob = Cred("alice"), Cred("bob")
    p = train.start(k, alice, "tiny", *spec(data, name="alices", steps=2))
    k.run_until_idle()
    assert p.state == State.EXITED and k.models["alices"].owner == "alice"
    assert k.store.owner_of("alices") == "alice"
    for attempt in (lambda: train.start(k, bob, "tiny", *spec(data, name="alices")),
                    lambda: train.start(k, bob, "tiny", train.TrainSpec("x", name="alices"), resume=True)):
        with pytest.raises(PermissionDenied, match="belongs to another user"):
            attempt()
    q = train.start(k, alice, "tiny", *spec(data, name="alices", steps=2))  # her own: she may train it again
    k.run_until_idle()
    assert q.state == State.EXITED, q.reason
