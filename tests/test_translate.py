"""Translation: the fixed instruction, ISO 639-1 codes, the SDK and the shell against a real
daemon, and the bundled English-French set that `llmos eval --metric bleu` scores."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmos.syscalls.sdk import SyscallError
from llmos.syscalls.sdk import translate

MODEL = "tiny-llama"
SET = Path(__file__).resolve().parent.parent / "bench" / "data" / "en-fr.jsonl"


def test_the_instruction_names_both_languages():
    system, user = translate.messages("Good morning.", "fr", "en")
    assert system == {"role": "system", "content": translate.SYSTEM}
    assert user["content"] == "Translate this text from English into French:\n\nGood morning."
    assert "from the language it is in into Japanese" in translate.messages("Hallo", "JA")[1]["content"]


@pytest.mark.parametrize("code", ["xx", "fra", "", "f", "en-US", None])
def test_unknown_codes_are_refused_by_name(code):
    with pytest.raises(SyscallError, match="is not an ISO 639-1 language code") as e:
        translate.messages("Hello", code)
    assert e.value.code == "invalid_argument"
    with pytest.raises(SyscallError, match="source_language 'zz'"):
        translate.messages("Hello", "fr", "zz")


def test_empty_and_oversized_texts_are_refused():
    with pytest.raises(SyscallError, match="empty"):
        translate.messages("  ", "fr")
    with pytest.raises(SyscallError, match=f"over the limit of {translate.MAX_TEXT}"):
        translate.messages("a" * (translate.MAX_TEXT + 1), "fr")


@pytest.mark.parametrize("raw,want", [("  Bonjour.\n", "Bonjour."), ('"Bonjour."', "Bonjour."),
                                       ("« Bonjour »", "Bonjour"), ('"a" and "b"', '"a" and "b"')])
def test_the_answer_is_the_translation_alone(raw, want):
    assert translate.answer(raw) == want


def test_one_paragraph_stops_at_the_first_blank_line_of_the_reply():
    assert translate.stops("One line.\nAnother line.") == ["\n\n"]
    assert translate.stops("One paragraph.\n\nAnother.") == []


def test_the_bundled_set_asks_exactly_what_translate_asks():
    items = [json.loads(line) for line in SET.read_text().splitlines()]
    assert len(items) >= 30
    for it in items:
        source = it["messages"][1]["content"].split("\n\n", 1)[1]
        assert it["messages"] == translate.messages(source, "fr", "en") and it["reference"]


def test_sdk_translate_is_the_greedy_chat_of_the_instruction(llmosd):
    import llmos

    model = llmos.load_model(MODEL, llmosd.socket)
    out = model.translate("The cat sleeps.", "fr", "en", max_tokens=12)
    with llmosd.client() as c:
        want = c.chat(MODEL, translate.messages("The cat sleeps.", "fr", "en"), max_tokens=12, temperature=0,
                      stop=["\n\n"])
        assert out == translate.answer(want)
        with pytest.raises(SyscallError, match="'klingon' is not an ISO 639-1"):
            c.translate(MODEL, "Hello", "klingon")


def test_shell_translate_prints_the_translation(llmosd):
    r = subprocess.run([sys.executable, "-m", "llmos.shell.cli", "translate", MODEL, "Good night.", "--to", "de",
                        "--max-tokens", "8"], capture_output=True, text=True, timeout=60, env=llmosd.env)
    with llmosd.client() as c:
        want = c.translate(MODEL, "Good night.", "de", max_tokens=8)
    assert r.returncode == 0 and r.stdout == want + "\n", r.stderr
    r = subprocess.run([sys.executable, "-m", "llmos.shell.cli", "translate", MODEL, "Hi", "--to", "qq"],
                       capture_output=True, text=True, timeout=60, env=llmosd.env)
    assert r.returncode != 0 and "'qq' is not an ISO 639-1 language code" in r.stderr and "Traceback" not in r.stderr


def test_eval_scores_the_bundled_set_with_bleu(llmosd):
    with llmosd.client() as c:
        pid = c.eval(MODEL, SET, "bleu", max_tokens=8)
        r = c.wait(pid)
    assert r.state == "exited" and r.results["items"] == len(SET.read_text().splitlines())
    assert 0.0 <= r.results["bleu"] <= 100.0
