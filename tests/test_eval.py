"""Evaluation processes: perplexity, BLEU and ROUGE (kernel/evaluate.py), their data files
(kernel/evaldata.py), the Eval syscall and `llmos eval`."""
import dataclasses
import json
import math
import time
from pathlib import Path

import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer

from llmos.kernel.workloads import evaldata, evaluate
from llmos.kernel.workloads.dataset import DatasetError
from llmos.kernel.workloads.evaluate import EvalSpec
from llmos.kernel.proc import StopRules
from llmos.kernel import ROOT, SpawnSpec
from llmos.kernel.text import TextCodec
from tiny import tiny_tokenizer

TEXT = ("The quick brown fox jumps over the lazy dog. Hello world, this is llmos speaking. "
        "An operating system for language models: processes, pages, signals and syscalls. ") * 6
ITEMS = [{"prompt": "The quick brown fox", "reference": "jumps over the lazy dog."},
         {"prompt": "Hello world,", "reference": "this is llmos speaking."},
         {"messages": [{"role": "user", "content": "What is an operating system?"}],
          "reference": "processes, pages, signals and syscalls"},
         {"messages": [{"role": "user", "content": "Tell me a story."},
                       {"role": "assistant", "content": "Once upon a time there was a kernel."}]}]


def write(tmp_path, name: str, lines) -> str:
    p = tmp_path / name
    p.write_text(lines if isinstance(lines, str) else "".join(json.dumps(x) + "\n" for x in lines))
    return str(p)


def prepare(spec: EvalSpec):
    """evaluate.prepare for a spec whose data_name is a file here, as the Eval syscall hands the
    data over: its name and bytes, tokenized with the tiny model's tokenizer."""
    path = Path(spec.data_name)
    data = path.read_bytes() if path.is_file() else b""
    return evaluate.prepare(dataclasses.replace(spec, data_name=path.name), data, TextCodec(tiny_tokenizer(), set()))


def run_eval(k, spec: EvalSpec, priority: int = 0):
    p = evaluate.spawn_eval(k, ROOT, prepare(spec), priority=priority)
    k.run_until_idle()
    return p


