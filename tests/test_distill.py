"""Distillation (train --distill TEACHER): the loss, LoRA and full-weight students, refusals,
TERM and --resume; on tiny random models, the student a pruned copy of its teacher."""
import copy
import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llmos.drivers.distill import DistillConfig, distill_loss, kl_to_teacher
from llmos.drivers.prune import prune_model
from llmos.kernel import ROOT, Cred, PermissionDenied, SpawnSpec, StopRules
from llmos.kernel.errors import InvalidArgument, NotFound
from llmos.kernel.models import ModelStore
from llmos.kernel.proc import State
from llmos.kernel.workloads import train

from conftest import Reference
from tiny import tiny_model


def random_lines(tokenizer, seed: int, n: int, length: int = 48) -> list[str]:
    """Text decoded from random token ids: inputs all over the vocabulary, so that matching the
    teacher on them carries over to text never trained on."""
    r = random.Random(seed)
    return [tokenizer.decode([r.randrange(3, 376) for _ in range(length)]) for _ in range(n)]


@pytest.fixture
def setup(tokenizer, tmp_path):
    """A kernel serving a teacher and its pruned copy (the student), a data set and held-out text."""
    from llmos.drivers.cpu import CPUDriver
    from llmos.kernel import Kernel, KernelConfig

    teacher = tiny_model("llama", seed=0)
    student = copy.deepcopy(teacher)
    prune_model(student, 0.5, tokenizer(" ".join(random_lines(tokenizer, 9, 4)))["input_ids"], heads=0.5)
    k = Kernel(CPUDriver(), KernelConfig(page_size=4, kv_pages=64))
    k.store = ModelStore(tmp_path / "store")
    pristine = {"teacher": copy.deepcopy(teacher), "student": copy.deepcopy(student)}
    k.adopt_model("teacher", teacher, tokenizer)
    k.adopt_model("student", student, tokenizer)
    path = tmp_path / "random.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in random_lines(tokenizer, 1, 256)))
    held = [tokenizer(t)["input_ids"] for t in random_lines(tokenizer, 2, 4)]
    return k, pristine, path, held


def spec(path, **over):
    opts = {"steps": 200, "lr": 1e-2, "rank": 8, "batch": 4, "micro_batch": 4, "checkpoint_every": 0,
            "distill": "teacher", **over}
    return train.TrainSpec(Path(path).name, **opts), Path(path).read_bytes()


def mean_kl(model, teacher, held) -> float:
    return sum(kl_to_teacher(model, teacher, ids) for ids in held) / len(held)


def test_the_loss_is_t_squared_kl_plus_alpha_ce():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    labels = torch.randint(0, 9, (2, 5))
    labels[0, :2] = -100  # a prompt: no loss at positions 0 and 1 of row 0
    loss, kl = distill_loss(s, t, labels, DistillConfig(temperature=2.0, alpha=0.25, vocab=9))
    want_kl, want_ce = 0.0, 0.0
    for b in range(2):
        for i in range(4):  # logits at i predict token i + 1
            if labels[b, i + 1] == -100:
                continue
            p, q = F.softmax(t[b, i, :9] / 2, -1), F.softmax(s[b, i, :9] / 2, -1)
            want_kl += float((p * (p.log() - q.log())).sum())
            want_ce -= float(F.log_softmax(s[b, i], -1)[labels[b, i + 1]])
    assert kl == pytest.approx(want_kl, rel=1e-5)
    assert float(loss) == pytest.approx(0.75 * 4 * want_kl + 0.25 * want_ce, rel=1e-5)


def test_a_lora_student_halves_its_kl_to_the_teacher_on_held_out_text(setup, tokenizer):
    from peft import PeftModel

    k, pristine, path, held = setup
    before = mean_kl(pristine["student"], pristine["teacher"], held)
    p = train.start(k, ROOT, "student", *spec(path))
    k.run_until_idle()
    assert p.state == State.EXITED and "registered model student+random (version " in p.reason, p.stdout
    assert p.reason.endswith("; loaded")
    assert "distilling student+random from teacher (T=2, alpha=0): LoRA rank 8 of student" in p.stdout
    v = k.store.lookup("student+random")
    stored = k.store.plan(v).adapter
    assert v.kind == "distilled" and v.lineage["hyperparameters"]["distill"] == "teacher"
    assert (stored / "adapter_model.safetensors").is_file() and not (stored / "model.safetensors").exists()
    assert k.models["student+random"].base == "student"
    after = mean_kl(PeftModel.from_pretrained(copy.deepcopy(pristine["student"]), str(stored)).eval(),
                    pristine["teacher"], held)
    assert after < before / 2, (before, after)
    ref = Reference(pristine["student"])  # the served student itself is untouched
    q = k.spawn(ROOT, SpawnSpec("student", tokens=[5, 6, 7], stop=StopRules(max_tokens=8, ignore_eos=True)))
    k.run_until_idle()
    assert q.out_tokens == ref.greedy([5, 6, 7], 8)


