"""`llmos train`: start a LoRA fine-tune, print its pid, follow its stdout.

    llmos train MODEL DATA [--steps N] [--lr X] [--rank R] [--batch B] [--priority P]
                           [--checkpoint-every K] [--name NAME] [--resume] [--detach]
                           [--distill TEACHER [--temperature T] [--alpha A]] [--full]
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmos.shell.commands import Shell


def add_parsers(sub: argparse._SubParsersAction, parser_class: type) -> None:
    """The train command's subparser, under the shell's."""
    p = sub.add_parser("train", help="fine-tune a loaded model with LoRA on a dataset (JSONL or text)")
    p.add_argument("model")
    p.add_argument("data", nargs="?", default="", help="JSONL (messages or text) or plain text; sent to llmosd")
    p.add_argument("--daemon-path", action="store_true",
                   help="DATA is a file on the daemon's disk, inside its data_dirs (admins only)")
    p.add_argument("--steps", type=int, default=0, help="optimizer steps (100)")
    p.add_argument("--lr", type=float, default=0.0, help="learning rate (5e-4)")
    p.add_argument("--rank", type=int, default=0, help="LoRA rank (8)")
    p.add_argument("--batch", type=int, default=0, help="sequences per step (4)")
    p.add_argument("--micro-batch", type=int, default=0, help="sequences per unit between decode steps (1)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints (25)")
    p.add_argument("--priority", "--nice", type=int, default=0, help="nice, -20 (most often) .. 19")
    p.add_argument("--name", default="", help="the adapter model's name (MODEL+DATASTEM)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--distill", default="", metavar="TEACHER",
                   help="learn this loaded model's next-token distributions (same tokenizer)")
    p.add_argument("--temperature", type=float, default=0.0, help="distillation's softmax temperature (2)")
    p.add_argument("--alpha", type=float, default=0.0,
                   help="distillation: the weight of the data's cross-entropy, 0..1 (0: the KL alone)")
    p.add_argument("--full", action="store_true",
                   help="train every weight (admins, small models), not a LoRA adapter")
    p.add_argument("--detach", "-d", action="store_true", help="print the pid and return")


def train(sh: "Shell", a: argparse.Namespace) -> int:
    if not a.data and not (a.resume and a.name):
        sh.say("llmos: train needs a DATA file (or --resume --name NAME)")
        return 2
    path, server_path = ("", a.data) if a.daemon_path else (a.data, "")
    pid, name = sh.c.train(a.model, path, server_path=server_path, steps=a.steps, lr=a.lr, rank=a.rank,
                           batch=a.batch, micro_batch=a.micro_batch, checkpoint_every=a.checkpoint_every,
                           resume=a.resume, name=a.name, priority=a.priority, distill=a.distill,
                           temperature=a.temperature, alpha=a.alpha, full=a.full)
    sh.say(f"pid {pid}: training {name}")
    if a.detach:
        sh.out.write(f"{pid}\n")
        return 0
    status = sh.stream(pid, on_interrupt=None)
    if status == 130:
        sh.say(f"[training goes on: `llmos attach {pid}` to follow, `llmos kill {pid}` to end it]")
    return status


COMMANDS = {"train": train}
