"""The measured kernel choice (drivers/choice.py): the fastest batch-invariant form wins on the
timing it is given, the cache spares a second load the measuring, and outputs never depend on
which form serves a layer or on how many rows share a call."""
import copy
import json
import re

import pytest
import torch
from tiny import tiny_model

from llmos.drivers import choice, measure
from llmos.drivers.choice_cache import FILE, Machine
from llmos.drivers.fuse import FusedGroup
from llmos.drivers.packed import MklGroup, PackedGroup
from llmos.drivers.quant import Int8Group, quantize_model

HERE = Machine("Test CPU (family 1 model 2 stepping 3)", "2.0.0", 2)
IDS = torch.tensor([list(range(3, 40))])


def timer(speeds: dict[str, dict[int, float]], calls: list | None = None):
    """A synthetic machine: seconds = speeds[form][rows] (1.0 where not given), with noise."""
    gen = torch.Generator().manual_seed(0)

    def time_it(key: str, form: str, rows: int) -> float:
        if calls is not None:
            calls.append((key, form, rows))
        return speeds.get(form, {}).get(rows, 1.0) * (1 + 0.03 * float(torch.rand(1, generator=gen)))
    return time_it


def groups(model) -> list[FusedGroup]:
    return list({id(m.group): m.group for m in model.modules() if hasattr(m, "group")}.values())


def int8_model():
    model = tiny_model("llama")
    quantize_model(model, "int8", calibration=list(range(3, 200)))
    return model


def test_the_fastest_form_on_the_given_timing_serves_fp32():
    slow = {1: 3.0, 4: 3.0, 16: 3.0, 64: 3.0}
    fast_mkl = {"mkl": {1: 0.3, 4: 0.3, 16: 0.3, 64: 0.3}}
    model = tiny_model("llama")
    line = choice.serve(model, machine=HERE, timer=timer(fast_mkl))
    mkl_usable = all(type(g) is MklGroup for g in groups(model))
    assert mkl_usable == line.startswith("mkl for 5 fp32 shapes"), line
    # oneDNN faster: every group prepacked (packed is always batch-invariant, padded if need be)
    model = tiny_model("llama")
    line = choice.serve(model, machine=HERE, timer=timer({"mkl": slow, "dot": slow}))
    assert all(type(g) is PackedGroup for g in groups(model)) and line.startswith("packed for 5 fp32 shapes"), line


@pytest.mark.parametrize("built", [True, False])
def test_fp32_ties_go_to_llmos_own_product_where_it_is_built(tmp_path, monkeypatch, built):
    from llmos.drivers import ext
    from llmos.drivers.packed import DotGroup
    if built and not ext.available():
        pytest.skip("the fused ops are not built here")
    if not built:
        monkeypatch.setattr(ext, "available", lambda: False)
    model = tiny_model("llama")
    line = choice.serve(model, tmp_path, machine=HERE, timer=timer({"packed": {1: 0.95, 4: 0.95, 16: 0.95, 64: 0.95}}))
    whys = [c["why"] for c in json.loads((tmp_path / FILE).read_text())["machines"][HERE.key()]["shapes"].values()]
    assert len(whys) == 5 and not any("excluded" in w for w in whys)  # an unbuilt default is not "excluded"
    if built:  # oneDNN 5% faster: under the margin, the default (dot) stays
        assert all(type(g) is DotGroup for g in groups(model)) and line.startswith("dot for 5 fp32 shapes"), line
        assert all(w.startswith("dot: packed was faster by only") for w in whys), whys
    else:  # not built: oneDNN's is the default
        assert all(type(g) is PackedGroup for g in groups(model)), line


