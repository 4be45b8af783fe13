"""Model versions: content-addressed blobs, manifests, NAME:TAG tags, presets, defaults from a
manifest file, removal, fine-tunes as versions with lineage, and the journal by digest."""
import json

import pytest

from llmos.drivers.cpu import CPUDriver
from llmos.kernel import (FailedPrecondition, InvalidArgument, Kernel, KernelConfig, NotFound, PermissionDenied, ROOT,
                          SpawnSpec, State, StopRules)
from llmos.kernel.models import ModelStore
from llmos.kernel.users.cred import Cred

ALICE, BOB = Cred("alice"), Cred("bob")
CHAT = [{"role": "user", "content": "Hello there"}]


@pytest.fixture
def dirs(tmp_path, tokenizer):
    from tiny import tiny_model

    out = {}
    for name, seed in (("tiny-llama", 0), ("other", 1)):
        path = tmp_path / "src" / name
        tiny_model("llama", seed=seed).save_pretrained(path)
        tokenizer.save_pretrained(path)
        out[name] = path
    return out


@pytest.fixture
def kernel(tmp_path, dirs):
    k = Kernel(CPUDriver(), KernelConfig(kv_pages=64), ModelStore(tmp_path / "store"))
    k.load_model(ROOT, str(dirs["tiny-llama"]))
    return k


def blobs(k) -> set[str]:
    return {p.name for p in (k.store.root / "blobs").iterdir()}


def run(k, cred, model, n=6, **kw):
    p = k.spawn(cred, SpawnSpec(model, **({"prompt": "Hello world"} | kw)) if "stop" in kw else
                SpawnSpec(model, stop=StopRules(max_tokens=n, ignore_eos=True), **({"prompt": "Hello world"} | kw)))
    k.run_until_idle()
    return p


def test_a_loaded_source_is_a_version_made_of_blobs(kernel, dirs):
    k = kernel
    v = k.store.lookup("tiny-llama")
    assert v is not None and v.kind == "base" and "model.safetensors" in v.files and "config.json" in v.files
    assert k.models["tiny-llama"].digest == v.digest == k.store.lookup("tiny-llama:latest").digest
    held = blobs(k)
    assert {f"sha256-{d[7:]}" for d in v.files.values()} == held
    q = k.load_model(ROOT, "tiny-llama", quantize="int8")  # a version of its own, sharing the base's bytes
    qv = k.store.lookup("tiny-llama:int8")
    assert q.name == "tiny-llama:int8" and qv.kind == "quantized" and qv.parent == v.digest and not qv.files
    assert blobs(k) == held
    k.unload_model(ROOT, "tiny-llama:int8")
    assert k.load_model(ROOT, "tiny-llama:int8").digest == qv.digest  # by its tag now
    # The same bytes are the same version, whatever the folder's name.
    assert k.store.import_source(str(dirs["tiny-llama"])).digest == v.digest


def test_a_tag_shares_the_weights_and_serves_as_a_preset(kernel):
    k = kernel
    e = k.tag_model(ROOT, "tiny-llama", "mine:v1")
    assert e.ref == "mine:v1" and e.version.digest == k.models["tiny-llama"].digest
    m = k.load_model(ALICE, "mine:v1")  # no new weights: anyone who sees it may load it
    base = k.models["tiny-llama"]
    assert m.preset_of == "tiny-llama" and m.memory is base.memory and m.scheduler is base.scheduler
    assert run(k, ROOT, "mine:v1").out_tokens == run(k, ROOT, "tiny-llama").out_tokens
    with pytest.raises(PermissionDenied, match="only an admin may load"):
        k.load_model(ALICE, "tiny-llama", quantize="int8")  # new weights in memory
    with pytest.raises(FailedPrecondition, match="preset"):
        k.unload_model(ROOT, "tiny-llama")


