"""Users in the kernel, as plain Python: Cred visibility, and each per-user quota refused or
enforced by the kernel itself (no daemon, no gRPC)."""
import time

import pytest

from llmos.kernel import NotFound, ROOT, ResourceExhausted, SpawnSpec
from llmos.kernel.users.cred import Cred
from llmos.kernel.errors import PermissionDenied
from llmos.kernel.proc import Process, StopRules
from llmos.kernel.users.quota import Quotas, UserLimits


def quota_kernel(make_kernel, **limits):
    k, _ = make_kernel(pages=256, page_size=4)
    k.quota.quotas = Quotas(UserLimits(**limits), {"root": UserLimits(), "bob": UserLimits(procs=5)})
    return k


def test_cred_sees_only_its_own_unless_admin():
    alice, root = Cred("alice"), Cred("root", admin=True)
    assert alice.sees("alice") and not alice.sees("bob") and root.sees("bob")
    with pytest.raises(NotFound, match="^no process with pid 7$"):
        alice.check_visible(7, "bob")
    assert alice.owner_for("") == "alice" and root.owner_for("bob") == "bob"
    with pytest.raises(PermissionDenied, match="only an admin may"):
        alice.owner_for("bob")
    with pytest.raises(PermissionDenied, match="only an admin may load models; user alice is not one"):
        alice.check("load")


def test_concurrent_processes(make_kernel):
    k = quota_kernel(make_kernel, procs=2)
    a = [k.spawn(ROOT, SpawnSpec("tiny", prompt="Hello", owner="alice", stop=StopRules(max_tokens=3))) for _ in range(2)]
    with pytest.raises(ResourceExhausted, match="^user alice is at their limit of 2 concurrent processes$"):
        k.spawn(ROOT, SpawnSpec("tiny", prompt="Hello", owner="alice"))
    with pytest.raises(ResourceExhausted, match="limit of 2 concurrent"):
        k.fork(ROOT, a[0].pid)
    k.spawn(ROOT, SpawnSpec("tiny", prompt="Hello", owner="bob"))  # per user
    k.spawn(ROOT, SpawnSpec("tiny", prompt="Hello", owner="root"))  # root has its own, unlimited
    k.run_until_idle()
    k.spawn(ROOT, SpawnSpec("tiny", prompt="Hello", owner="alice"))  # the first two have exited


def test_kv_pages_are_reserved_per_turn(make_kernel):
    k = quota_kernel(make_kernel, pages=16)  # 4 tokens a page: 64 tokens
    with pytest.raises(ResourceExhausted, match=r"needs up to 1[89] KV pages, over user alice's limit of 16"):
        k.spawn(ROOT, SpawnSpec("tiny", prompt="Hello", owner="alice", stop=StopRules(max_tokens=70)))
    p = k.spawn(ROOT, SpawnSpec("tiny", prompt="Hello", owner="alice", stop=StopRules(max_tokens=20), interactive=True))
    with pytest.raises(ResourceExhausted, match="user alice is at their limit of 16 KV pages: their live processes "
                                                r"reserve \d+ and this one needs up to \d+"):
        k.spawn(ROOT, SpawnSpec("tiny", prompt="Hello", owner="alice", stop=StopRules(max_tokens=40)))
    k.run_until_idle()  # p blocks after its turn, holding only its tokens
    q = k.spawn(ROOT, SpawnSpec("tiny", prompt="Hi", owner="alice", stop=StopRules(max_tokens=8)))
    with pytest.raises(ResourceExhausted, match="limit of 16 KV pages"):
        k.write(ROOT, p.pid, "Tell me more, much more")  # a new turn would reserve 20 more tokens
    k.run_until_idle()
    assert q.state.done
    k.write(ROOT, p.pid, "More")  # fits once q has exited


def test_tokens_per_minute_throttle_then_refuse(make_kernel):
    k = quota_kernel(make_kernel, tokens_per_min=12)
    p = k.spawn(ROOT, SpawnSpec("tiny", prompt="Hello world", owner="alice", stop=StopRules(max_tokens=30, ignore_eos=True)))
    other = k.spawn(ROOT, SpawnSpec("tiny", prompt="Hello world", owner="bob", stop=StopRules(max_tokens=30, ignore_eos=True)))
    for _ in range(200):
        if not k.has_work():
            break
        k.step()
    assert not k.has_work() and k.quota.holds_back(k.procs.values(), time.monotonic())
    assert p.num_computed == 12 and not p.state.done and other.state.done
    with pytest.raises(ResourceExhausted, match="^user alice is at their limit of 12 tokens per minute$"):
        k.spawn(ROOT, SpawnSpec("tiny", prompt="Hi", owner="alice"))
    for bucket in k.quota._spent["alice"]:  # a minute goes by
        bucket[0] -= 61
    assert k.has_work()
    k.run_until_idle()
    assert p.num_computed == 24


def test_scheduler_spends_the_allowance():
    from llmos.kernel.memory import MemoryManager
    from llmos.kernel.sched import SchedConfig, Scheduler

    mem = MemoryManager(num_pages=64, page_size=4, swap_pages=0)
    s = Scheduler(SchedConfig(token_budget=64), mem)
    a1, a2, b = (Process(pid=i, spec=SpawnSpec("m"), tokens=[i] * 10, owner=o, created=i)
                 for i, o in ((1, "a"), (2, "a"), (3, "b")))
    allowance = {"a": 12}
    plan = s.schedule([a1, a2, b], now=1.0, allowance=allowance)
    assert {p.pid: n for p, n in plan.runs} == {1: 10, 2: 2, 3: 10} and allowance == {"a": 0}


def test_quotas_from_the_config():
    from llmos.listeners import quotas
    from llmos.config import Config

    cfg = Config(quota_procs=4, quota_tokens_per_min=100, users={"carol": {"procs": 1}, "root": {"pages": 9},
                                                                 "dave": {"tokens_per_min": None}})
    q = quotas(cfg, ("root",))
    data = 256 << 20  # the default data quota
    assert q.limits("alice") == UserLimits(4, None, 100, data)
    assert q.limits("carol") == UserLimits(1, None, 100, data) and q.limits("dave") == UserLimits(4, None, None, data)
    assert q.limits("root") == UserLimits(None, 9, None, None)  # an admin: unlimited but for what is named


def test_task_work_is_charged_to_its_owner_and_held_back_at_the_limit(make_kernel, tokenizer):
    from llmos.kernel import Cred
    from llmos.kernel.text import TextCodec
    from llmos.kernel.workloads import evaluate

    k = quota_kernel(make_kernel, tokens_per_min=100)
    text = b"The quick brown fox jumps over the lazy dog. " * 40
    task = evaluate.prepare(evaluate.EvalSpec("tiny", "t.txt", "ppl", window=40), text, TextCodec(tokenizer, set()))
    p = evaluate.spawn_eval(k, Cred("alice"), task)
    k.step()
    assert k.quota.tokens_used("alice", time.monotonic()) == 41  # one window of 40, plus the token it predicts from
    k.step(), k.step()
    assert task.windows == 3 and k.quota.throttled("alice", time.monotonic())  # 82 when picked, 123 after
    assert p.state.value == "ready"
    for _ in range(5):
        k.step()
    assert task.windows == 3  # held back while its owner is at the limit: it waits, it is not killed
    with pytest.raises(ResourceExhausted, match="user alice is at their limit of 100 tokens per minute"):
        k.spawn(Cred("alice"), SpawnSpec("tiny", prompt="Hi"))