def test_a_small_gain_does_not_move_off_the_default():
    model = int8_model()
    line = choice.serve(model, machine=HERE, timer=timer({"int_mm": {1: 0.95, 4: 0.95, 16: 0.95, 64: 0.95}}))
    assert all(type(g) is Int8Group and g.packed is not None for g in groups(model)), line  # qlinear
    model = int8_model()
    choice.serve(model, machine=HERE, timer=timer({"int_mm": {1: 0.7, 4: 0.7, 16: 0.7, 64: 0.7}}))
    assert all(type(g) is Int8Group and g.packed is None for g in groups(model))  # int_mm


def test_int8_splits_by_rows_and_every_row_count_gives_the_same_bits():
    model, ref = int8_model(), None
    ref = copy.deepcopy(model)  # unprepacked: _int_mm, transformers' generate() runs this
    line = choice.serve(model, machine=HERE, timer=timer({"int_mm": {1: 0.5, 4: 0.5, 16: 1.5, 64: 1.5},
                                                          "dot": {1: 2.0, 4: 2.0, 16: 2.0, 64: 2.0}}))
    assert "int_mm to 4 rows, qlinear above" in line and "both forms kept" in line
    served = groups(model)
    assert all(isinstance(g, choice.RowsGroup) and g.limits == [4, None] for g in served)
    with torch.inference_mode():
        assert torch.equal(model(IDS).logits, ref(IDS).logits)
        for g in served:
            x = torch.randn(1, 20, g.forms[0].weight_t.shape[0])
            full = g.compute(x)
            for n in (1, 3, 4, 5, 16):  # both sides of the split
                assert torch.equal(g.compute(x[:, :n]), full[:, :n])


def test_fp32_outputs_are_the_same_model_whatever_form_serves(tokenizer):
    plain = tiny_model("qwen2")  # q/k/v carry biases
    with torch.no_grad():
        want = plain(IDS).logits
    for speeds in ({"mkl": {1: 0.3, 4: 0.3, 16: 0.3, 64: 0.3}}, {"mkl": {1: 3.0, 4: 3.0, 16: 3.0, 64: 3.0}}):
        model = copy.deepcopy(plain)
        choice.serve(model, machine=HERE, timer=timer(speeds))
        with torch.inference_mode():
            assert torch.allclose(model(IDS).logits, want, atol=1e-5)
            for g in groups(model):  # a row never depends on its batch, padded or not
                x = torch.randn(1, 40, g.shape[1])
                full = g.compute(x)
                for n in (1, 2, 3, 5, 11, 12, 17):
                    assert torch.equal(g.compute(x[:, :n]), full[:, :n])
        twin = copy.deepcopy(model)  # the trainer's twin: plain Linear layers, same weights
        assert all(type(twin.get_submodule(n)) is torch.nn.Linear for n, m in plain.named_modules()
                   if type(m) is torch.nn.Linear)


def test_the_cache_is_hit_on_a_second_load_and_missed_on_another_machine(tmp_path):
    calls: list = []
    t = timer({"int_mm": {1: 0.5, 4: 0.5, 16: 0.5, 64: 0.5}}, calls)
    first = choice.serve(int8_model(), tmp_path, machine=HERE, timer=t)
    assert calls and "[measured in" in first
    measured = len(calls)
    second = choice.serve(int8_model(), tmp_path, machine=HERE, timer=t)
    assert len(calls) == measured and second.endswith("[cached]") and second.split(" [")[0] == first.split(" [")[0]
    data = json.loads((tmp_path / FILE).read_text())
    entry = data["machines"][HERE.key()]
    assert entry["cpu"] == HERE.cpu and set(entry["shapes"]) == {"int8 128x64", "int8 64x64", "int8 256x64",
                                                                  "int8 64x128", "int8 384x64"}
    for other in (Machine("Other CPU", HERE.torch, 2), Machine(HERE.cpu, "2.1.0", 2), Machine(HERE.cpu, HERE.torch, 1)):
        before = len(calls)
        assert "[measured in" in choice.serve(int8_model(), tmp_path, machine=other, timer=t)
        assert len(calls) > before
    assert len(json.loads((tmp_path / FILE).read_text())["machines"]) == 4  # each machine kept its own
    # an fp32 load of the same model measures its own shapes
    before = len(calls)
    choice.serve(tiny_model("llama"), tmp_path, machine=HERE, timer=t)
    assert len(calls) > before


