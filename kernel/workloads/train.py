"""Training processes: LoRA fine-tunes that the kernel time-slices with decode steps; with
`distill` a teacher model's distributions are the target, with `full` every weight trains
(kernel/workloads/distill.py).

`start(kernel, model, spec)` validates the dataset and spawns a task process (kernel/tasks.py).
Each unit is one micro-batch (forward + backward); the unit that ends an optimizer step also
applies it, prints `step k/n loss ... steps/s ... tok/s` to stdout, and every
`checkpoint_every` steps saves adapter + optimizer + step into the model store at
`<store>/<name>/checkpoints/step-K/`. Data order is a pure function of (seed, step) and there
is no dropout, so a resumed run continues the same loss trajectory. When done the adapter is
saved as LoRA model `<name>` (default `BASE+DATASTEM`) in the store, in peft's format, and
loaded over the base (kernel/models/adapters.py): it is spawned, listed and unloaded like any model,
and its processes share the base model's batches.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llmos.drivers.driver import TrainingDriver
from llmos.kernel.errors import FailedPrecondition, InvalidArgument
from llmos.kernel.models import loading
from llmos.kernel.proc import State
from llmos.kernel.users.cred import ROOT, Cred
from llmos.kernel.workloads import dataset, distill
from llmos.syscalls.abi.names import check_name

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.proc import Process

KEEP_CHECKPOINTS = 3
DATA_FILE = "dataset.bin"  # the run's data, kept beside its checkpoints for --resume


@dataclass
class TrainSpec:
    """What to train: the dataset's name (its client file's) and the hyperparameters."""

    dataset: str
    steps: int = 100
    lr: float = 5e-4
    rank: int = 8
    batch: int = 4
    micro_batch: int = 1        # sequences per unit of work: bounds how long decode streams wait
    checkpoint_every: int = 25  # 0: only at the end
    name: str = ""              # the adapter model's name; default BASE+DATASTEM
    seed: int = 0
    max_len: int = 512
    distill: str = ""           # the teacher model's name: learn its next-token distributions
    temperature: float = 2.0    # distillation's softmax temperature (the KL is scaled by its square)
    alpha: float = 0.0          # distillation: the weight of the data's cross-entropy (1 - alpha: the KL's)
    full: bool = False          # train every weight of a copy (a model of its own), not a LoRA adapter

    def check(self) -> "TrainSpec":
        for what, v, lo, hi in [("steps", self.steps, 1, 1_000_000), ("rank", self.rank, 1, 256),
                                ("batch", self.batch, 1, 1024), ("micro_batch", self.micro_batch, 1, self.batch),
                                ("checkpoint_every", self.checkpoint_every, 0, 1_000_000),
                                ("max_len", self.max_len, 8, 1 << 20)]:
            if not lo <= v <= hi:
                raise InvalidArgument(f"{what} must be in [{lo}, {hi}], got {v}")
        if not 0 < self.lr <= 1:
            raise InvalidArgument(f"lr must be in (0, 1], got {self.lr}")
        if not self.dataset:
            raise InvalidArgument("give a dataset to train on")
        distill.check_spec(self.temperature, self.alpha)
        return self


@dataclass(eq=False)
class TrainTask:
    """The kernel side of one fine-tune: data order, progress, checkpoints (kernel/tasks.py Task)."""

    base: str
    name: str
    spec: TrainSpec
    examples: list[dataset.Example]
    ckpt_root: Path
    digest: str
    start_step: int = 0
    owner: str = ""
    data_bytes: int = 0
    vocab: int = 0  # distilling: how many logits teacher and student share
    kind: str = "train"
    unit_tokens: int = 0
    step: int = 0
    losses: list[float] = field(default_factory=list)
    _micro: int = 0
    _sum: float = 0.0
    _begun: bool = False
    _t: float = 0.0

    def run_unit(self, kernel: "Kernel", p: "Process") -> bool:
        if not self._begun:
            return self._begin(kernel, p)
        s = self.spec
        idx = dataset.Order(len(self.examples), s.seed).batch(self.step, s.batch)
        exs = [self.examples[i] for i in idx]
        part = exs[self._micro * s.micro_batch:(self._micro + 1) * s.micro_batch]
        self.unit_tokens = sum(len(e.tokens) for e in part) * (2 if s.distill else 1)  # the teacher's too
        self._sum += kernel.driver.train_micro(self.name, [list(e.tokens) for e in part],
                                               [e.loss_from for e in part], _targets(exs))
        self._micro += 1
        if self._micro * s.micro_batch < s.batch:
            return False
        return self._finish_step(kernel, p, exs)

    def _begin(self, kernel: "Kernel", p: "Process") -> bool:
        s = self.spec
        cfg = {"rank": s.rank, "lr": s.lr, "seed": s.seed, "full": s.full}
        self._begun = True
        if s.distill:  # the driver holds the teacher for the session begun next (drivers/train.py)
            kernel.driver.train_begin(kernel.model(s.distill).driver_name, self.name, {"role": "teacher"})
            cfg.update(distill=True, temperature=s.temperature, kd_alpha=s.alpha, vocab=self.vocab)
        n = kernel.driver.train_begin(self.base, self.name, cfg)
        if self.start_step:
            kernel.driver.train_load(self.name, str(self.ckpt_root / f"step-{self.start_step}"))
            p.stdout += f"resuming {self.name} from step {self.start_step}/{s.steps}\n"
        p.stdout += (distill.describe(s, n, self.base, len(self.examples)) if s.distill or s.full else
                     f"training {self.name}: LoRA rank {s.rank} on {self.base} ({n} trainable parameters), "
                     f"{len(self.examples)} examples from {s.dataset}, {s.steps} steps of {s.batch}, lr {s.lr:g}\n")
        self._t = time.monotonic()
        return False

    def _finish_step(self, kernel: "Kernel", p: "Process", exs: list[dataset.Example]) -> bool:
        s = self.spec
        kernel.driver.train_apply(self.name)
        loss = self._sum / _targets(exs)
        self.losses.append(loss)
        self.step += 1
        self._micro, self._sum = 0, 0.0
        now = time.monotonic()
        dt = max(now - self._t, 1e-9)
        self._t = now
        p.stdout += (f"step {self.step}/{s.steps} loss {loss:.4f} {1 / dt:.2f} steps/s "
                     f"{sum(len(e.tokens) for e in exs) / dt:.0f} tok/s\n")
        if self.step == s.steps or (s.checkpoint_every and self.step % s.checkpoint_every == 0):
            self._checkpoint(kernel)
        if self.step < s.steps:
            return False
        self._register(kernel, p)
        return True

    def _checkpoint(self, kernel: "Kernel") -> None:
        final = self.ckpt_root / f"step-{self.step}"
        tmp = final.with_name(final.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        kernel.driver.train_save(self.name, str(tmp))
        state = {"step": self.step, "losses": self.losses, "spec": asdict(self.spec), "base": self.base,
                 "dataset_sha256": self.digest}
        (tmp / "state.json").write_text(json.dumps(state))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in _checkpoints(self.ckpt_root)[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(self.ckpt_root / f"step-{old}", ignore_errors=True)

    def _register(self, kernel: "Kernel", p: "Process") -> None:
        """Save the adapter as a LoRA model in the store (a full run: the model itself) and serve
        it (replacing an idle older copy)."""
        staged = kernel.store.staging(self.name)
        kernel.driver.train_export(self.name, str(staged))
        served = self._save_adapter(kernel, staged) if not self.spec.full else \
            distill.register_full(kernel, self.name, self.base, staged, self.owner, self.lineage(kernel))
        p.results = {"loss": self.losses[-1], "first_loss": self.losses[0], "steps": float(self.step)}
        p.reason = f"trained {self.step} steps, final loss {self.losses[-1]:.4f}; registered model {self.name}{served}"
        p.stdout += p.reason + "\n"

    def _save_adapter(self, kernel: "Kernel", staged: Path) -> str:
        v = kernel.store.save(staged, self.name, "distilled" if self.spec.distill else "lora",
                              version_of(kernel, self.base), self.base, self.owner, self.lineage(kernel))
        return reload(kernel, self.name, v)

    def lineage(self, kernel: "Kernel") -> dict:
        """What a fine-tune's version records of how it was made."""
        s = self.spec
        hyper = {"rank": s.rank, "lr": s.lr, "seed": s.seed, "steps": self.step, "batch": s.batch,
                 "max_len": s.max_len, **({"distill": s.distill, "temperature": s.temperature, "alpha": s.alpha}
                                          if s.distill else {}), **({"full": True} if s.full else {})}
        return {"base": self.base, "base_version": kernel.model(self.base).digest, "dataset": s.dataset,
                "dataset_sha256": self.digest, "hyperparameters": hyper, "final_loss": round(self.losses[-1], 6)}

    def terminate(self, kernel: "Kernel", p: "Process") -> None:
        """TERM: keep what the finished steps learned in a checkpoint, then end."""
        if self._begun and self.step > self.start_step and self.step not in _checkpoints(self.ckpt_root):
            self._checkpoint(kernel)
        done = _checkpoints(self.ckpt_root)
        p.reason = (f"checkpoint at step {done[-1]}/{self.spec.steps}: continue with --resume" if done
                    else "no step had finished; nothing to keep")

    def close(self, kernel: "Kernel", p: "Process", reason: str) -> None:
        if self._begun:
            kernel.driver.train_end(self.name)
        if self.step < self.spec.steps:
            done = _checkpoints(self.ckpt_root)
            at = f"the last checkpoint is step {done[-1]}: continue with --resume" if done else "no checkpoint yet"
            p.stdout += f"stopped at step {self.step}/{self.spec.steps} ({reason}); {at}\n"