def direct_nll(model, ids: list[int], window: int) -> tuple[float, int]:
    """transformers' own loss over the same windows, no llmos code involved."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(ids) - 1, window):
            chunk = torch.tensor([ids[s:s + window + 1]])
            out = model(chunk, labels=chunk)
            n = chunk.shape[1] - 1
            nll, count = nll + out.loss.item() * n, count + n
    return nll, count


# --- perplexity ------------------------------------------------------------------------------------
@pytest.mark.parametrize("family,window", [("llama", 0), ("llama", 37), ("mistral", 50)])
def test_perplexity_matches_transformers(make_kernel, tokenizer, tmp_path, family, window):
    over = {"sliding_window": 16} if family == "mistral" else {}
    k, ref = make_kernel(family, **over)
    p = run_eval(k, EvalSpec("tiny", write(tmp_path, "t.txt", TEXT), "ppl", window=window))
    assert p.state.value == "exited", p.reason
    ids = tokenizer(TEXT)["input_ids"]
    nll, count = direct_nll(ref.model, ids, window or min(evaluate.DEFAULT_WINDOW, 511))
    assert p.results["tokens"] == count == len(ids) - 1
    assert p.results["ppl"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert p.results["windows"] == -(-(len(ids) - 1) // (window or 511))
    assert "ppl" in p.stdout.splitlines()[-1] and p.stdout.startswith("window 1 ")


def test_perplexity_of_jsonl_documents_scores_each_alone(make_kernel, tokenizer, tmp_path):
    k, ref = make_kernel()
    docs = ["Hello world, this is llmos speaking.", "The quick brown fox jumps over the lazy dog."]
    p = run_eval(k, EvalSpec("tiny", write(tmp_path, "d.jsonl", [{"text": d} for d in docs]), "ppl"))
    parts = [direct_nll(ref.model, tokenizer(d)["input_ids"], 511) for d in docs]
    nll, count = sum(x for x, _ in parts), sum(n for _, n in parts)
    assert p.results["ppl"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert p.results["documents"] == 2


def test_scoring_shares_the_device_with_decoding(make_kernel, tmp_path):
    """Token processes keep streaming, token for token as transformers, while an eval runs."""
    k, ref = make_kernel()
    prompt = [5, 6, 7, 8, 9]
    run = k.spawn(ROOT, SpawnSpec("tiny", tokens=prompt, stop=StopRules(20)))
    ev = evaluate.spawn_eval(k, ROOT, prepare(EvalSpec("tiny", write(tmp_path, "t.txt", TEXT * 3), "ppl",
                                                          window=32)))
    k.run_until_idle()
    assert run.out_tokens == ref.greedy(prompt, 20)
    assert ev.state.value == "exited" and ev.results["windows"] > 10


def test_an_eval_is_a_process_signals_end_it(make_kernel, tmp_path):
    k, _ = make_kernel()
    ev = evaluate.spawn_eval(k, ROOT, prepare(EvalSpec("tiny", write(tmp_path, "t.txt", TEXT), "ppl",
                                                          window=16)), priority=5)
    k.signal(ROOT, ev.pid, "STOP")
    for _ in range(5):
        k.step()
    assert ev.stdout == "" and ev.state.value == "stopped"
    k.signal(ROOT, ev.pid, "CONT")
    k.step(), k.step()
    assert ev.stdout.startswith("window 1 ")
    windows = ev.task.windows
    k.signal(ROOT, ev.pid, "TERM")  # it ends at its next unit, with what it has
    assert not ev.state.done and ev.results == {}
    k.step()
    assert ev.state.value == "killed" and ev.reason == f"terminated: after {windows} windows; the results cover those"
    assert ev.results["windows"] == windows and ev.results["tokens"] == windows * 16 and ev.results["ppl"] > 1
    ev2 = evaluate.spawn_eval(k, ROOT, prepare(EvalSpec("tiny", write(tmp_path, "t.txt", TEXT), "ppl", window=16)))
    k.step()
    k.signal(ROOT, ev2.pid, "KILL")  # KILL stays immediate, and reports nothing
    assert ev2.state.value == "killed" and ev2.reason == "signal KILL" and ev2.results == {}


# --- bleu and rouge --------------------------------------------------------------------------------
def expected_outputs(k, items: list[dict], max_tokens: int) -> list[str]:
    """Each item generated alone by a plain process, as the eval's children should."""
    pids = []
    for it in items:
        msgs = it.get("messages")
        if msgs and "reference" not in it:
            msgs = msgs[:-1]
        pids.append(k.spawn(ROOT, SpawnSpec("tiny", prompt=it.get("prompt"), messages=msgs, stop=StopRules(max_tokens))).pid)
    k.run_until_idle()
    return [k.procs[pid].stdout.strip() for pid in pids]


@pytest.mark.parametrize("metric", ["bleu", "rouge"])
def test_bleu_and_rouge_match_the_libraries(make_kernel, tmp_path, metric):
    k, _ = make_kernel()
    refs = [it.get("reference") or it["messages"][-1]["content"] for it in ITEMS]
    ev = evaluate.spawn_eval(k, ROOT, prepare(EvalSpec("tiny", write(tmp_path, "e.jsonl", ITEMS), metric,
                                                          max_tokens=12)))
    k.step()
    kids = [p for p in k.procs.values() if p.ppid == ev.pid]
    assert len(kids) == len(ITEMS) and all(p.model == "tiny" for p in kids)
    k.run_until_idle()
    assert ev.state.value == "exited", ev.reason
    assert not any(p.ppid == ev.pid for p in k.procs.values())  # the eval reaped its children
    hyps = expected_outputs(k, ITEMS, 12)
    assert ev.task.outputs == hyps and any(hyps)
    if metric == "bleu":
        assert ev.results == {"bleu": sacrebleu.corpus_bleu(hyps, [refs]).score, "items": 4.0}
    else:
        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
        scores = [scorer.score(r, h) for h, r in zip(hyps, refs)]
        for name in ("rouge1", "rouge2", "rougeL"):
            assert ev.results[name] == pytest.approx(sum(s[name].fmeasure for s in scores) / 4, abs=1e-12)
    assert ev.stdout.splitlines()[-2] == "generated 4/4"


def test_bleu_of_exact_outputs_is_100(make_kernel, tmp_path):
    """References set to the model's own greedy outputs score a perfect BLEU and ROUGE."""
    k, _ = make_kernel()
    items = [{"prompt": f"Hello world, {w}", "reference": ""} for w in ("this", "the", "an operating")]
    for it, out in zip(items, expected_outputs(k, items, 16)):
        it["reference"] = out
    ev = run_eval(k, EvalSpec("tiny", write(tmp_path, "e.jsonl", items), "bleu", max_tokens=16))
    assert ev.results["bleu"] == pytest.approx(100.0)


