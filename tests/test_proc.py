"""Processes as users see them: chat, stop rules, interactive turns, signals, limits, bad input."""
import time

import pytest

from llmos.drivers.driver import SamplingParams
from llmos.kernel import (ROOT, FailedPrecondition, InvalidArgument, Limits, NotFound, ResourceExhausted, Signal,
                          SpawnSpec, State, StopRules)


def test_chat_prompt_uses_the_template(make_kernel, tokenizer):
    k, ref = make_kernel()
    msgs = [{"role": "user", "content": "Hello world"}]
    p = k.spawn(ROOT, SpawnSpec("tiny", messages=msgs, stop=StopRules(max_tokens=5, ignore_eos=True)))
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert p.tokens == tokenizer(text, add_special_tokens=False)["input_ids"]
    k.run_until_idle()
    assert p.out_tokens == ref.greedy(p.tokens[:p.usage.prompt_tokens], 5)
    assert p.stdout == tokenizer.decode(p.out_tokens, skip_special_tokens=True)


def test_eos_ends_the_process(make_kernel):
    k, ref = make_kernel()
    prompt = list(range(10, 20))
    expect = ref.greedy(prompt, 30)
    eos = expect[3]  # pretend the fourth greedy token is end-of-sequence
    k.models["tiny"].codec.eos = {eos}
    p = k.spawn(ROOT, SpawnSpec("tiny", tokens=prompt, stop=StopRules(max_tokens=30)))
    k.run_until_idle()
    assert p.out_tokens == expect[:expect.index(eos) + 1]
    assert (p.state, p.reason) == (State.EXITED, "eos")
    assert k.meminfo(ROOT, "tiny").used == 0


def test_stop_string_cuts_the_output(make_kernel, tokenizer):
    k, ref = make_kernel()
    prompt = tokenizer("The quick brown fox")["input_ids"]
    full = tokenizer.decode(ref.greedy(prompt, 20), skip_special_tokens=True)
    stop = full[5:8]
    p = k.spawn(ROOT, SpawnSpec("tiny", tokens=prompt, stop=StopRules(max_tokens=20, stop=[stop], ignore_eos=True)))
    k.run_until_idle()
    assert p.reason == "stop" and p.stdout == full[:full.index(stop)]


def test_interactive_turns_keep_their_pages(make_kernel, tokenizer):
    k, ref = make_kernel()
    p = k.spawn(ROOT, SpawnSpec("tiny", messages=[{"role": "user", "content": "Hello"}], interactive=True,
                stop=StopRules(max_tokens=6, ignore_eos=True)))
    k.run_until_idle()
    assert p.state == State.BLOCKED and p.reason == "length"
    held = k.meminfo(ROOT, "tiny").used
    assert held > 0
    before = list(p.tokens)
    k.write(ROOT, p.pid, "Tell me more")
    assert p.state == State.READY and p.tokens[:len(before)] == before
    k.run_until_idle()
    # The second answer continues the same sequence; only the new tokens were computed.
    assert p.out_tokens[6:] == ref.greedy(p.tokens[:len(p.tokens) - 6], 6)
    assert p.usage.generated_tokens == 12 and p.state == State.BLOCKED
    k.signal(ROOT, p.pid, "TERM")
    assert p.state == State.KILLED and k.meminfo(ROOT, "tiny").used == 0


def test_write_needs_an_interactive_blocked_process(make_kernel):
    k, _ = make_kernel()
    p = k.spawn(ROOT, SpawnSpec("tiny", tokens=[5, 6, 7], stop=StopRules(max_tokens=3)))
    with pytest.raises(FailedPrecondition, match="not interactive"):
        k.write(ROOT, p.pid, "hi")
    q = k.spawn(ROOT, SpawnSpec("tiny", tokens=[5, 6, 7], interactive=True, stop=StopRules(max_tokens=3)))
    with pytest.raises(FailedPrecondition, match="still answering"):
        k.write(ROOT, q.pid, "hi")


def test_stop_and_cont(make_kernel):
    k, ref = make_kernel()
    a = k.spawn(ROOT, SpawnSpec("tiny", tokens=[5, 6, 7], stop=StopRules(max_tokens=8, ignore_eos=True)))
    b = k.spawn(ROOT, SpawnSpec("tiny", tokens=[8, 9], stop=StopRules(max_tokens=8, ignore_eos=True)))
    k.step()
    k.signal(ROOT, a.pid, Signal.STOP)
    for _ in range(3):
        k.step()
    assert a.state == State.STOPPED and len(a.out_tokens) == 1 and len(b.out_tokens) == 4
    k.signal(ROOT, a.pid, "CONT")
    k.run_until_idle()
    assert a.out_tokens == ref.greedy([5, 6, 7], 8) and b.out_tokens == ref.greedy([8, 9], 8)