def test_a_manifest_gives_defaults_that_requests_override(kernel):
    k = kernel
    e = k.create_model(ALICE, "pirate", 'from = "tiny-llama"\nsystem = "You are a pirate."\nstop = ["zzz"]\n'
                                        '[parameters]\nmax_tokens = 5\ntemperature = 0.8\ntop_k = 3\n')
    assert e.loaded and e.owner == "alice" and e.version.made_from == "tiny-llama"
    m = k.models["pirate"]
    p = k.spawn(ALICE, SpawnSpec("pirate", messages=CHAT, unset=("temperature", "top_k", "top_p", "max_tokens")))
    assert (p.stop.max_tokens, p.sampling.temperature, p.sampling.top_k, p.stop.stop) == (5, 0.8, 3, ["zzz"])
    assert p.tokens == m.codec.encode_chat([{"role": "system", "content": "You are a pirate."}, *CHAT])
    q = k.spawn(ALICE, SpawnSpec("pirate", messages=[{"role": "system", "content": "Be brief."}, *CHAT],
                                 stop=StopRules(max_tokens=3), unset=("top_p",)))
    assert (q.stop.max_tokens, q.sampling.temperature, q.sampling.top_k) == (3, 0.0, 0)  # the request's own
    assert q.tokens == m.codec.encode_chat([{"role": "system", "content": "Be brief."}, *CHAT])
    k.run_until_idle()
    assert len(q.out_tokens) <= 3 and len(p.out_tokens) <= 5
    assert "pirate" not in k.list_models(BOB)[0] and all(x.ref != "pirate" for x in k.list_models(BOB)[1])
    with pytest.raises(NotFound, match="not loaded"):
        k.spawn(BOB, SpawnSpec("pirate", prompt="x"))  # another user's model does not exist for bob
    shown = k.show_model(ALICE, "pirate")[1]
    assert 'from = "tiny-llama"' in shown and 'system = "You are a pirate."' in shown and "max_tokens = 5" in shown


def test_a_manifest_template_and_grammar(kernel):
    k = kernel
    k.create_model(ROOT, "yesno", 'from = "tiny-llama"\ntemplate = "{% for m in messages %}<{{ m.content }}>'
                                  '{% endfor %}"\n[grammar]\nchoices = ["yes", "no"]\n')
    m = k.models["yesno"]
    assert m.codec.encode_chat(CHAT) == m.codec.encode("<Hello there>")
    assert k.models["tiny-llama"].codec.encode_chat(CHAT) != m.codec.encode_chat(CHAT)  # the base keeps its own
    p = run(k, ROOT, "yesno", stop=StopRules(max_tokens=8))
    assert p.stdout in ("yes", "no")


def test_rm_collects_blobs_only_when_nothing_refers_to_them(kernel, dirs):
    k = kernel
    k.load_model(ROOT, str(dirs["other"]))
    other = k.store.lookup("other")
    k.tag_model(ROOT, "other", "copy")
    k.remove_model(ROOT, "copy")
    assert all(f"sha256-{d[7:]}" in blobs(k) for d in other.files.values())
    with pytest.raises(NotFound, match="no model 'copy'"):
        k.tag_model(ROOT, "copy", "again")
    # Loaded and idle: rm unloads it, and the weights only it used go.
    v, removed, freed = k.remove_model(ROOT, "other")
    assert "other" not in k.models and removed >= 1 and freed > 0
    kept = {f"sha256-{d[7:]}" for d in k.store.lookup("tiny-llama").files.values()}
    assert blobs(k) == kept  # the tokenizer and config blobs the two shared stay; other's weights went
    assert f"sha256-{other.files['model.safetensors'][7:]}" not in kept
    assert not (k.store.root / "manifests" / f"{other.digest[7:]}.json").exists()


