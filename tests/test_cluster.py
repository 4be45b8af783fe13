"""A Ray cluster of daemons (#17): `llmosd --cluster ADDRESS` on a real local multi-node Ray
cluster (ray.cluster_utils.Cluster: a head and two CPU nodes, every one bound to 127.0.0.1).
Placement across nodes, prefix-aware routing, migration with a reader attached, draining a
node, a node killed mid-generation, and a head that restarts and re-attaches; each greedy
output equal to transformers' generate(). Nothing of Ray is left behind."""
import os
import signal
import time

import psutil
import pytest

from llmos.cluster import LocalCluster  # before ray: it keeps 127.0.0.1 addresses as given

ray = pytest.importorskip("ray")

from daemon import start_daemon  # noqa: E402

MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster([1, 1]) as c:
        yield c
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if c.tmp in " ".join(p.info["cmdline"] or [])]
    assert not left and not os.path.exists(c.tmp)


def start_head(cluster, state_dir, tiny_model_dir):
    return start_daemon(state_dir, str(tiny_model_dir), "--cluster", cluster.address, timeout=300)


@pytest.fixture(scope="module")
def head(cluster, tmp_path_factory, tiny_model_dir):
    state = tmp_path_factory.mktemp("cluster-head")
    d = start_head(cluster, state, tiny_model_dir)
    box = {"daemon": d}
    yield box
    box["daemon"].stop_cleanly()


@pytest.fixture(scope="module")
def ref(tiny_model_dir):
    from conftest import Reference
    from transformers import AutoModelForCausalLM
    return Reference(AutoModelForCausalLM.from_pretrained(tiny_model_dir))


@pytest.fixture
def c(head):
    with head["daemon"].client(timeout=120) as client:
        yield client


def expected(ref, tokenizer, prompt, n):
    return tokenizer.decode(ref.greedy(tokenizer(prompt)["input_ids"], n), skip_special_tokens=True)


def wait_tokens(c, pid, n, timeout=120):
    deadline = time.monotonic() + timeout
    while c.stat(pid).usage.generated_tokens < n and time.monotonic() < deadline:
        time.sleep(0.01)


def nodes(c):
    return [d for d in (m.devices for m in c.models().loaded if m.name == MODEL)][0][1:]


def test_every_node_runs_a_kernel_with_the_model(c):
    devs = c.devices()
    assert len(devs) == 3 and devs[0].node == "" and all(d.node.startswith("node-") for d in devs[1:])
    assert len(nodes(c)) == 2 and all(n.startswith("node-") and n.endswith("/cpu:0") for n in nodes(c))


def test_placement_spreads_across_nodes_and_outputs_match(c, ref, tokenizer):
    prompts = [f"Node process {i}" for i in range(3)]
    # long enough to be still running when the next one is placed (a tiny model's 16 tokens are not)
    pids = [c.spawn(MODEL, p, max_tokens=160, ignore_eos=True) for p in prompts]
    assert sorted(c.stat(pid).device for pid in pids) == sorted(["cpu:0", *nodes(c)])
    for pid, prompt in zip(pids, prompts):
        r = c.wait(pid)
        assert r.reason == "length" and r.output == expected(ref, tokenizer, prompt, 160)


def test_prefix_aware_routing_across_nodes(c, ref, tokenizer):
    system = [" ".join(f"House rule {i}.{j}." for j in range(12)) for i in range(3)]

    def ask(i, q):
        return [{"role": "system", "content": system[i]}, {"role": "user", "content": q}]
    long = [c.spawn(MODEL, messages=ask(i, "Begin"), max_tokens=400, ignore_eos=True) for i in range(3)]
    homes = [c.stat(pid).device for pid in long]
    assert sorted(homes) == sorted(["cpu:0", *nodes(c)])
    for i in (2, 0, 1):
        pid = c.spawn(MODEL, messages=ask(i, "Again"), max_tokens=2, ignore_eos=True)
        assert c.stat(pid).device == homes[i]
        assert c.wait(pid).usage.cached_tokens > 0
    for pid in long:
        c.kill(pid, "KILL")


