"""The scheduler as plain Python: budgets, chunked prefill, policies, aging, preemption."""
import pytest

from llmos.kernel.memory import MemoryManager
from llmos.kernel.proc import SpawnSpec, Process, State
from llmos.kernel.sched import SchedConfig, Scheduler


def proc(pid, n_tokens, created=0.0, priority=0, owner="root", computed=0):
    p = Process(pid=pid, spec=SpawnSpec("m"), tokens=list(range(n_tokens)), priority=priority, owner=owner, created=created)
    p.state, p.num_computed = State.READY, computed
    return p


def run(sched, plan):
    """Pretend the step ran: mark tokens computed, like the kernel does."""
    for p, n in plan.runs:
        p.num_computed += n
        p.last_run = 0.0


def test_chunked_prefill_shares_the_budget_with_decode():
    mm = MemoryManager(64, page_size=4)
    s = Scheduler(SchedConfig(token_budget=10, prefill_budget=12), mm)
    decoder = proc(1, 5, created=0)
    mm.allocate(1, 0, 4)
    decoder.num_computed = 4  # owes one token
    long = proc(2, 25, created=1)
    plan = s.schedule([decoder, long], now=2)
    assert [(p.pid, n) for p, n in plan.runs] == [(1, 1), (2, 9)]
    run(s, plan)
    plan = s.schedule([decoder, long], now=3)  # no one decodes now: the prompt alone gets the prefill budget
    assert [(p.pid, n) for p, n in plan.runs] == [(2, 12)]


def test_fcfs_orders_by_arrival_and_priority_by_nice():
    mm = MemoryManager(64, page_size=4)
    a, b = proc(1, 4, created=0, priority=10), proc(2, 4, created=1, priority=-5)
    assert [p.pid for p in Scheduler(SchedConfig("fcfs"), mm).order([b, a], now=1)] == [1, 2]
    assert [p.pid for p in Scheduler(SchedConfig("priority"), mm).order([a, b], now=1)] == [2, 1]


def test_aging_lifts_a_starving_low_priority_process():
    mm = MemoryManager(64, page_size=4)
    s = Scheduler(SchedConfig("priority", aging_s=1.0), mm)
    old, fresh = proc(1, 4, created=0, priority=19), proc(2, 4, created=29, priority=0)
    old.last_run = 0
    fresh.last_run = 29
    assert [p.pid for p in s.order([fresh, old], now=30)] == [1, 2]  # waited 30 s: 19 - 30 < 0 - 1


def test_fair_share_prefers_the_owner_served_least():
    mm = MemoryManager(64, page_size=4)
    s = Scheduler(SchedConfig("fair"), mm)
    s.account("alice", 1000)
    a, b = proc(1, 4, created=0, owner="alice"), proc(2, 4, created=5, owner="bob")
    assert [p.pid for p in s.order([a, b], now=5)] == [2, 1]


def test_out_of_pages_preempts_lowest_priority_newest_by_swap():
    mm = MemoryManager(4, page_size=4, swap_pages=8)
    s = Scheduler(SchedConfig("priority", token_budget=64, aging_s=1e9), mm)
    hi, lo_old, lo_new = proc(1, 8, 0, -5), proc(2, 4, 1, 5), proc(3, 4, 2, 5)
    while any(p.owed for p in (hi, lo_old, lo_new)):  # the low ones give way to hi's prompt, then fill up
        run(s, s.schedule([hi, lo_old, lo_new], now=3))
    assert mm.pool.num_free == 0
    hi.tokens += [1] * 4  # hi now needs a page more
    plan = s.schedule([hi, lo_old, lo_new], now=4)
    assert [p.pid for p in plan.preempted] == [3]  # lowest priority, newest
    assert mm.is_swapped(3) and [p.pid for p, _ in plan.runs] == [1]
    assert [m[0] for m in plan.input.moves][-1] == "out"


def test_recompute_mode_drops_pages_and_resets_progress():
    mm = MemoryManager(2, page_size=4)
    s = Scheduler(SchedConfig(token_budget=64, preempt="recompute"), mm)
    a, b = proc(1, 4, 0), proc(2, 4, 1)
    run(s, s.schedule([a, b], now=2))
    a.tokens += [9]
    plan = s.schedule([a, b], now=3)
    assert [p.pid for p in plan.preempted] == [2]
    assert b.num_computed == 0 and b.pid not in mm.tables and not mm.is_swapped(2)


def test_swapped_process_comes_back_when_pages_free_up():
    mm = MemoryManager(2, page_size=4, swap_pages=4)
    s = Scheduler(SchedConfig(token_budget=64), mm)
    a, b = proc(1, 4, 0), proc(2, 4, 1)
    run(s, s.schedule([a, b], now=2))
    a.tokens += [9]
    run(s, s.schedule([a, b], now=3))
    assert mm.is_swapped(2)
    a.state = State.EXITED
    mm.free(1)
    b.tokens += [9]
    plan = s.schedule([b], now=4)
    assert [(p.pid, n) for p, n in plan.runs] == [(2, 1)] and not mm.is_swapped(2)
    assert b.usage.swaps == 1