def test_a_broken_cache_file_means_measuring_again(tmp_path):
    (tmp_path / FILE).write_text("{not json")
    calls: list = []
    line = choice.serve(int8_model(), tmp_path, machine=HERE, timer=timer({}, calls))
    assert calls and "[measured in" in line and json.loads((tmp_path / FILE).read_text())["version"]


class Wobbly(FusedGroup):
    """A form that rounds differently when fewer than `below` rows share a call."""

    def __init__(self, below: int, width: int = 8) -> None:
        super().__init__(1)
        self.below, self.min_rows = below, 1
        self.w = torch.randn(width, width)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] < self.min_rows:
            pad = torch.cat([rows, rows.new_zeros(self.min_rows - rows.shape[0], rows.shape[1])])
            return self.compute(pad)[: rows.shape[0]].view(*x.shape[:-1], -1)
        y = rows @ self.w
        return (y + 1e-3 if rows.shape[0] < self.below else y).view(*x.shape[:-1], -1)


def test_the_probe_pads_a_form_that_changes_at_few_rows_and_drops_one_that_changes_at_many():
    p = measure.probe({"steady": Wobbly(0), "few": Wobbly(6), "many": Wobbly(100)}, 8, "fp32")
    assert p.pads == {"steady": 1, "few": 6, "many": None}
    assert p.changed["few"] == [1, 2, 3, 4, 5] and p.changed["steady"] == []
    c = choice.decide(("many", "few"), p.pads, identical=False, ratios={"few": [1.0] * 4})
    assert c.table == [[None, "few"]] and "many excluded" in c.why


def test_decide_margins_and_splits():
    pads = {"qlinear": 1, "int_mm": 1}
    r = {"qlinear": [1.0] * 4, "int_mm": [0.85, 0.85, 1.2, 1.2]}
    assert choice.decide(choice.FORMS["int8"], pads, identical=False, ratios=r).table == [[None, "qlinear"]]
    # identical forms: int_mm wins its buckets by 15%, not the 20% a second copy must pay for
    assert choice.decide(choice.FORMS["int8"], pads, identical=True, ratios=r).table == [[None, "qlinear"]]
    r["int_mm"] = [0.6, 0.7, 1.3, 1.4]  # a mean gain of 6%: one form alone would stay qlinear
    assert choice.decide(choice.FORMS["int8"], pads, identical=True, ratios=r).table == [[4, "int_mm"], [None, "qlinear"]]
    assert choice.decide(choice.FORMS["int8"], pads, identical=False, ratios=r).table == [[None, "qlinear"]]


def test_the_cpu_driver_reports_its_kernels(tmp_path, tokenizer):
    from llmos.drivers.cpu import CPUDriver

    d = CPUDriver(threads=2)
    info = d.adopt("tiny", tiny_model("llama"), cache_dir=str(tmp_path))
    assert " fp32 shape" in info.kernels and "[measured in" in info.kernels
    assert (tmp_path / FILE).is_file()
    again = d.adopt("tiny2", tiny_model("llama"), cache_dir=str(tmp_path))
    assert "[cached]" in again.kernels
    with torch.inference_mode():
        a = d.runners["tiny"].model(IDS).logits
        b = d.runners["tiny2"].model(IDS).logits
    assert torch.equal(a, b)


@pytest.mark.parametrize("key", ["fp32 960x576", "int8 49152x576"])
def test_shape_keys_name_the_mode_and_the_weights(key):
    mode, shape = key.split()
    out, inp = (int(v) for v in shape.split("x"))
    lin = torch.nn.Linear(inp, out, bias=False)
    g = MklGroup([lin], set()) if mode == "fp32" else Int8Group([lin])
    assert choice.shape_key(g) == key