def test_a_tag_in_use_cannot_change(kernel):
    k = kernel
    k.tag_model(ROOT, "tiny-llama", "t")
    k.load_model(ROOT, "t")
    k.spawn(ROOT, SpawnSpec("t", prompt="Hello", stop=StopRules(max_tokens=50, ignore_eos=True)))
    with pytest.raises(FailedPrecondition, match="in use by 1 live process"):
        k.remove_model(ROOT, "t")
    with pytest.raises(FailedPrecondition, match="in use by 1 live process"):
        k.tag_model(ROOT, "tiny-llama", "t")


@pytest.mark.parametrize("ref, text, error, match", [
    ("bad name", 'from = "tiny-llama"', InvalidArgument, "not a valid name"),
    ("ok:bad/tag", 'from = "tiny-llama"', InvalidArgument, "not a valid tag"),
    ("ok", 'from = "tiny-llama"\ncolour = "red"', InvalidArgument, "unknown key 'colour'"),
    ("ok", 'from = "tiny-llama"\n[parameters]\ntemperature = 500', InvalidArgument, "temperature must be in"),
    ("ok", 'from = "tiny-llama"\n[parameters]\nmax_tokens = "lots"', InvalidArgument, "max_tokens must be a int"),
    ("ok", 'system = "x"', InvalidArgument, "needs `from`"),
    ("ok", 'from = "nothing-here"', NotFound, "no model 'nothing-here'"),
    ("ok", 'from = "/etc"', NotFound, "only an admin may name a directory"),
    ("ok", 'from = "tiny-llama"\nprune = 2.0', InvalidArgument, "prune .* must be in"),
    ("ok", 'from = "tiny-llama"\n[grammar]\nregex = "a"\nchoices = ["b"]', InvalidArgument, "exactly one of"),
    ("ok", "from = ", InvalidArgument, "not valid TOML"),
    ("ok", 'from = "tiny-llama"\nsystem = "' + "x" * (300 << 10) + '"', InvalidArgument,
     "over the limit of 262144"),
    ("ok", 'from = "tiny-llama"\ntemplate = "' + "x" * (70 << 10) + '"', InvalidArgument,
     "template is 71680 characters, over the limit of 65536"),
    ("ok", 'from = "tiny-llama"\nstop = ["' + '", "'.join("s" * 20) + '"]', InvalidArgument, "at most 16"),
    ("ok", 'from = "tiny-llama"\n[parameters]\ntop_k = -1', InvalidArgument, "top_k must be 0"),
])
def test_bad_manifests_are_refused_with_the_reason(kernel, ref, text, error, match):
    with pytest.raises(error, match=match):
        kernel.create_model(ALICE, ref, text)
    assert all(e.ref != "ok" for e in kernel.list_models(ROOT)[1])


def test_names_belong_to_their_owner(kernel):
    k = kernel
    k.tag_model(ALICE, "tiny-llama", "alices")
    with pytest.raises(PermissionDenied, match="belongs to another user"):
        k.tag_model(BOB, "tiny-llama", "alices:v2")
    with pytest.raises(NotFound):
        k.remove_model(BOB, "alices")  # invisible to bob
    with pytest.raises(PermissionDenied, match="belongs to an admin"):
        k.remove_model(ALICE, "tiny-llama")
    with pytest.raises(PermissionDenied, match="belongs to an admin"):
        k.create_model(ALICE, "tiny-llama:mine", 'from = "tiny-llama"')
    k.remove_model(ALICE, "alices")


def test_a_lora_over_other_weights_is_refused(kernel):
    k = kernel
    with pytest.raises(InvalidArgument, match="LoRA model: it cannot be quantized"):
        from llmos.kernel.models import versions
        lora = k.store.registry.put("lora", {"adapter_config.json": next(iter(k.store.lookup("tiny-llama").files.values()))},
                                    k.store.lookup("tiny-llama"), "tiny-llama")
        versions.derive(k, ROOT, lora, "x", "int8", 0.0, 0.0)