def test_kill_frees_pages_and_leaves_others_alone(make_kernel):
    k, ref = make_kernel()
    a = k.spawn(ROOT, SpawnSpec("tiny", tokens=list(range(5, 30)), stop=StopRules(max_tokens=8, ignore_eos=True)))
    b = k.spawn(ROOT, SpawnSpec("tiny", tokens=[8, 9], stop=StopRules(max_tokens=8, ignore_eos=True)))
    k.step()
    k.signal(ROOT, a.pid, "KILL")
    assert (a.state, a.reason) == (State.KILLED, "signal KILL")
    k.run_until_idle()
    assert b.out_tokens == ref.greedy([8, 9], 8) and k.meminfo(ROOT, "tiny").used == 0


def test_wall_time_limit(make_kernel):
    k, _ = make_kernel()
    p = k.spawn(ROOT, SpawnSpec("tiny", tokens=[5, 6], limits=Limits(max_wall_s=0.05), stop=StopRules(max_tokens=200, ignore_eos=True)))
    time.sleep(0.06)
    k.step()
    assert p.state == State.KILLED and "wall time" in p.reason


def test_page_quota_kills_with_the_limit_named(make_kernel):
    k, _ = make_kernel(page_size=4)
    p = k.spawn(ROOT, SpawnSpec("tiny", tokens=[5, 6, 7], limits=Limits(max_pages=2), stop=StopRules(max_tokens=30, ignore_eos=True)))
    k.run_until_idle()
    assert p.state == State.KILLED and "max_pages=2" in p.reason
    assert len(p.out_tokens) == 2 * 4 - 3 + 1  # every token whose KV fits in two pages, plus the last sample


def test_seeded_sampling_is_reproducible_whatever_the_batch(make_kernel):
    k, _ = make_kernel()
    s = SamplingParams(temperature=0.9, top_k=50, top_p=0.9, seed=1234)
    alone = k.spawn(ROOT, SpawnSpec("tiny", tokens=[5, 6, 7], sampling=s, stop=StopRules(max_tokens=12, ignore_eos=True)))
    k.run_until_idle()
    crowd = [k.spawn(ROOT, SpawnSpec("tiny", tokens=t, stop=StopRules(max_tokens=12, ignore_eos=True))) for t in ([9] * 7, [11, 12])]
    again = k.spawn(ROOT, SpawnSpec("tiny", tokens=[5, 6, 7], sampling=s, stop=StopRules(max_tokens=12, ignore_eos=True)))
    other = k.spawn(ROOT, SpawnSpec("tiny", tokens=[5, 6, 7], sampling=SamplingParams(temperature=0.9, seed=99),
                    stop=StopRules(max_tokens=12, ignore_eos=True)))
    k.run_until_idle()
    assert again.out_tokens == alone.out_tokens != other.out_tokens
    assert all(c.state == State.EXITED for c in crowd)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(model="nope", tokens=[1]), NotFound, "not loaded"),
    (dict(tokens=list(range(3, 300)) * 2), InvalidArgument, "context window"),
    (dict(tokens=[5], stop=StopRules(max_tokens=0)), InvalidArgument, "max_tokens must be in \\[1, 131072\\], got 0"),
    (dict(tokens=[5], stop=StopRules(max_tokens=-3)), InvalidArgument, "max_tokens"),
    (dict(tokens=[5], stop=StopRules(max_tokens=400)), ResourceExhausted, "pool holds only 64 pages"),
    (dict(tokens=list(range(3, 40)), limits=Limits(max_pages=2)), ResourceExhausted, "max_pages is 2"),
    (dict(tokens=[]), InvalidArgument, "empty"),
    (dict(tokens=[99999]), InvalidArgument, "outside the vocabulary"),
    (dict(tokens=[5], sampling=SamplingParams(temperature=-1)), InvalidArgument, "temperature"),
    (dict(tokens=[5], priority=40), InvalidArgument, "priority"),
    (dict(messages=[]), InvalidArgument, "messages is empty"),
    (dict(messages=[{"role": "wizard", "content": "x"}]), InvalidArgument, "role"),
])
def test_bad_input_is_refused_with_the_limit_named(make_kernel, kwargs, error, words):
    k, ref = make_kernel(page_size=4)
    ok = k.spawn(ROOT, SpawnSpec("tiny", tokens=[7, 8, 9], stop=StopRules(max_tokens=4, ignore_eos=True)))
    kwargs = dict(kwargs)
    kwargs.setdefault("stop", StopRules(max_tokens=4))
    with pytest.raises(error, match=words):
        k.spawn(ROOT, SpawnSpec(kwargs.pop("model", "tiny"), **kwargs))
    k.run_until_idle()
    assert ok.out_tokens == ref.greedy([7, 8, 9], 4)  # nobody else was harmed