def start(kernel: "Kernel", cred: "Cred", model: str, spec: TrainSpec, data: bytes | None = None,
          resume: bool = False, priority: int = 0, owner: str = "", steps: int = 0) -> "Process":
    """Validate everything, then spawn the training process (nothing runs before it is valid).
    `data` is the dataset's bytes (spec.dataset its name); a resumed run takes the checkpoint's
    spec and its copy of the data, and a nonzero `steps` then sets a new total."""
    m = kernel.model_for(cred, model)
    if kernel.store is None:
        raise FailedPrecondition("this kernel has no model store to keep checkpoints and adapters in")
    if not isinstance(kernel.driver, TrainingDriver):
        raise FailedPrecondition(f"the {kernel.driver.kind} driver cannot train")
    if m.info.quantize != "none":
        raise InvalidArgument(f"model {model!r} has {m.info.quantize} weights; train on an unquantized model")
    if m.adapter:
        raise InvalidArgument(f"model {model!r} is a LoRA model; train a new adapter on its base {m.base!r}")
    if m.preset_of:
        raise InvalidArgument(f"model {model!r} is a preset over {m.preset_of!r}'s weights; train on {m.preset_of!r}")
    owner = cred.owner_for(owner)
    spec.name = spec.name or f"{model}+{dataset.stem(spec.dataset)}"
    _check_target(kernel, Cred(owner, cred.admin), model, spec.name)
    root = kernel.store.path_of(spec.name, "checkpoints")
    start_step, losses, saved = 0, [], None
    if resume:
        spec, start_step, losses, saved = _resume(root, model, spec)
        spec.steps = steps or spec.steps
        data = saved["data"] if data is None else data
    if data is None:
        raise InvalidArgument("give the data to train on")
    spec.check()
    vocab = distill.check_teacher(kernel, cred, m, spec.distill) if spec.distill else 0
    if spec.full:
        distill.check_full(cred, m)
    unit = spec.micro_batch * min(spec.max_len, m.info.max_context)
    if unit > kernel.config.max_unit_tokens:
        raise InvalidArgument(f"micro_batch x max_len is {unit} tokens, over the {kernel.config.max_unit_tokens} "
                              "tokens a unit of task work may take (max_unit_tokens)")
    if start_step >= spec.steps:
        raise FailedPrecondition(f"{spec.name} already finished {start_step} of {spec.steps} steps")
    if any(not q.state.done and getattr(q.task, "name", None) == spec.name for q in kernel.procs.values()):
        raise FailedPrecondition(f"{spec.name} is already being trained")
    digest = hashlib.sha256(data).hexdigest()
    if saved is not None and digest != saved["digest"]:
        raise FailedPrecondition(f"{spec.dataset} changed since the checkpoint at step {start_step}; cannot resume")
    examples = dataset.encode(dataset.parse(spec.dataset, data), m.codec, min(spec.max_len, m.info.max_context),
                              spec.dataset)
    kernel.quota.check_data(kernel, owner, len(data))
    task = TrainTask(model, spec.name, spec, examples, root, digest, start_step=start_step, step=start_step,
                     losses=list(losses), owner=owner, data_bytes=len(data), vocab=vocab)
    p = kernel.spawn_task(cred, model, task, priority=priority, owner=owner)
    if not resume:  # a fresh run: an older run's checkpoints would mislead --resume
        try:
            kernel.store.claim(spec.name, owner)
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(mode=0o700)
            (root / DATA_FILE).write_bytes(data)
        except OSError as e:
            kernel.exit(p, State.KILLED, f"cannot write its checkpoint folder: {e}")
            raise FailedPrecondition(f"cannot write the checkpoint folder of {spec.name}: {e.strerror}") from None
    kernel.log(f"pid {p.pid}: training {spec.name} ({spec.steps} steps) for {owner}")
    return p


