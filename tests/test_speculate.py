"""Speculative decoding as plain Python, no model: the prompt-lookup proposer, its off switch,
the acceptance rule, rolling memory back, and where the scheduler finds rows for proposals."""
import pytest

from llmos.drivers.sampler import accept
from llmos.kernel.memory import MemoryManager
from llmos.kernel.proc import Process, SpawnSpec, State
from llmos.kernel.sched import SchedConfig, Scheduler
from llmos.kernel.speculate import Lookup, SpecConfig
from llmos.syscalls.abi.spec import Limits, StopRules


# --- the proposer ----------------------------------------------------------------------------------
def test_lookup_proposes_what_followed_the_longest_latest_match():
    look = Lookup(ngram=3)
    #         0  1  2  3  4  5  6  7  8  9 10 11
    tokens = [1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 2, 3]
    # "2 3" occurs at 1..2 (then 4) and 6..7 (then 7): the latest wins; no 3-gram "8 2 3" before.
    assert look.propose(tokens, 4) == [7, 8, 2, 3]
    assert look.propose(tokens, 2) == [7, 8]
    tokens += [4]  # now "3 4"... but "2 3 4" occurred at 1..3: the 3-gram match beats the latest 1-gram
    assert look.propose(tokens, 3) == [5, 9, 2]
    assert look.propose([1, 2, 3], 4) == []  # nothing before repeats the suffix
    assert look.propose([5], 4) == [] and look.propose([1, 2, 1], 0) == []


def test_lookup_index_grows_with_the_sequence_only():
    look = Lookup(ngram=2)
    seq = [1, 2, 3, 1]
    assert look.propose(seq, 4) == [2, 3, 1]  # a proposal may run to the end of the sequence
    seq += [2, 3, 1]
    assert look.propose(seq, 4) == [2, 3, 1] and look.indexed == len(seq)
    fresh = Lookup(ngram=2)
    assert fresh.propose(list(seq), 4) == look.propose(list(seq), 4)  # incremental == from scratch


def test_low_acceptance_turns_a_process_off_for_a_cooldown_that_doubles():
    cfg = SpecConfig(enabled=True, min_rate=0.5, cooldown=8)
    look = Lookup()
    tokens = [1, 2] * 10
    assert look.propose(tokens, 4)
    look.record(4, 0, len(tokens), cfg)  # 1.0 -> 0.7
    look.record(4, 0, len(tokens), cfg)  # -> 0.49: off
    assert look.off_until == len(tokens) + 8 and look.propose(tokens, 4) == []
    tokens += [1, 2] * 4
    assert look.propose(tokens, 4)  # the cooldown is over: it tries again
    look.record(4, 0, len(tokens), cfg)
    look.record(4, 0, len(tokens), cfg)
    assert look.off_until == len(tokens) + 16  # failed again: twice as long
    assert Lookup(rate=0.4).size(4) == 3 and Lookup(rate=0.0).size(4) == 1  # fewer as acceptance falls
    look.record(4, 4, len(tokens), cfg)
    assert look.cooldown == 0  # a fully accepted draft forgives


def test_the_opt_out_crosses_the_wire_and_the_journal():
    from dataclasses import asdict

    from llmos.kernel.recovery import spawn_spec
    from llmos.syscalls.abi import wire
    for speculate in (True, False):
        spec = SpawnSpec("m", prompt="x", speculate=speculate)
        assert wire.spawn_spec(wire.spawn_request(spec)).speculate is speculate
        assert spawn_spec({"spec": asdict(spec), "owner": "root"}).speculate is speculate


def test_spec_config_refuses_nonsense():
    with pytest.raises(ValueError, match="max_draft must be in"):
        SpecConfig(max_draft=0)
    with pytest.raises(ValueError, match="ngram must be in"):
        SpecConfig(ngram=0)


# --- the acceptance rule ------------------------------------------------------------------------------
def test_accept_keeps_proposals_while_they_equal_the_draws():
    assert accept([5, 6, 7], [5, 6, 7, 8]) == 3  # all kept, then the bonus draw
    assert accept([5, 6, 7], [5, 9, 7, 8]) == 1  # the draw 9 replaces 6, and ends it
    assert accept([5], [4, 1]) == 0
    assert accept([], [3]) == 0


# --- rolling memory back ----------------------------------------------------------------------------------
def test_truncate_frees_pages_of_rejected_tokens_and_never_publishes_them():
    mm = MemoryManager(16, page_size=4)
    tokens = list(range(10, 30))
    assert mm.allocate(1, 0, 6)
    mm.publish(1, tokens, 6)  # page 0 is full and published
    free = mm.pool.num_free
    assert mm.allocate(1, 6, 6 + 5)  # a verify of positions 6..10: crosses into a third page
    assert mm.pool.num_free == free - 1
    mm.truncate(1, 7)  # only position 6 (and one accepted proposal) kept
    assert len(mm.tables[1]) == 2 and mm.tokens[1] == 7 and mm.pool.num_free == free
    mm.publish(1, tokens[:8], 7)  # page 1 is not full with kept tokens: no hash for it
    assert mm.pool.page_hash[mm.tables[1][1]] is None and len(mm._hashes[1]) == 1
    mm.truncate(1, 9)  # a length past what the table covers changes nothing
    assert mm.tokens[1] == 7