def test_a_fine_tune_is_a_version_with_lineage(kernel):
    from llmos.kernel.workloads.train import TrainSpec

    k = kernel
    data = b"\n".join(json.dumps({"text": f"the quick brown fox {i}"}).encode() for i in range(8))
    from llmos.kernel.workloads import train

    p = train.start(k, ALICE, "tiny-llama", TrainSpec(dataset="notes.jsonl", steps=3, rank=4, batch=2,
                                                       checkpoint_every=0, max_len=32), data)
    k.run_until_idle()
    assert p.state == State.EXITED, p.reason
    v = k.store.lookup("tiny-llama+notes")
    assert v.kind == "lora" and v.owner == "alice" and v.parent == k.store.lookup("tiny-llama").digest
    assert set(v.files) >= {"adapter_config.json", "adapter_model.safetensors"}
    lin = v.lineage
    assert lin["base"] == "tiny-llama" and len(lin["dataset_sha256"]) == 64 and lin["hyperparameters"]["rank"] == 4
    assert lin["final_loss"] == pytest.approx(p.results["loss"], rel=1e-5)
    assert k.models["tiny-llama+notes"].digest == v.digest and f"version {v.short}" in p.reason
    assert any(e.ref == "tiny-llama+notes" and e.owner == "alice" for e in k.list_models(ALICE)[1])


def test_a_restart_after_a_retag_resumes_on_the_weights_it_ran_on(tmp_path, dirs):
    from conftest import Reference
    from transformers import AutoModelForCausalLM

    from llmos.journal_db import attach

    store = tmp_path / "store"
    k = Kernel(CPUDriver(), KernelConfig(kv_pages=64), ModelStore(store))
    k.load_model(ROOT, str(dirs["tiny-llama"]), name="m")
    journal = attach(k, tmp_path / "journal.db")
    p = k.spawn(ROOT, SpawnSpec("m", prompt="Hello world", stop=StopRules(max_tokens=12, ignore_eos=True)))
    for _ in range(4):
        k.step()
    assert journal.flush()
    k.listeners.clear()
    journal.close()
    # While it is down, m is re-tagged to other weights: the journal names the version by digest.
    s2 = ModelStore(store)
    s2.registry.tag("m", s2.import_source(str(dirs["other"])))
    k2 = Kernel(CPUDriver(), KernelConfig(kv_pages=64), s2)
    k2.load_model(ROOT, "m")  # the daemon's model now: the other weights
    attach(k2, tmp_path / "journal.db")
    q = k2.procs[p.pid]
    assert q.model == f"m@{k.models['m'].digest[7:19]}" and q.state != State.KILLED
    k2.run_until_idle()
    ref = Reference(AutoModelForCausalLM.from_pretrained(dirs["tiny-llama"]))
    assert q.out_tokens == ref.greedy(q.tokens[:q.usage.prompt_tokens], 12)