def test_llmos_models_shows_the_choice_and_a_restart_reads_it_from_the_store(tmp_path, tiny_model_dir):
    """Through the daemon: the kernels serving the model show in `llmos models`; the choice is
    kept in the model store, so the next boot on the same state dir measures nothing."""
    import subprocess
    import sys

    from daemon import start_daemon

    state = tmp_path / "state"
    for boot, when in ((1, "measured in"), (2, "[cached]")):
        d = start_daemon(state, str(tiny_model_dir))
        try:
            r = subprocess.run([sys.executable, "-m", "llmos.shell.cli", "models", "--json"], capture_output=True,
                               text=True, timeout=60, env=d.env)
            kernels = json.loads(r.stdout)["loaded"][0]["kernels"]
            assert when in kernels and "fp32 shape" in kernels, (boot, kernels)
            r = subprocess.run([sys.executable, "-m", "llmos.shell.cli", "models"], capture_output=True, text=True,
                               timeout=60, env=d.env)
            assert "kernels of " in r.stdout and when in r.stdout
        finally:
            d.stop_cleanly()
    cached = list((state / "models" / ".cache").glob(f"*/{FILE}"))
    assert len(cached) == 1 and oct(cached[0].parent.stat().st_mode & 0o777) == "0o700"


def test_llmos_own_kernel_serves_fp32_where_it_is_the_fastest():
    from llmos.drivers import ext
    from llmos.drivers.packed import DotGroup
    if not ext.available():
        pytest.skip("the fused ops are not built here: the dot form is not offered")
    plain = tiny_model("qwen2")  # q/k/v carry biases
    with torch.no_grad():
        want = plain(IDS).logits
    model = copy.deepcopy(plain)
    line = choice.serve(model, machine=HERE, timer=timer({"dot": {1: 0.4, 4: 0.6, 16: 0.9, 64: 1.0}}))
    assert all(type(g) is DotGroup for g in groups(model)) and line.startswith("dot for 5 fp32 shapes (x2.") and "vs packed at 1 row" in line, line
    with torch.inference_mode():
        assert torch.allclose(model(IDS).logits, want, atol=1e-5)
    twin = copy.deepcopy(model)  # the trainer's twin: plain Linear layers with the same weights
    for name, m in plain.named_modules():
        if type(m) is torch.nn.Linear:
            assert type(twin.get_submodule(name)) is torch.nn.Linear
            assert torch.equal(twin.get_submodule(name).weight, m.weight)


def test_llmos_own_int8_kernel_serves_where_it_is_the_fastest_with_the_same_bits():
    from llmos.drivers import ext
    if not (ext.available() and torch.ops.llmos.int8_dot_fast()):
        pytest.skip("the fused ops are not built here with VNNI: the int8 dot form is not offered")
    model = int8_model()
    ref = copy.deepcopy(model)  # unprepacked: _int_mm, as transformers' generate() runs it
    line = choice.serve(model, machine=HERE, timer=timer({"dot": {1: 0.5, 4: 0.5, 16: 0.6, 64: 1.2}}))
    assert re.match(r"dot for 5 int8 shapes \(x(1\.9|2\.0)\d vs qlinear at 1 row", line), line
    served = groups(model)
    assert all(type(g) is Int8Group and g.dot is not None for g in served)
    with torch.inference_mode():
        assert torch.equal(model(IDS).logits, ref(IDS).logits)
    # slower than oneDNN only above 16 rows, by more than the margin: the rows split
    model = int8_model()
    line = choice.serve(model, machine=HERE, timer=timer({"dot": {1: 0.5, 4: 0.5, 16: 0.6, 64: 2.0},
                                                          "int_mm": {64: 3.0}}))
    assert "dot to 16 rows, qlinear above" in line and "both forms kept" in line, line
    with torch.inference_mode():
        assert torch.equal(model(IDS).logits, ref(IDS).logits)
