"""What distillation and full-weight training add to a training process (kernel/workloads/train.py).

`llmos train STUDENT DATA --distill TEACHER` makes a fine-tune learn the teacher's next-token
distributions instead of (or, with alpha, beside) the data's tokens; drivers/distill.py has
the loss. The teacher is another loaded model, run by the same training process on the same
device, inside the same units: a unit computes the micro-batch twice (teacher, then student),
and both count against the owner's tokens-per-minute quota. Teacher and student must share
a tokenizer, or their distributions are over different things.

`--full` trains every weight of a copy of the model instead of a LoRA adapter. The result is a
model of its own (a base model: config, weights, tokenizer) stored and loaded under the run's
name, so only an admin may make one, as only an admin may load a model; and only a small
model, since the copy, its gradients and Adam's two moments take 16 bytes a parameter.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from llmos.kernel.errors import InvalidArgument

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.models.loading import LoadedModel
    from llmos.kernel.users.cred import Cred

FULL_MAX_PARAMETERS = 500_000_000
MAX_TEMPERATURE = 100.0


def check_spec(temperature: float, alpha: float) -> None:
    """InvalidArgument for a temperature or a cross-entropy weight out of range."""
    if not 0 < temperature <= MAX_TEMPERATURE:
        raise InvalidArgument(f"temperature must be in (0, {MAX_TEMPERATURE:g}], got {temperature}")
    if not 0 <= alpha <= 1:
        raise InvalidArgument(f"alpha (the weight of the data's cross-entropy) must be in [0, 1], got {alpha}")


def check_teacher(kernel: "Kernel", cred: "Cred", student: "LoadedModel", name: str) -> int:
    """The teacher is a loaded model the caller may use, not a LoRA model and not the student,
    with the student's tokenizer; returns how many logits to compare (the shared vocabulary)."""
    teacher = kernel.model_for(cred, name)  # NotFound names what is loaded
    if teacher.name == student.name:
        raise InvalidArgument(f"model {name!r} cannot distill from itself; name another model as the teacher")
    if teacher.adapter:
        raise InvalidArgument(f"teacher {name!r} is a LoRA model; distill from a base model")
    a, b = student.codec.tokenizer.get_vocab(), teacher.codec.tokenizer.get_vocab()
    if a != b:
        differ = len(a.keys() ^ b.keys()) + sum(a[t] != b[t] for t in a.keys() & b.keys())
        raise InvalidArgument(f"teacher {name!r} and student {student.name!r} do not share a tokenizer "
                              f"(vocabularies of {len(b)} and {len(a)} tokens; {differ} of them differ); "
                              "distillation compares next-token distributions token by token")
    return min(max(a.values()) + 1, student.info.vocab_size, teacher.info.vocab_size)


def check_full(cred: "Cred", m: "LoadedModel") -> None:
    """Full-weight training makes a base model: admins only, small models only."""
    cred.check("load")
    if m.info.num_parameters > FULL_MAX_PARAMETERS:
        raise InvalidArgument(f"model {m.name!r} has {m.info.num_parameters / 1e6:.0f}M parameters; full-weight "
                              f"training takes models of at most {FULL_MAX_PARAMETERS / 1e6:.0f}M (train LoRA instead)")


def register_full(kernel: "Kernel", name: str, base: str, staged: Path, owner: str, lineage: dict) -> str:
    """Store the exported model (kernel.driver.train_export into `staged`, done by the caller)
    with the base model's tokenizer as a new version of `name`, and serve it; the line that says so."""
    from llmos.kernel.workloads import train

    kernel.model(base).codec.tokenizer.save_pretrained(str(staged))
    v = kernel.store.save(staged, name, "distilled" if lineage["hyperparameters"].get("distill") else "fine-tune",
                          train.version_of(kernel, base), base, owner, lineage)
    return train.reload(kernel, name, v)


def describe(spec, params: int, base: str, examples: int) -> str:
    """The first progress line of a distilling or full-weight run."""
    what = "all weights" if spec.full else f"LoRA rank {spec.rank}"
    how = f"distilling {spec.name} from {spec.distill} (T={spec.temperature:g}, alpha={spec.alpha:g})" \
        if spec.distill else f"training {spec.name}"
    return (f"{how}: {what} of {base} ({params} trainable parameters), {examples} examples from {spec.dataset}, "
            f"{spec.steps} steps of {spec.batch}, lr {spec.lr:g}\n")