def test_migration_between_nodes_with_a_reader(c, ref, tokenizer):
    a, b = nodes(c)
    prompt = "A process that travels between machines"
    pid = c.spawn(MODEL, prompt, max_tokens=120, ignore_eos=True)
    wait_tokens(c, pid, 5)
    reader = c.read(pid)
    first = next(reader)
    hows = []
    for to, after in ((a, 70), (b, 80), ("cpu:0", 90), (a.split("/")[0], 100)):
        hows.append(c.migrate(pid, to).how)
        assert c.stat(pid).device.startswith(to)
        wait_tokens(c, pid, after)
    r = c.wait(pid)
    assert hows == ["tokens", "pages", "pages", "pages"]  # its KV pages go node to node through the head
    assert r.output == first.text + "".join(ch.text for ch in reader) == expected(ref, tokenizer, prompt, 120)


def test_draining_a_node(c, ref, tokenizer):
    a, _ = nodes(c)
    prompts = [f"Drain me {i}" for i in range(3)]
    pids = [c.spawn(MODEL, p, max_tokens=100, ignore_eos=True) for p in prompts]
    on_a = [pid for pid in pids if c.stat(pid).device == a]
    assert len(on_a) == 1
    moved = c.drain(a.split("/")[0])
    assert [m.pid for m in moved] == on_a and moved[0].device != a
    assert all(c.stat(pid).device != a for pid in pids)
    assert c.stat(c.spawn(MODEL, "Elsewhere", max_tokens=2)).device != a
    for pid, prompt in zip(pids, prompts):
        assert c.wait(pid).output == expected(ref, tokenizer, prompt, 100)
    c.drain(a.split("/")[0], undo=True)


def test_a_node_killed_mid_generation(cluster, c, ref, tokenizer):
    a, b = nodes(c)
    prompts = [f"Survive a dead node {i}" for i in range(3)]
    pids = [c.spawn(MODEL, p, max_tokens=150, ignore_eos=True) for p in prompts]
    (victim,) = [pid for pid in pids if c.stat(pid).device == b]
    wait_tokens(c, victim, 10)
    reader = c.read(victim)
    first = next(reader)
    node_id = b.split("/")[0].removeprefix("node-")
    (node,) = [n for n in cluster.nodes if n.node_id.startswith(node_id)]
    cluster.cluster.remove_node(node)
    rest = "".join(ch.text for ch in reader)
    for pid, prompt in zip(pids, prompts):
        r = c.wait(pid)
        assert (r.state, r.usage.generated_tokens) == ("exited", 150) and r.output == expected(ref, tokenizer, prompt, 150)
    assert first.text + rest == c.wait(victim).output
    assert c.stat(victim).device in ("cpu:0", a)
    assert b not in nodes(c)


def test_a_restarted_head_reattaches(cluster, head, tiny_model_dir, ref, tokenizer):
    d = head["daemon"]
    with d.client(timeout=120) as c:
        (a,) = nodes(c)
        prompt = "A process older than its head"
        pid = c.spawn(MODEL, prompt, max_tokens=300, ignore_eos=True)
        wait_tokens(c, pid, 20)
        c.kill(pid, "STOP")  # live across the restart, however fast the rest would run
        time.sleep(0.5)  # the journal commits every 50 ms: its spawn is on disk
    d.stop(signal.SIGKILL)  # a crash: the node's actor lives on, with its model loaded
    head["daemon"] = d = start_head(cluster, d.state_dir, tiny_model_dir)
    log = d.log.read_text()
    assert "node attached" in log and f"models_kept=['{MODEL}']" in log
    with d.client(timeout=120) as c:
        assert nodes(c) == [a]
        # Journaled, it is back under its pid, placed again: the node's kernel was as idle as the head's.
        assert (c.stat(pid).state, c.stat(pid).device) == ("stopped", a)
        c.kill(pid, "CONT")
        r = c.wait(pid)
        assert r.usage.generated_tokens == 300 and r.output == expected(ref, tokenizer, prompt, 300)
        q = c.spawn(MODEL, "On the re-attached node", max_tokens=200, ignore_eos=True)
        busy = c.spawn(MODEL, "And here", max_tokens=200, ignore_eos=True)
        assert {c.stat(q).device, c.stat(busy).device} == {"cpu:0", a}
        for x in (q, busy):
            c.wait(x)


@pytest.mark.parametrize("compile", [False, True])
def test_a_node_kernel_takes_the_heads_compile_setting(tmp_path, compile):
    import torch

    from llmos.cluster import NodeKernel
    from llmos.kernel import KernelConfig
    node = NodeKernel("node-test", "cpu", torch.get_num_threads(), KernelConfig(), str(tmp_path), compile)
    try:  # llmosd --compile --cluster: the nodes' decode steps are compiled as the head's are
        assert node.server.kernel.driver.compile is compile
    finally:
        node.stop()