@pytest.mark.parametrize("sig", ["TERM", "KILL"])
def test_ending_an_eval_ends_its_children(make_kernel, tmp_path, sig):
    k, _ = make_kernel()
    ev = evaluate.spawn_eval(k, ROOT, prepare(EvalSpec("tiny", write(tmp_path, "e.jsonl", ITEMS * 5), "rouge",
                                                          max_tokens=50)))
    k.step()
    kids = [p for p in k.procs.values() if p.ppid == ev.pid]
    assert len(kids) == evaluate.MAX_CHILDREN  # 20 items, at most 16 live children
    k.signal(ROOT, ev.pid, sig)
    if sig == "TERM":  # at its next unit, scoring the items that were answered (none yet)
        k.step()
        assert ev.reason == "terminated: after 0/20 items; the results cover those" and ev.results == {}
    assert ev.state.value == "killed" and all(p.state.value == "killed" for p in kids)


def test_stop_and_cont_of_an_eval_reach_its_children(make_kernel, tmp_path):
    k, _ = make_kernel()
    ev = evaluate.spawn_eval(k, ROOT, prepare(EvalSpec("tiny", write(tmp_path, "e.jsonl", ITEMS), "rouge",
                                                          max_tokens=30)))
    k.step()
    kids = [p for p in k.procs.values() if p.ppid == ev.pid]
    assert kids and all(p.state.value != "stopped" for p in kids)
    k.signal(ROOT, ev.pid, "STOP")
    assert all(p.state.value == "stopped" for p in kids)
    made = [len(p.out_tokens) for p in kids]
    for _ in range(5):
        k.step()
    assert [len(p.out_tokens) for p in kids] == made  # a stopped eval generates nothing
    k.signal(ROOT, ev.pid, "CONT")
    assert not any(p.state.value == "stopped" for p in kids)
    k.run_until_idle()
    assert ev.state.value == "exited", ev.reason


def test_an_eval_waiting_on_its_children_is_not_run(make_kernel, tmp_path):
    """Once its children are spawned, the eval has nothing to do until one ends: it must not be
    picked every step (each pick costs a unit of device share and a pass over its children)."""
    k, _ = make_kernel()
    ev = evaluate.spawn_eval(k, ROOT, prepare(EvalSpec("tiny", write(tmp_path, "e.jsonl", ITEMS), "rouge",
                                                          max_tokens=20)))
    task, units = ev.task, []
    run = task.run_unit
    task.run_unit = lambda kernel, proc: units.append(sum(1 for p in kernel.procs.values() if p.ppid == proc.pid
                                                          and p.state.done)) or run(kernel, proc)
    steps = 0
    while not ev.state.done:
        k.step()
        steps += 1
    assert steps >= 20 and len(units) <= 1 + len(ITEMS)  # the first unit spawns; then one per finished child
    assert all(done > 0 for done in units[1:])


def test_a_child_that_cannot_run_fails_the_eval_naming_its_line(make_kernel, tmp_path):
    k, _ = make_kernel()
    items = ITEMS[:2] + [{"prompt": "word " * 600, "reference": "x"}]
    ev = run_eval(k, EvalSpec("tiny", write(tmp_path, "e.jsonl", items), "bleu", max_tokens=4))
    assert ev.state.value == "killed" and ev.reason.startswith("item at line 3: the prompt is ")


# --- bad data --------------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["ppl", "bleu"])
def test_empty_files_are_refused(tmp_path, metric):
    name = "e.jsonl" if metric == "bleu" else "e.txt"
    with pytest.raises(DatasetError, match="empty"):
        prepare(EvalSpec("tiny", write(tmp_path, name, "\n\n"), metric))


def test_bad_jsonl_lines_are_all_named(tmp_path):
    path = write(tmp_path, "bad.jsonl", json.dumps(ITEMS[0]) + "\n{oops\n\n" + json.dumps({"prompt": "hi"}) +
                 "\n[1]\n" + json.dumps({"prompt": "a", "messages": []}) + "\n" +
                 json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DatasetError) as e:
        evaldata.items(Path(path).name, Path(path).read_bytes())
    assert e.value.problems == [
        "line 2: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        "line 4: no 'reference' field", "line 5: expected a JSON object, got list",
        "line 6: give exactly one of 'prompt' or 'messages'",
        "line 7: no 'reference' field, and 'messages' does not end with an assistant reply to use"]
    assert "bad.jsonl: 5 problems: line 2: not valid JSON" in str(e.value)


