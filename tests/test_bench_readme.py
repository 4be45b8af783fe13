"""bench/readme.py: the README's benchmark blocks match the committed JSON, and the generator works."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repo root: `bench` is a package there
from bench import readme  # noqa: E402

MACHINE = {"cpu": "Test CPU 9000", "cores": 2, "threads": 2, "torch": "2.0", "read_gb_s": 10.0,
           "gemm_16_gflops": 50.0, "gemm_2048_gflops": 100.0}
TOK_S = {("llmos", 1): 30.0, ("llmos_int8", 1): 45.0, ("hf_generate", 1): 10.0, ("hf_static_batch", 1): 9.0,
         ("llmos", 4): 80.0, ("llmos_int8", 4): 100.0, ("hf_generate", 4): 10.0, ("hf_static_batch", 4): 40.0}


def synthetic(results: Path, name: str = "2030-01-02-test-cpu-9000.json") -> Path:
    systems = ["llmos", "llmos_int8", "hf_generate", "hf_static_batch"]
    data = {"machine": MACHINE,
            "runs": [{"system": s, "concurrency": n, "tok_s": v} for (s, n), v in TOK_S.items()],
            "roofline": [{"system": "llmos", "concurrency": 1, "fraction": 0.25}],
            "profile": [{"model": "m", "processes": 4, "step_ms": 20.0, "gemm_ms": 16.0, "non_gemm_ms": 4.0,
                         "non_gemm_share": 0.2, "target_met": True}],
            "memory": {}, "targets": [{"target": "llmos ≥ 2× hf_generate at 1 process", "value": 3.0,
                                       "need": "≥ 2.0", "met": True}],
            "config": {"systems": systems, "concurrency": [1, 4], "new_tokens": 32, "threads": 2}}
    results.mkdir(parents=True, exist_ok=True)
    path = results / name
    path.write_text(json.dumps(data))
    return path


def stale_readme(tmp_path: Path, names: tuple[str, ...] = ("throughput", "profile", "prefill")) -> Path:
    text = "# Title\n\nprose before\n\n" + "".join(
        f"<!-- bench:{n} -->\n| old | 1.0 |\n<!-- /bench:{n} -->\n\nprose after {n}\n" for n in names)
    path = tmp_path / "README.md"
    path.write_text(text)
    return path


def test_readme_is_up_to_date():
    text = (ROOT / "README.md").read_text()
    for name in ("throughput", "profile", "prefill"):
        assert f"<!-- bench:{name} -->" in text
    new, changed = readme.rewrite(text)
    assert changed == [], f"stale README blocks {changed}: run python bench/readme.py"
    assert readme.main(["--check"]) == 0


def test_ratios_in_table(tmp_path):
    results = tmp_path / "results"
    synthetic(results)
    text = readme.render("throughput", results)
    assert "| system | N=1 tok/s | × hf_generate | of roof | N=4 tok/s | × hf_static_batch |" in text
    assert "| llmos | 30.0 | 3.00× | 25% | 80.0 | 2.00× |" in text
    assert "| llmos_int8 | 45.0 | 4.50× | – | 100.0 | 2.50× |" in text
    assert "| hf_static_batch | 9.0 | – | – | 40.0 | – |" in text  # the peers have no ratio of their own
    assert "`python bench/throughput.py --systems llmos,llmos_int8,hf_generate,hf_static_batch --new-tokens 32 " \
           "--concurrency 1,4 --no-memory --profile --results`" in text
    assert "2030-01-02-test-cpu-9000.json" in text and "Test CPU 9000" in text
    assert "| llmos ≥ 2× hf_generate at 1 process | 3.00× | ≥ 2.0 | yes |" in text
    assert "| m | 4 | 20.0 | 16.0 | 4.0 | 20% | yes |" in readme.render("profile", results)


def test_newest_by_filename(tmp_path):
    results = tmp_path / "results"
    synthetic(results, "2030-01-02-test-cpu-9000.json")
    newest = synthetic(results, "2030-01-02-test-cpu-9000-2.json")
    synthetic(results, "2030-01-02-zz-ab-run.json")  # not a --results name
    (results / "2031-01-01-test-cpu-9000.json").write_text(json.dumps({"runs": []}))  # no "machine"
    assert readme.latest_throughput(results) == newest
    assert readme.latest_throughput(tmp_path / "none") is None


def test_newest_of_two_cpus_on_one_day_is_the_one_that_finished_last(tmp_path):
    results = tmp_path / "results"
    fifth = synthetic(results, "2030-01-02-test-cpu-9000-5.json")
    other = results / "2030-01-02-other-cpu.json"  # a second machine's first run that day, after it
    data = json.loads(fifth.read_text())
    data["machine"] = {**MACHINE, "cpu": "Other CPU"}
    data["config"]["finished"] = "2030-01-02T10:00:00+00:00"
    other.write_text(json.dumps(data))
    assert readme.latest_throughput(results) == other
    data = json.loads(fifth.read_text())
    data["config"]["finished"] = "2030-01-02T11:00:00+00:00"
    fifth.write_text(json.dumps(data))
    assert readme.latest_throughput(results) == fifth


def test_rewrite_then_no_op(tmp_path):
    results = tmp_path / "results"
    synthetic(results)
    path = stale_readme(tmp_path)
    before = path.read_text()
    assert readme.main(["--readme", str(path), "--results", str(results), "--check"]) == 1
    assert path.read_text() == before  # --check changes nothing
    assert readme.main(["--readme", str(path), "--results", str(results)]) == 0
    after = path.read_text()
    assert after != before and "| old | 1.0 |" not in after and "3.00×" in after
    for n in ("throughput", "profile", "prefill"):
        assert f"<!-- bench:{n} -->" in after and f"<!-- /bench:{n} -->" in after and f"prose after {n}" in after
    assert "not measured yet (no `" in after and "prefill.json" in after  # no prefill.json in results
    new, changed = readme.rewrite(after, results)
    assert new == after and changed == []
    assert readme.main(["--readme", str(path), "--results", str(results), "--check"]) == 0


def test_unknown_block(tmp_path):
    with pytest.raises(ValueError, match="nosuchblock"):
        readme.rewrite("<!-- bench:nosuchblock -->\nx\n<!-- /bench:nosuchblock -->\n", tmp_path)
    path = tmp_path / "README.md"
    path.write_text("<!-- bench:nosuchblock -->\n<!-- /bench:nosuchblock -->\n")
    assert readme.main(["--readme", str(path), "--results", str(tmp_path)]) == 2
    with pytest.raises(ValueError, match="matching"):
        readme.rewrite("<!-- bench:throughput -->\nunclosed\n", tmp_path)


def test_check_flags_hand_edit(tmp_path, capsys):
    results = tmp_path / "results"
    synthetic(results)
    path = stale_readme(tmp_path, ("throughput",))
    assert readme.main(["--readme", str(path), "--results", str(results)]) == 0
    text = path.read_text()
    path.write_text(text.replace("| 3.00× |", "| 3.10× |", 1))
    capsys.readouterr()
    assert readme.main(["--readme", str(path), "--results", str(results), "--check"]) == 1
    out = capsys.readouterr().out
    assert "-| llmos | 30.0 | 3.10× |" in out and "+| llmos | 30.0 | 3.00× |" in out and "stale bench blocks: throughput" in out


def test_missing_sources(tmp_path):
    assert readme.render("throughput", tmp_path) == "not measured yet (no `" + str(
        (tmp_path / "<date>-<cpu>.json").resolve().name) + "`)."
    assert readme.render("prefill", tmp_path).startswith("not measured yet")


def test_prefill_incomplete(tmp_path):
    data = json.loads((ROOT / "bench/results/prefill.json").read_text())
    data["long_prompt"] = [r for r in data["long_prompt"] if r["tokens"] == 500]
    (tmp_path / "prefill.json").write_text(json.dumps(data | {"complete": False}))
    text = readme.render("prefill", tmp_path)
    assert "(incomplete run: no cells at 2,000, 8,000 prompt tokens)" in text
    assert "| 500 | llmos_fp32 |" in text and "| 2,000 |" not in text


def test_speculate_block(tmp_path):
    data = {"machine": MACHINE, "model": "m", "repeat": 3, "rows": [
        {"workload": "json", "procs": 1, "tokens": 66, "tok_s_off": 18.0, "tok_s_on": 41.3, "speedup": 2.291,
         "tokens_per_step": 1.94, "accept_rate": 0.941, "same_tokens": True},
        {"workload": "chat", "procs": 16, "tokens": 512, "tok_s_off": 100.0, "tok_s_on": 99.0, "speedup": 0.99,
         "tokens_per_step": 1.0, "accept_rate": 0.0, "same_tokens": False}],
        "row_cost_ms": {"1": {"1": 50.0, "2": 55.0}, "16": {"1": 100.0, "2": 210.0}}}
    (tmp_path / "speculate.json").write_text(json.dumps(data))
    text = readme.render("speculate", tmp_path)
    assert "| json | 1 | 66 | 18.0 | 41.3 | 2.29× | 1.94 | 94% | yes |" in text
    assert "| chat | 16 | 512 | 100.0 | 99.0 | 0.99× | 1.00 | 0% | NO |" in text
    assert "1 process: 1 row 1.00×, 2 rows 1.10×; 16 processes: 1 row 1.00×, 2 rows 2.10×." in text
    assert "Test CPU 9000" in text and "median of 3 runs" in text


def test_compile_block(tmp_path):
    data = {"machine": MACHINE, "rows": [{"mode": "int8", "procs": 1, "compile_s": 64.7, "eager_median_ms": 30.0,
                                          "eager_min_ms": 25.0, "compiled_median_ms": 20.0, "compiled_min_ms": 20.0,
                                          "speedup_median": 1.5, "speedup_min": 1.25, "bit_equal": False,
                                          "max_abs_diff": 3.814697265625e-06}]}
    (tmp_path / "compile_step.json").write_text(json.dumps(data))
    assert "| int8 | 1 | 65 | 30.0 / 25.0 | 20.0 / 20.0 | 1.50× / 1.25× | no | 3.8e-06 |" in \
        readme.render("compile", tmp_path)


def test_a_plot_without_matplotlib_is_refused_before_the_run(monkeypatch, capsys):
    import argparse

    from bench import report
    ap = argparse.ArgumentParser()
    report.check_plot(ap, None)  # no --plot: nothing is needed
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(SystemExit) as e:
        report.check_plot(ap, Path("tp.png"))
    assert e.value.code == 2 and "needs matplotlib, a bench extra" in capsys.readouterr().err