def test_a_full_student_trains_every_weight(setup, tokenizer):
    from transformers import AutoModelForCausalLM

    k, pristine, path, held = setup
    before = mean_kl(pristine["student"], pristine["teacher"], held)
    p = train.start(k, ROOT, "student", *spec(path, full=True, lr=2e-3, name="student-kd"))
    k.run_until_idle()
    assert p.state == State.EXITED and "registered model student-kd (version " in p.reason, p.stdout
    assert p.reason.endswith("; loaded")
    assert "all weights of student" in p.stdout
    stored = k.store.plan(k.store.lookup("student-kd")).weights
    assert (stored / "model.safetensors").is_file() and (stored / "tokenizer.json").is_file()
    assert not (stored / "adapter_model.safetensors").exists() and k.store.holds_model("student-kd")
    trained = AutoModelForCausalLM.from_pretrained(stored, dtype=torch.float32).eval()
    old = dict(pristine["student"].named_parameters())
    assert all(not torch.equal(w, old[n]) for n, w in trained.named_parameters())
    assert mean_kl(trained, pristine["teacher"], held) < before / 2
    for name, model in (("student", pristine["student"]), ("student-kd", trained)):  # both served, exactly
        q = k.spawn(ROOT, SpawnSpec(name, tokens=[5, 6, 7], stop=StopRules(max_tokens=8, ignore_eos=True)))
        k.run_until_idle()
        assert q.out_tokens == Reference(model).greedy([5, 6, 7], 8), name


def test_alpha_one_is_the_plain_fine_tune(setup):
    """With all the weight on the data's cross-entropy, distilling follows the plain fine-tune's
    loss trajectory: the mixing is wired as documented."""
    k, _, path, _ = setup
    runs = {}
    for name, over in (("plain", {"distill": ""}), ("alpha1", {"alpha": 1.0})):
        p = train.start(k, ROOT, "student", *spec(path, steps=6, name=name, **over))
        k.run_until_idle()
        runs[name] = p.task.losses
    assert runs["alpha1"] == pytest.approx(runs["plain"], rel=1e-5)
    assert runs["plain"][-1] < runs["plain"][0]


def test_bad_teachers_and_settings_are_refused(setup, tokenizer):
    k, pristine, path, _ = setup
    other = copy.deepcopy(tokenizer)
    other.add_tokens(["<|extra|>"])
    k.adopt_model("stranger", tiny_model("llama", seed=3), other)
    with pytest.raises(InvalidArgument, match="teacher 'stranger' and student 'student' do not share a tokenizer "
                                              r"\(vocabularies of 377 and 376 tokens; 1 of them differ"):
        train.start(k, ROOT, "student", *spec(path, distill="stranger"))
    with pytest.raises(NotFound, match="model 'nobody' is not loaded"):
        train.start(k, ROOT, "student", *spec(path, distill="nobody"))
    with pytest.raises(InvalidArgument, match="cannot distill from itself"):
        train.start(k, ROOT, "student", *spec(path, distill="student"))
    with pytest.raises(InvalidArgument, match=r"temperature must be in \(0, 100\], got 0"):
        train.start(k, ROOT, "student", *spec(path, temperature=0.0))
    with pytest.raises(InvalidArgument, match=r"alpha .* must be in \[0, 1\], got 1.5"):
        train.start(k, ROOT, "student", *spec(path, alpha=1.5))
    with pytest.raises(PermissionDenied, match="only an admin may load models"):
        train.start(k, Cred("alice"), "student", *spec(path, full=True))
    assert not k.procs


