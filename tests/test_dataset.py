"""Datasets: validation of every line, refusal of empty or unreadable files, tokenizing, order."""
import json
import pathlib

import pytest

from llmos.kernel.workloads import dataset
from llmos.kernel.workloads.dataset import DatasetError
from llmos.kernel.text import TextCodec


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text) if isinstance(text, str) else p.write_bytes(text)
    return str(p)


def read(path):
    """A file's dataset, as the Train syscall hands the data over: its name and bytes."""
    return dataset.parse(pathlib.Path(path).name, pathlib.Path(path).read_bytes())


def chat(q, a):
    return json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})


def test_jsonl_reads_chat_and_text(tmp_path):
    path = write(tmp_path, "d.jsonl", chat("hi", "hello") + "\n\n" + json.dumps({"text": "plain"}) + "\n")
    recs = read(path)
    assert [r.line for r in recs] == [1, 3]
    assert recs[0].messages[1] == {"role": "assistant", "content": "hello"} and recs[1].text == "plain"


def test_every_bad_line_is_reported_with_its_number_and_reason(tmp_path):
    lines = [chat("a", "b"), "{not json", "[1, 2]", json.dumps({"prompt": "x"}),
             json.dumps({"text": "x", "messages": []}), json.dumps({"text": ""}),
             json.dumps({"messages": [{"role": "user", "content": "no reply"}]}),
             json.dumps({"messages": [{"role": "wizard", "content": "x"}]}), chat("c", "d")]
    with pytest.raises(DatasetError) as e:
        read(write(tmp_path, "bad.jsonl", "\n".join(lines)))
    problems = e.value.problems
    assert [p.split(":")[0] for p in problems] == [f"line {i}" for i in range(2, 9)]
    assert "not valid JSON" in problems[0] and "expected a JSON object, got list" in problems[1]
    assert "no 'messages' or 'text' field" in problems[2] and "both" in problems[3]
    assert "non-empty string" in problems[4] and "no assistant message" in problems[5]
    assert "role" in problems[6]
    assert e.value.code == "invalid_argument" and "7 problems" in str(e.value)


def test_empty_and_binary_data_are_refused(tmp_path):
    for path, why in [(write(tmp_path, "e.jsonl", "\n  \n"), "empty"), (write(tmp_path, "e.txt", ""), "empty"),
                      (write(tmp_path, "b.txt", b"ok\n\xff\xfe"), "line 2: not UTF-8")]:
        with pytest.raises(DatasetError, match=why):
            read(path)


def test_files_on_the_daemons_disk_are_an_admins_and_inside_data_dirs_only(tmp_path):
    from llmos.kernel import ROOT, Cred, PermissionDenied

    inside, outside = tmp_path / "data", tmp_path / "elsewhere"
    inside.mkdir(), outside.mkdir()
    ok = write(inside, "d.txt", "hello")
    (inside / "link.txt").symlink_to(write(outside, "secret.txt", "secret"))
    assert dataset.read_server_file(ROOT, ok, [inside]) == ("d.txt", b"hello")
    for path, why in [(str(inside / "nope.jsonl"), "no such file"), (str(inside), "not a regular file")]:
        with pytest.raises(DatasetError, match=why):
            dataset.read_server_file(ROOT, path, [inside])
    for path in (str(inside / "link.txt"), str(outside / "secret.txt"), str(inside / ".." / "elsewhere" / "x"),
                 "/etc/passwd"):
        with pytest.raises(PermissionDenied, match="outside the directories llmosd reads data from"):
            dataset.read_server_file(ROOT, path, [inside])
    with pytest.raises(PermissionDenied, match="no data_dirs are configured"):
        dataset.read_server_file(ROOT, ok, [])
    for path in (ok, "/etc/passwd", str(inside / "nope")):  # a user learns nothing about any file
        with pytest.raises(PermissionDenied, match="^only an admin may have llmosd read files from its own disk; "
                                                   "user alice is not one$"):
            dataset.read_server_file(Cred("alice"), path, [inside])


def test_plain_text_splits_into_paragraphs(tmp_path):
    recs = read(write(tmp_path, "t.txt", "one\ntwo\n\n\nthree\n"))
    assert [(r.line, r.text) for r in recs] == [(1, "one\ntwo"), (5, "three")]


def test_encode_trains_on_the_reply_as_a_spawn_would_prompt(tmp_path, tokenizer):
    codec = TextCodec(tokenizer, set())
    msgs = [{"role": "user", "content": "Hello world"}, {"role": "assistant", "content": "The quick brown fox."}]
    recs = read(write(tmp_path, "d.jsonl", json.dumps({"messages": msgs})))
    (ex,) = dataset.encode(recs, codec, 512)
    prompt = codec.encode_chat(msgs[:1])
    assert list(ex.tokens[:ex.loss_from]) == prompt
    assert codec.decode(list(ex.tokens[ex.loss_from:])) == "The quick brown fox."
    assert ex.tokens[-1] == tokenizer.eos_token_id


def test_long_text_is_chunked_and_long_chat_refused(tmp_path, tokenizer):
    codec = TextCodec(tokenizer, set())
    long = "The quick brown fox jumps over the lazy dog. " * 20
    recs = read(write(tmp_path, "t.txt", long))
    exs = dataset.encode(recs, codec, 16)
    ids = codec.encode(recs[0].text)
    assert all(len(e.tokens) <= 16 for e in exs) and sum(len(e.tokens) - 1 for e in exs) == len(ids) - 1
    assert list(exs[0].tokens) + [t for e in exs[1:] for t in e.tokens[1:]] == ids
    with pytest.raises(DatasetError, match="line 1: .* over the 16-token limit"):
        dataset.encode(read(write(tmp_path, "c.jsonl", chat(long, "x"))), codec, 16)


def test_order_is_a_function_of_seed_and_step():
    a, b = dataset.Order(5, seed=3), dataset.Order(5, seed=3)
    first = [a.batch(s, 2) for s in range(6)]
    assert [b.batch(s, 2) for s in reversed(range(6))][::-1] == first
    assert sorted(sum(first[:2], []) + first[2][:1]) == list(range(5))  # each epoch is a permutation


def test_stem():
    assert dataset.stem("/x/mydata.jsonl") == "mydata" and dataset.stem("notes.txt") == "notes"
    assert dataset.stem("my data (v2).jsonl") == "my-data-v2" and dataset.stem("..jsonl") == "data"