def test_bad_specs_are_refused_before_reading(tmp_path):
    with pytest.raises(evaluate.InvalidArgument, match="unknown metric 'f1'; choose one of ppl, bleu, rouge"):
        prepare(EvalSpec("tiny", "/nonexistent", "f1"))
    with pytest.raises(evaluate.InvalidArgument, match="bleu and rouge need a JSONL file"):
        prepare(EvalSpec("tiny", write(tmp_path, "t.txt", "hi"), "bleu"))
    with pytest.raises(DatasetError, match="line 1: perplexity needs a 'text' field"):
        prepare(EvalSpec("tiny", write(tmp_path, "c.jsonl", ITEMS[3:]), "ppl"))


# --- through a real daemon and the shell ---------------------------------------------------------------
def shell(d, *args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "llmos.shell.cli", *args], capture_output=True, text=True,
                          timeout=120, env=d.env)


def test_llmos_eval_ppl_through_the_daemon(llmosd, tiny_model_dir, tokenizer, tmp_path):
    from tiny import tiny_model
    path = write(tmp_path, "t.txt", TEXT)
    r = shell(llmosd, "eval", "tiny-llama", path, "--metric", "ppl", "--window", "40", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    nll, count = direct_nll(tiny_model("llama"), tokenizer(TEXT)["input_ids"], 40)
    assert out["state"] == "exited" and out["results"]["tokens"] == count
    assert out["results"]["ppl"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert r.stderr.startswith("window 1 (document 1/1): 40 tokens, ppl ")  # the process's own progress lines
    table = shell(llmosd, "eval", "tiny-llama", path, "-m", "ppl", "--window", "40")
    assert table.returncode == 0 and "METRIC" in table.stdout and f"{out['results']['ppl']:.4f}" in table.stdout


def test_llmos_eval_bleu_through_the_daemon(llmosd, tmp_path):
    path = write(tmp_path, "e.jsonl", ITEMS)
    r = shell(llmosd, "eval", "tiny-llama", path, "--metric", "bleu", "--max-tokens", "10", "--json")
    assert r.returncode == 0, r.stderr
    with llmosd.client() as c:
        hyps = [c.wait(c.spawn("tiny-llama", it.get("prompt"), it.get("messages") if "reference" in it
                               else it["messages"][:-1], max_tokens=10)).output.strip() for it in ITEMS]
        refs = [it.get("reference") or it["messages"][-1]["content"] for it in ITEMS]
        assert json.loads(r.stdout)["results"] == {"bleu": sacrebleu.corpus_bleu(hyps, [refs]).score, "items": 4}
        pid = c.eval("tiny-llama", path, "rouge", max_tokens=200, priority=3)
        kids, deadline = [], time.monotonic() + 30  # the eval spawns them on its first unit
        while not kids and time.monotonic() < deadline:
            kids = [p for p in c.ps() if p.ppid == pid]
        res = c.wait(pid)
        assert res.state == "exited" and set(res.results) == {"rouge1", "rouge2", "rougeL", "items"}
        assert res.output.splitlines()[-2] == "generated 4/4"
    assert kids and all(p.priority == 3 for p in kids)  # real processes, children of the eval


@pytest.mark.parametrize("content,error", [
    ("", "dataset {}: 1 problem: the file is empty: no items to evaluate"),
    ('{"prompt": "hi", "reference": "x"}\n{"prompt": 3}\n', "line 2: 'prompt' must be a non-empty string")])
def test_llmos_eval_refuses_bad_data_in_one_line(llmosd, tmp_path, content, error):
    path = write(tmp_path, "bad.jsonl", content)
    r = shell(llmosd, "eval", "tiny-llama", path, "--metric", "rouge")
    assert r.returncode == 1 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1
    assert error.format("bad.jsonl") in r.stderr  # the client's file, named as the client named it
    r = shell(llmosd, "eval", "tiny-llama", str(tmp_path / "none.txt"), "--metric", "ppl")
    assert r.returncode == 1 and f"cannot read {tmp_path / 'none.txt'}: No such file or directory" in r.stderr