# --- through llmosd: the shell and the SDK over a real socket --------------------------------------------
def test_the_shell_creates_shows_tags_and_removes_a_version(llmosd, tmp_path):
    from test_shell import llmos, one_line_error

    from llmos.syscalls.sdk.errors import SyscallError

    f = tmp_path / "terse.toml"
    f.write_text('from = "tiny-llama"\nsystem = "Be terse."\n[parameters]\nmax_tokens = 3\n')
    r = llmos(llmosd, "create", "tv-terse", "-f", str(f))
    assert r.returncode == 0 and r.stdout.startswith("created tv-terse (version ") and "; loaded" in r.stdout, r
    try:
        stored = json.loads(llmos(llmosd, "models", "--json").stdout)
        mine = next(v for v in stored["versions"] if v["name"] == "tv-terse")
        assert mine["loaded"] and mine["kind"] == "base" and mine["made_from"] == "tiny-llama"
        assert any(m["name"] == "tv-terse" and m["preset_of"] == "tiny-llama" for m in stored["loaded"])
        out = json.loads(llmos(llmosd, "run", "tv-terse", "Hello", "--chat", "--ignore-eos", "--json").stdout)
        assert out["proc"]["usage"]["generated_tokens"] == 3  # the manifest's max_tokens
        out = json.loads(llmos(llmosd, "run", "tv-terse", "Hello", "--chat", "--ignore-eos", "-n", "5",
                               "--json").stdout)
        assert out["proc"]["usage"]["generated_tokens"] == 5  # the request's own wins
        shown = llmos(llmosd, "show", "tv-terse").stdout
        assert 'system = "Be terse."' in shown and "max_tokens = 3" in shown and mine["digest"] in shown
        assert llmos(llmosd, "tag", "tv-terse", "tv-terse:v2").stdout.startswith("tagged tv-terse:v2 as version")
        r = llmos(llmosd, "rm", "tv-terse:v2")  # (it may collect what earlier tests left untagged)
        assert r.returncode == 0 and r.stdout.startswith(f"removed tv-terse:v2 (version {mine['digest'][7:19]})")
        assert llmos(llmosd, "show", "tv-terse").returncode == 0  # the version stays: tv-terse names it
        bad = tmp_path / "bad.toml"
        bad.write_text('from = "tiny-llama"\nflavour = 1\n')
        r = llmos(llmosd, "create", "tv-bad", "-f", str(bad))
        one_line_error(r)
        assert "unknown key 'flavour'" in r.stderr
        r = llmos(llmosd, "rm", "tv-nothing")
        one_line_error(r)
        assert "no model 'tv-nothing'" in r.stderr
        with llmosd.client() as c:
            for call, code in ((lambda: c.create("bad name!", "from = 'tiny-llama'"), "invalid_argument"),
                               (lambda: c.tag("tv-nothing", "x"), "not_found"),
                               (lambda: c.show("tv-terse:no/such"), "invalid_argument"),
                               (lambda: c.create("tv-x", "from = 'no-such-model'"), "not_found")):
                with pytest.raises(SyscallError) as e:
                    call()
                assert e.value.code == code, e.value
    finally:
        llmos(llmosd, "unload", "tv-terse")
        llmos(llmosd, "rm", "tv-terse")
    assert all(v["name"] != "tv-terse" for v in json.loads(llmos(llmosd, "models", "--json").stdout)["versions"])


def test_users_never_see_paths_on_the_daemons_disk(kernel, dirs):
    k = kernel
    where = str(dirs["tiny-llama"].resolve())
    mine = [e for e in k.list_models(ALICE)[1] if e.ref == "tiny-llama"]
    assert mine and mine[0].version.lineage["source"] != where and where not in k.show_model(ALICE, "tiny-llama")[1]
    assert next(e for e in k.list_models(ROOT)[1] if e.ref == "tiny-llama").version.lineage["source"] == where
    assert where in k.show_model(ROOT, "tiny-llama")[1]


def test_a_source_that_fails_to_load_leaves_no_tag(kernel, dirs, tmp_path):
    import shutil

    bad = tmp_path / "broken"
    shutil.copytree(dirs["other"], bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(InvalidArgument, match="no .safetensors weights"):
        kernel.load_model(ROOT, str(bad))
    (bad / "config.json").write_text("{not json")
    shutil.copy(dirs["other"] / "model.safetensors", bad / "model.safetensors")
    with pytest.raises(InvalidArgument, match="cannot load the model"):
        kernel.load_model(ROOT, str(bad))
    assert kernel.store.lookup("broken") is None and "broken" not in kernel.models


def test_collection_spares_an_import_in_flight(kernel, dirs):
    k = kernel
    reg = k.store.registry
    with reg.importing():
        v = k.store.import_source(str(dirs["other"]))  # imported, not yet tagged
        assert reg.collect(set()) == (0, 0)
    assert all(reg.blob(d).exists() for d in v.files.values())
    removed, freed = reg.collect({m.digest for m in k.models.values()})
    assert removed == 1 and freed > 0 and not reg.blob(v.files["model.safetensors"]).exists()