def test_signals_and_lookups_name_what_is_wrong(make_kernel):
    k, _ = make_kernel()
    with pytest.raises(NotFound, match="no process with pid 42"):
        k.signal(ROOT, 42, "TERM")
    p = k.spawn(ROOT, SpawnSpec("tiny", tokens=[5], stop=StopRules(max_tokens=2)))
    with pytest.raises(InvalidArgument, match="unknown signal"):
        k.signal(ROOT, p.pid, "HUP")
    with pytest.raises(FailedPrecondition, match="in use"):
        k.unload_model(ROOT, "tiny")


def test_an_interactive_process_can_start_waiting_for_input(make_kernel, tokenizer):
    k, ref = make_kernel()
    system = [{"role": "system", "content": "Summarize"}]
    p = k.spawn(ROOT, SpawnSpec("tiny", messages=system, interactive=True, stop=StopRules(max_tokens=5, ignore_eos=True)))
    assert (p.state, p.reason, p.tokens) == (State.BLOCKED, "waiting for input", [])
    k.run_until_idle()
    assert p.usage.generated_tokens == 0
    k.write(ROOT, p.pid, "Hello world")
    want = tokenizer.apply_chat_template(system + [{"role": "user", "content": "Hello world"}], tokenize=False,
                                         add_generation_prompt=True)
    assert p.tokens == tokenizer(want, add_special_tokens=False)["input_ids"]
    k.run_until_idle()
    assert p.out_tokens == ref.greedy(p.tokens[:p.usage.prompt_tokens], 5)
    with pytest.raises(InvalidArgument, match="exactly one of"):
        k.spawn(ROOT, SpawnSpec("tiny"))


def test_a_failing_step_ends_only_its_batch(make_kernel):
    k, ref = make_kernel()
    a = k.spawn(ROOT, SpawnSpec("tiny", tokens=[5, 6, 7], stop=StopRules(max_tokens=4, ignore_eos=True)))
    real_step = k.driver.step
    k.driver.step = lambda *args: (_ for _ in ()).throw(RuntimeError("device lost"))
    k.step()
    assert (a.state, a.reason) == (State.KILLED, "driver error: RuntimeError: device lost")
    assert k.meminfo(ROOT, "tiny").used == 0
    k.driver.step = real_step
    b = k.spawn(ROOT, SpawnSpec("tiny", tokens=[5, 6, 7], stop=StopRules(max_tokens=4, ignore_eos=True)))
    k.run_until_idle()
    assert b.out_tokens == ref.greedy([5, 6, 7], 4)


def test_only_the_newest_finished_processes_are_kept(make_kernel):
    k, _ = make_kernel()
    k.config.keep_exited = 3
    procs = [k.spawn(ROOT, SpawnSpec("tiny", tokens=[5 + i], stop=StopRules(max_tokens=1))) for i in range(5)]
    k.run_until_idle()
    assert sorted(k.procs) == [p.pid for p in procs[2:]]


# --- TERM ends a process cleanly; KILL ends it now ------------------------------------------------
def test_term_stops_a_generation_at_its_next_token(make_kernel):
    k, ref = make_kernel()
    p = k.spawn(ROOT, SpawnSpec("tiny", tokens=[5, 6, 7], stop=StopRules(max_tokens=50, ignore_eos=True)))
    k.step(), k.step()
    made = len(p.out_tokens)
    k.signal(ROOT, p.pid, "TERM")
    assert not p.state.done and p.term_at is not None  # not yet: it ends at its next token
    k.step()
    assert (p.state, p.reason) == (State.KILLED, "terminated") and len(p.out_tokens) == made + 1
    assert p.out_tokens == ref.greedy([5, 6, 7], made + 1) and k.meminfo(ROOT, "tiny").used == 0
    q = k.spawn(ROOT, SpawnSpec("tiny", tokens=[5, 6, 7], stop=StopRules(max_tokens=50, ignore_eos=True)))
    k.step()
    k.signal(ROOT, q.pid, "KILL")
    assert (q.state, q.reason) == (State.KILLED, "signal KILL")  # KILL does not wait