def version_of(kernel: "Kernel", name: str):
    """The stored version a loaded model serves (None for a model adopted in-process)."""
    m = kernel.model(name)
    return kernel.store.lookup(m.digest) if m.digest else None


def reload(kernel: "Kernel", name: str, v) -> str:
    """Serve the new version `name` now (replacing an idle older copy); the line that says so."""
    if name in kernel.models:
        try:
            loading.unload_model(kernel, name)
        except FailedPrecondition as e:
            return f" (version {v.short}); not reloaded: {e}"
    kernel.install_model(loading.prepare_model(kernel, ROOT, name, name=name, quantize="none"))
    return f" (version {v.short}); loaded"


def _check_target(kernel: "Kernel", owner: "Cred", base: str, name: str) -> None:
    """The adapter's name is valid, and free or the owner's own: never a base model, never
    another user's model or checkpoints."""
    try:
        check_name("adapter name", name)
    except ValueError as e:
        raise InvalidArgument(str(e)) from None
    loaded = kernel.models.get(name)
    if name == base or (loaded is not None and not loaded.adapter) or kernel.store.holds_model(name):
        raise InvalidArgument(f"{name!r} names a base model; give the adapter a name of its own (--name)")
    if loaded is not None:
        owner.check_owns(f"model {name!r}", loaded.owner)
    held = kernel.store.owner_of(name)
    if held is not None:
        owner.check_owns(f"the name {name!r}", held)


def _resume(root: Path, model: str, spec: TrainSpec) -> tuple[TrainSpec, int, list[float], dict]:
    done = _checkpoints(root)
    if not done:
        raise FailedPrecondition(f"no checkpoint of {spec.name} to resume from; start it without --resume")
    state = json.loads((root / f"step-{done[-1]}" / "state.json").read_text())
    if state["base"] != model:
        raise FailedPrecondition(f"{spec.name} was trained on {state['base']!r}, not {model!r}")
    try:
        data = (root / DATA_FILE).read_bytes()
    except OSError:
        data = None  # then the caller must send it again
    return TrainSpec(**state["spec"]), int(state["step"]), list(state["losses"]), \
        {"data": data, "digest": state["dataset_sha256"]}


def _checkpoints(root: Path) -> list[int]:
    if not root.is_dir():
        return []
    steps = [d.name.removeprefix("step-") for d in root.iterdir() if (d / "state.json").is_file()]
    return sorted(int(s) for s in steps if s.isdigit())


def _targets(exs: list[dataset.Example]) -> int:
    """Tokens the loss counts in a batch (each predicted from the one before)."""
    return sum(len(e.tokens) - max(e.loss_from, 1) for e in exs)