def test_blocked_and_stopped_processes_give_pages_back_first():
    mm = MemoryManager(2, page_size=4, swap_pages=4)
    s = Scheduler(SchedConfig(token_budget=64), mm)
    idle, busy = proc(1, 4, 0), proc(2, 4, 1)
    run(s, s.schedule([idle, busy], now=2))
    idle.state = State.BLOCKED
    busy.tokens += [1]
    plan = s.schedule([idle, busy], now=3)
    assert [p.pid for p in plan.preempted] == [1] and [p.pid for p, _ in plan.runs] == [2]


def test_page_quota_is_reported():
    mm = MemoryManager(16, page_size=4)
    s = Scheduler(SchedConfig(token_budget=64), mm)
    p = proc(1, 9)
    p.limits.max_pages = 2
    plan = s.schedule([p], now=1)
    assert plan.over_quota == [p] and plan.runs == []


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="unknown policy"):
        SchedConfig(policy="lottery")
    with pytest.raises(ValueError, match="preemption"):
        SchedConfig(preempt="drop")


def test_a_prefix_being_computed_is_waited_for_not_computed_twice():
    mm = MemoryManager(64, page_size=4)
    s = Scheduler(SchedConfig(token_budget=64), mm)
    system = list(range(100, 120))  # five full pages
    a, b = proc(1, 0, created=0), proc(2, 0, created=1)
    a.tokens, b.tokens = system + [1, 2], system + [3, 4, 5]
    c = proc(3, 6, created=2)  # an unrelated prompt is not held up
    plan = s.schedule([a, b, c], now=3)
    assert [p.pid for p, _ in plan.runs] == [1, 3]
    run(s, plan)
    mm.publish(1, a.tokens, a.num_computed)
    plan = s.schedule([a, b, c], now=4)
    assert b.usage.cached_tokens == 20 and (b, 3) in plan.runs


def decoders(mm, n, first_pid=1):
    """n resident processes that each owe one token."""
    out = []
    for i in range(n):
        p = proc(first_pid + i, 9, created=i)
        mm.allocate(p.pid, 0, 8)
        p.num_computed = 8
        out.append(p)
    return out


@pytest.mark.parametrize("policy", ["fcfs", "priority", "fair"])
def test_a_nice_minus_5_arrival_gets_its_prefill_into_the_next_step_while_16_decode(policy):
    mm = MemoryManager(512, page_size=16)
    s = Scheduler(SchedConfig(policy, token_budget=256), mm)
    busy = decoders(mm, 16)
    long = proc(17, 3000, created=16, computed=512)  # an older prompt, mid-prefill, at nice 0
    mm.allocate(17, 0, 512)
    long.last_run = 19.9  # it ran in the step before
    arrival = proc(18, 40, created=20, priority=-5)
    arrival.tokens = list(range(5000, 5040))  # a prompt of its own (not the prefix the long one is filling)
    plan = s.schedule([*busy, long, arrival], now=20)
    runs = {p.pid: n for p, n in plan.runs}
    assert runs[18] == 40  # its whole prompt, this step
    assert all(runs[p.pid] == 1 for p in busy)
    assert runs[17] == 1  # the older prompt gives way (one token: it never starves)


def test_an_older_prompt_leaves_room_for_newer_decodes_and_aging_lifts_it_when_outranked():
    mm = MemoryManager(512, page_size=16)
    s = Scheduler(SchedConfig("fcfs", token_budget=64), mm)
    long = proc(1, 3000, created=0, computed=16)
    long.last_run = 9.9
    mm.allocate(1, 0, 16)
    busy = decoders(mm, 8, first_pid=2)
    for p in busy:
        p.created += 1  # newer than the prompt: fcfs puts them after it
    urgent = [proc(20 + i, 100, created=10, priority=-5) for i in range(3)]  # more than the budget
    for i, p in enumerate(urgent):
        p.tokens = [5000 + 100 * i + j for j in range(100)]
    plan = s.schedule([long, *busy, *urgent], now=10)
    runs = {p.pid: n for p, n in plan.runs}
    assert all(runs[p.pid] == 1 for p in busy)  # the budget keeps a token for each decode
    assert runs == {**{p.pid: 1 for p in busy}, 20: 64 - 8}  # the highest priority first; nothing left
    for p in urgent:
        p.last_run = 29.9
    plan = s.schedule([long, *busy, *urgent], now=30)  # the prompt has waited 20 s: 10 nice levels
    assert plan.runs[0] == (long, 64 - 8)


def test_a_prompt_alone_runs_at_the_prefill_budget_and_beside_decodes_at_the_token_budget():
    mm = MemoryManager(512, page_size=16)
    s = Scheduler(SchedConfig(token_budget=256, prefill_budget=2048), mm)
    long = proc(1, 5000, created=0)
    plan = s.schedule([long], now=1)
    assert [(p.pid, n) for p, n in plan.runs] == [(1, 2048)]
    run(s, plan)
    (d,) = decoders(mm, 1, first_pid=2)
    plan = s.schedule([long, d], now=2)
    assert sorted((p.pid, n) for p, n in plan.runs) == [(1, 255), (2, 1)]