def test_a_page_full_only_with_rejected_tokens_is_not_cached():
    mm = MemoryManager(8, page_size=4)
    assert mm.allocate(1, 0, 3)
    assert mm.allocate(1, 2, 2 + 5)  # positions 2..6: page 0 fills only with proposals at 3
    mm.truncate(1, 3)
    mm.publish(1, [1, 2, 3], 3)
    assert mm.pool.num_cached == 0 and mm.pool.page_hash[mm.tables[1][0]] is None
    assert mm.match_prefix(2, [1, 2, 3, 99, 5, 6], 0) == 0  # no prefix served from rejected KV


# --- the scheduler -----------------------------------------------------------------------------------------
def decoder(mm, pid, tokens, **spec):
    p = Process(pid=pid, spec=SpawnSpec("m", **spec), tokens=list(tokens), created=0.0)
    p.state = State.READY
    assert mm.allocate(pid, 0, len(tokens) - 1)
    p.num_computed = len(tokens) - 1
    return p


def sched(mm, budget, **cfg):
    return Scheduler(SchedConfig(token_budget=budget, speculate=SpecConfig(enabled=True, **cfg)), mm, 512)


REPEAT = [7, 8, 9, 10] * 4


def test_proposals_take_only_the_budget_left_after_every_decode():
    mm = MemoryManager(64, page_size=4)
    procs = [decoder(mm, i, REPEAT) for i in (1, 2, 3)]
    plan = sched(mm, 3).schedule(procs, now=1)
    assert [n for _, n in plan.runs] == [1, 1, 1] and plan.drafts == {}  # no row to spare
    for p in procs:
        p.state = State.READY
    plan = sched(mm, 5).schedule(procs, now=2)
    assert [n for _, n in plan.runs] == [1, 1, 1] and plan.drafts == {1: [7, 8]}  # 2 rows left, to the first
    s = plan.input.seqs[0]
    assert s.token_ids == [10, 7, 8] and s.draft == [7, 8] and s.sample
    assert plan.num_tokens == 5


def test_a_long_prompt_keeps_its_chunk_and_decodes_keep_their_row():
    mm = MemoryManager(64, page_size=4)
    d = decoder(mm, 1, REPEAT)
    long = Process(pid=2, spec=SpawnSpec("m"), tokens=list(range(100, 140)), created=1.0)
    long.state = State.READY
    plan = sched(mm, 12).schedule([d, long], now=2)
    assert [(p.pid, n) for p, n in plan.runs] == [(1, 1), (2, 11)] and plan.drafts == {}


def test_proposals_never_evict_and_respect_limits():
    mm = MemoryManager(5, page_size=4)  # REPEAT holds 4 pages, the decode fills the last slot of page 4
    p = decoder(mm, 1, REPEAT)
    plan = sched(mm, 64).schedule([p], now=1)
    assert plan.drafts == {1: [7, 8, 9, 10]} or len(mm.tables[1]) == 5  # one free page: room for 4
    mm2 = MemoryManager(4, page_size=4)
    q = decoder(mm2, 1, REPEAT)
    assert sched(mm2, 64).schedule([q], now=1).drafts == {}  # no free page and no one is evicted
    mm3 = MemoryManager(64, page_size=4)
    r = decoder(mm3, 1, REPEAT, limits=Limits(max_pages=4), stop=StopRules(max_tokens=100))
    assert sched(mm3, 64).schedule([r], now=1).drafts == {}  # its 4 pages are all it may have
    mm4 = MemoryManager(64, page_size=4)
    t = decoder(mm4, 1, REPEAT, stop=StopRules(max_tokens=3))
    t.turn_tokens = 1
    assert sched(mm4, 64).schedule([t], now=1).drafts == {1: [7]}  # room for one proposal and the bonus


class AllowsFirst:
    """A grammar state stand-in that allows only the first `n` of any proposals."""

    def __init__(self, n):
        self.n = n

    def valid_prefix(self, tokens):
        return min(self.n, len(tokens))