@pytest.mark.parametrize("full", [False, True])
def test_term_during_distillation_checkpoints_and_resume_goes_on(setup, full):
    k, _, path, _ = setup
    over = {"steps": 8, "full": full, "lr": 2e-3 if full else 1e-2}
    straight = train.start(k, ROOT, "student", *spec(path, name="straight", **over))
    k.run_until_idle()
    p = train.start(k, ROOT, "student", *spec(path, name="cut", **over))
    while p.task.step < 3:
        k.step()
    step = p.task.step
    k.signal(ROOT, p.pid, "TERM")
    k.step()
    assert p.state == State.KILLED and p.reason == f"terminated: checkpoint at step {step}/8: continue with --resume"
    saved = k.store.path_of("cut", "checkpoints", f"step-{step}")
    assert (saved / ("model.safetensors" if full else "adapter_model.safetensors")).is_file()
    assert (saved / "optimizer.pt").is_file()
    r = train.start(k, ROOT, "student", train.TrainSpec(path.name, name="cut"), resume=True)
    assert r.task.spec.distill == "teacher" and r.task.spec.full == full and r.task.step == step
    k.run_until_idle()
    assert r.state == State.EXITED, r.stdout
    assert r.task.losses == pytest.approx(straight.task.losses, rel=1e-5)


def test_train_distill_through_the_daemon_the_sdk_and_the_shell(llmosd, tiny_model_dir, tokenizer, tmp_path):
    """A pruned copy loaded with --prune learns from the served model through the Train syscall
    (a LoRA adapter, then all weights from the shell), and bad teachers and settings come back
    as INVALID_ARGUMENT with the kernel's message."""
    import subprocess
    import sys

    from llmos.syscalls.sdk import SyscallError

    def shell(*args):
        return subprocess.run([sys.executable, "-m", "llmos.shell.cli", *args], env=llmosd.env,
                              capture_output=True, text=True, timeout=180)

    data = tmp_path / "random.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in random_lines(tokenizer, 1, 32)))
    stranger = tmp_path / "stranger"
    other = copy.deepcopy(tokenizer)
    other.add_tokens(["<|extra|>"])
    tiny_model("llama", seed=3).save_pretrained(stranger)
    other.save_pretrained(stranger)
    with llmosd.client(timeout=180) as c:
        pruned = c.load(str(tiny_model_dir), prune=0.5)
        student = pruned.name
        assert student == "tiny-llama-pruned0.5"
        c.load(str(stranger))
        pid, name = c.train(student, data, distill="tiny-llama", steps=4, batch=2, micro_batch=2, rank=4, lr=1e-2)
        res = c.wait(pid, reap=True)
        assert res.state == "exited" and f"registered model {name}" in res.reason, res.output
        assert f"distilling {name} from tiny-llama (T=2, alpha=0): LoRA rank 4 of {student}" in res.output
        adapter = {m.name: m for m in c.models().loaded}[name]
        assert adapter.base == student and adapter.lora_rank == 4
        assert c.wait(c.spawn(name, tokens=[5, 6, 7], max_tokens=3, ignore_eos=True), reap=True).usage.generated_tokens == 3
        for kw, msg in [({"distill": student}, f"model {student!r} cannot distill from itself"),
                        ({"distill": "stranger"}, f"teacher 'stranger' and student {student!r} do not share a tokenizer"),
                        ({"distill": "tiny-llama", "temperature": -1.0}, "temperature must be in (0, 100], got -1"),
                        ({"distill": "tiny-llama", "alpha": float("nan")}, "must be in [0, 1], got nan")]:
            with pytest.raises(SyscallError) as e:
                c.train(student, data, steps=2, **kw)
            assert e.value.code == "invalid_argument" and msg in e.value.message, e.value.message
        r = shell("train", student, str(data), "--distill", "tiny-llama", "--temperature", "1.5", "--alpha", "0.25",
                  "--full", "--steps", "2", "--batch", "2", "--name", "kd-full")
        assert r.returncode == 0, r.stderr
        assert "distilling kd-full from tiny-llama (T=1.5, alpha=0.25): all weights of " + student in r.stdout
        full = {m.name: m for m in c.models().loaded}["kd-full"]
        assert not full.base and full.num_parameters == pruned.num_parameters  # a model of its own, as small
        bad = shell("train", student, str(data), "--distill", "tiny-llama", "--alpha", "2")
        assert bad.returncode != 0 and "alpha (the weight of the data's cross-entropy) must be in [0, 1], got 2" \
            in bad.stderr and "Traceback" not in bad.stderr
        for n in (name, "kd-full", student, "stranger"):
            c.unload(n)