def test_term_ends_at_once_what_has_nothing_to_finish(make_kernel):
    k, _ = make_kernel()
    chat = k.spawn(ROOT, SpawnSpec("tiny", messages=[{"role": "user", "content": "Hi"}], interactive=True,
                                  stop=StopRules(max_tokens=3, ignore_eos=True)))
    k.run_until_idle()
    assert chat.state == State.BLOCKED
    k.signal(ROOT, chat.pid, "TERM")  # waiting for input
    assert (chat.state, chat.reason) == (State.KILLED, "terminated")
    waiting = k.spawn(ROOT, SpawnSpec("tiny", tokens=[5, 6], stop=StopRules(max_tokens=9)))
    k.signal(ROOT, waiting.pid, "STOP")
    k.signal(ROOT, waiting.pid, "TERM")  # stopped
    assert (waiting.state, waiting.reason) == (State.KILLED, "terminated")
    fresh = k.spawn(ROOT, SpawnSpec("tiny", tokens=[5, 6], stop=StopRules(max_tokens=9)))
    k.signal(ROOT, fresh.pid, "TERM")  # not started
    assert fresh.state == State.KILLED


def test_an_interactive_turn_in_progress_ends_at_its_next_token(make_kernel):
    k, _ = make_kernel()
    chat = k.spawn(ROOT, SpawnSpec("tiny", messages=[{"role": "user", "content": "Hi"}], interactive=True,
                                  stop=StopRules(max_tokens=30, ignore_eos=True)))
    k.step(), k.step()
    k.signal(ROOT, chat.pid, "TERM")
    k.step()
    assert (chat.state, chat.reason) == (State.KILLED, "terminated")  # it does not block for another turn


def test_what_does_not_end_within_the_grace_period_is_killed(make_kernel):
    k, _ = make_kernel(budget=4)  # a long prompt takes many steps before its first token
    k.config.term_grace_s = 0.05
    p = k.spawn(ROOT, SpawnSpec("tiny", tokens=list(range(5, 200)), stop=StopRules(max_tokens=5)))
    k.step()
    k.signal(ROOT, p.pid, "TERM")
    time.sleep(0.06)
    k.step()
    assert p.state == State.KILLED and p.reason == "signal TERM, then KILL: it did not end within 0.05 s"


def test_stop_twice_then_cont_resumes(make_kernel):
    """A second STOP used to record STOPPED as where CONT returns, so CONT left it stopped."""
    k, _ = make_kernel()
    p = k.spawn(ROOT, SpawnSpec("tiny", tokens=[5, 6, 7], stop=StopRules(max_tokens=4, ignore_eos=True)))
    k.step()
    k.signal(ROOT, p.pid, "STOP"), k.signal(ROOT, p.pid, "STOP")
    k.signal(ROOT, p.pid, "CONT")
    assert p.state == State.READY
    k.run_until_idle()
    assert p.state == State.EXITED


def test_fork_of_a_process_waiting_for_its_first_turn(make_kernel, tokenizer):
    """It used to make a child with no tokens and no conversation, stuck as new."""
    k, _ = make_kernel()
    msgs = [{"role": "system", "content": "Be brief."}]
    p = k.spawn(ROOT, SpawnSpec("tiny", messages=msgs, interactive=True, stop=StopRules(max_tokens=3)))
    child = k.fork(ROOT, p.pid)
    assert child.state == State.BLOCKED and child.preamble == msgs
    other = k.fork(ROOT, p.pid, text="Hi")
    assert other.state == State.NEW and other.tokens == k.models["tiny"].codec.encode_chat(
        msgs + [{"role": "user", "content": "Hi"}])
    k.run_until_idle()
    assert other.state == State.BLOCKED and other.out_tokens


def test_a_task_process_cannot_fork(make_kernel):
    class Idle:
        kind = "test"

        def run_unit(self, kernel, proc):
            return False

        def close(self, kernel, proc, reason):
            pass

    k, _ = make_kernel()
    t = k.spawn_task(ROOT, "tiny", Idle())
    with pytest.raises(FailedPrecondition, match=f"pid {t.pid} is a test process; only a token process can fork"):
        k.fork(ROOT, t.pid)