def test_opted_out_compiling_and_terminating_processes_do_not_speculate_and_grammars_trim():
    from llmos.syscalls.abi.grammar import GrammarSpec

    mm = MemoryManager(64, page_size=4)
    out = decoder(mm, 1, REPEAT, speculate=False)
    compiling = decoder(mm, 2, REPEAT, grammar=GrammarSpec("regex", "a+"))  # its grammar is not ready yet
    ending = decoder(mm, 3, REPEAT)
    ending.term_at = 0.0
    ok = decoder(mm, 4, REPEAT)
    plan = sched(mm, 64).schedule([out, compiling, ending, ok], now=1)
    assert list(plan.drafts) == [4]
    assert sched(mm, 64, max_rows=3).schedule([ok], now=2).drafts == {4: [7, 8]}  # 3 rows in the step at most
    mm2 = MemoryManager(64, page_size=4)
    constrained = decoder(mm2, 5, REPEAT)
    constrained.grammar = AllowsFirst(1)  # proposals past what the grammar allows are never made
    assert sched(mm2, 64).schedule([constrained], now=1).drafts == {5: [7]}
    constrained.grammar = AllowsFirst(0)
    assert sched(mm2, 64).schedule([constrained], now=2).drafts == {}


def test_rows_are_added_only_where_they_pay_for_themselves():
    mm = MemoryManager(256, page_size=4)
    many = [decoder(mm, i, REPEAT) for i in range(1, 17)]
    for p in many:
        p.lookup.rate = 0.2  # chat-like acceptance
    assert sched(mm, 256, max_rows=64).schedule(many, now=1).drafts == {}  # 16 rows already: not worth it
    alone = decoder(mm, 99, REPEAT)
    alone.lookup.rate = 0.2
    assert sched(mm, 256).schedule([alone], now=1).drafts == {99: [7]}  # alone, one proposal pays
    alone.state, alone.lookup.rate = State.READY, 0.9
    assert sched(mm, 256).schedule([alone], now=2).drafts == {99: [7, 8, 9, 10]}
    for p in many:
        p.state, p.lookup.rate = State.READY, 0.9
    plan = sched(mm, 256, max_rows=64, row_cost=0.0).schedule(many, now=3)
    assert len(plan.drafts) == 12  # free rows: every process proposes until the 64-row cap


def test_row_cost_is_learned_from_decode_steps_and_interpolated():
    from llmos.kernel.speculate import RowCost
    c = RowCost()
    for _ in range(3):
        c.record(1, 0.050)
        c.record(4, 0.056)  # 2% a row
        c.record(16, 0.160)
    c.record(8, 0.5)  # seen once: not trusted yet
    assert c.marginal(1) is None and c.marginal(17) is None  # outside what was seen: the prior decides
    assert c.marginal(2) == pytest.approx(0.052 / 0.050 - 1) and c.marginal(4) == pytest.approx(0.056 / 0.054 - 1)
    assert c.marginal(10) == pytest.approx((0.056 + 6 / 12 * 0.104) / (0.056 + 5 / 12 * 0.104) - 1)
    c.record(0, 1.0)
    c.record(5000, 1.0)
    c.record(3, -1.0)
    assert set(c.seen) == {1, 4, 8, 16}  # nonsense is not recorded
    faster = RowCost()
    for _ in range(3):
        faster.record(1, 0.05)
        faster.record(2, 0.04)
    assert faster.marginal(2) == 0.0  # noise that makes a row look like a gain costs nothing, never less


def test_the_cost_rule_follows_what_the_pool_learned():
    mm = MemoryManager(64, page_size=4)
    alone = decoder(mm, 1, REPEAT)
    alone.lookup.rate = 0.2
    s = sched(mm, 64)
    assert s.schedule([alone], now=1).drafts == {1: [7]}  # the prior (6% a row): one proposal
    for _ in range(3):
        s.row_cost.record(1, 0.050)
        s.row_cost.record(5, 0.0505)  # rows nearly free on this machine
    alone.state = State.READY
    assert s.schedule([alone], now=2).drafts == {1: [7, 8]}  # a second proposal now pays
    dear = sched(mm, 64)
    for _ in range(3):
        dear.row_cost.record(1, 0.050)
        dear.row_cost.record(5, 0.150)  # 50% a row
    alone.state = State.READY
    assert dear.schedule([alone], now=3).drafts == {}
    assert sched(mm, 64, learn_cost=False).schedule([alone], now=4).drafts == {1: [7]}


def test_only_decode_steps_teach_the_row_cost():
    mm = MemoryManager(64, page_size=4)
    s = sched(mm, 64)
    d = decoder(mm, 1, REPEAT)
    plan = s.schedule([d], now=1)
    s.observe(plan, 0.05)
    prompt = Process(pid=2, spec=SpawnSpec("m"), tokens=list(range(3, 20)), created=0.0)
    prompt.state = State.READY
    plan2 = s.schedule([prompt], now=2)
    assert any(n > 1 for _, n in plan2.runs)
    s.observe(plan2, 9.0)  # a prefill chunk says nothing about decode rows
    assert s.row_cost.seen == {plan.num_tokens: 1}
