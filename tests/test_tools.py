"""Tools and structured output: the one parser (streaming equals whole), the grammar that makes
every call valid, and the official `openai` package against a real llmosd for every tool_choice
mode, streaming and not, a tool-result round trip, response_format, and the two together."""
import json
import random
import re

import jsonschema
import openai
import pytest

from daemon import start_daemon
from llmos.kernel import ROOT, SpawnSpec, StopRules
from llmos.syscalls.abi import tools as fmt

MODEL = "tiny-llama"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                    "unit": {"enum": ["c", "f"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "integer", "minimum": -12,
                                                                                "maximum": 14}},
                                       "required": ["zone"], "additionalProperties": False}}}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


# --- the parser -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "plain text, no calls",
    fmt.call_text("get_weather", {"city": "Pa\"ris}", "unit": "c"}),
    fmt.call_text("get_weather", {"city": "x", "unit": "f"}) + fmt.call_text("get_time", {"zone": -3}),
    "almost a <tool_call but not", "ends in <tool",
    fmt.call_text("get_time", {"zone": 1})[:-4]])  # cut short
def test_streaming_and_whole_read_the_same(text):
    whole = fmt.parse(text)
    rng = random.Random(0)
    for _ in range(20):
        p, events, i = fmt.ToolParser(), [], 0
        while i < len(text):
            n = rng.randint(1, 7)
            events += p.feed(text[i:i + n])
            i += n
        assert fmt.collect(events + p.close()) == whole


def test_calls_come_out_with_their_arguments():
    text, calls = fmt.parse(fmt.call_text("get_weather", {"city": "{[\"]}", "unit": "c"}))
    assert text == "" and calls == [("get_weather", '{"city":"{[\\"]}","unit":"c"}')]
    assert json.loads(calls[0][1]) == {"city": '{["]}', "unit": "c"}


def test_bad_tools_are_refused_by_name():
    from llmos.syscalls.abi.spec import SpecError
    with pytest.raises(SpecError, match="tools of type 'code_interpreter' are not supported"):
        fmt.check_tools([{"type": "code_interpreter"}])
    with pytest.raises(SpecError, match="a second tool named 'get_time'"):
        fmt.check_tools([TIME, TIME])
    with pytest.raises(SpecError, match="tool_choice names 'nope'"):
        fmt.tool_grammar(TOOLS, {"type": "function", "function": {"name": "nope"}})


# --- in the kernel: valid by construction on a random tiny model -------------------------------------------
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}, "auto"])
def test_every_call_validates_against_its_tool(make_kernel, choice):
    k, _ = make_kernel(pages=2048, max_position_embeddings=4096)  # the tool list is long in the tiny vocabulary
    grammar = fmt.tool_grammar(TOOLS, choice, parallel=False)
    procs = [k.spawn(ROOT, SpawnSpec("tiny", messages=[{"role": "user", "content": f"Question {i}"}], tools=TOOLS,
                                     grammar=grammar, stop=StopRules(max_tokens=200))) for i in range(6)]
    k.run_until_idle()
    made = 0
    for p in procs:
        text, calls = fmt.parse(p.stdout)
        if choice != "auto":
            assert p.reason == "grammar" and text == "" and len(calls) == 1, (p.reason, p.stdout)
        for name, args in calls:
            jsonschema.validate(json.loads(args), SCHEMAS[name])
            made += 1
            if isinstance(choice, dict):
                assert name == "get_time"
        if choice == "auto" and not calls:
            assert fmt.OPEN not in p.stdout  # text never holds a half call
    assert made >= (6 if choice != "auto" else 0)


def test_the_generic_format_renders_for_a_template_without_tools(make_kernel, tokenizer):
    k, _ = make_kernel()
    msgs = [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": '{"city": "Oslo", "unit": "c"}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "-3 C"}]
    text = tokenizer.decode(k.models["tiny"].codec.encode_chat(msgs, TOOLS))
    assert text.startswith("<|im_start|>system\nYou can call the tools below.")
    assert '- get_weather: The weather in a city\n  parameters: {"type": "object"' in text
    assert '<tool_call>{"name":"get_weather","arguments":{"city": "Oslo", "unit": "c"}}</tool_call>' in text  # as sent
    assert "<|im_start|>user\n<tool_response>-3 C</tool_response><|im_end|>" in text


# --- the gateway, with the official openai package --------------------------------------------------------
@pytest.fixture(scope="module")
def long_model_dir(tmp_path_factory, tokenizer):
    """The tiny model with room for a tool list and a conversation (its vocabulary is small)."""
    from tiny import tiny_model

    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    tiny_model("llama", max_position_embeddings=4096).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gw(tmp_path_factory, long_model_dir):
    d = start_daemon(tmp_path_factory.mktemp("tools"), str(long_model_dir), "--kv-pages", "4096",
                     "--http", "127.0.0.1:0")
    d.url = re.search(r"http://\S+", d.ready).group(0).rstrip(",")
    with d.client(timeout=60) as admin:
        d.token = admin.create_token("agent", user="alice")[1]
    yield d
    d.stop_cleanly()


@pytest.fixture(scope="module")
def oai(gw):
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.token, max_retries=0, timeout=60) as client:
        yield client


MSGS = [{"role": "user", "content": "What is the weather in Paris?"}]


def joined(chunks):
    """A stream's message, rebuilt from its deltas as an OpenAI client would."""
    content, calls, finish = "", {}, None
    for ch in chunks:
        if not ch.choices:
            continue
        c = ch.choices[0]
        finish = c.finish_reason or finish
        content += c.delta.content or ""
        for tc in c.delta.tool_calls or ():
            if tc.id:
                calls[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": ""}
            calls[tc.index]["arguments"] += tc.function.arguments or ""
    return content, [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize("choice", ["required", "auto", "none", {"type": "function", "function": {"name": "get_time"}}])
def test_each_tool_choice_streaming_and_not(oai, choice):
    kw = dict(model=MODEL, messages=MSGS, tools=TOOLS, tool_choice=choice, max_tokens=120, temperature=0)
    r = oai.chat.completions.create(**kw)
    msg = r.choices[0].message
    calls = msg.tool_calls or []
    if choice == "none":
        assert not calls and msg.content
    elif choice != "auto":
        assert calls and r.choices[0].finish_reason == "tool_calls" and msg.content is None
    for c in calls:
        assert c.type == "function" and c.id.startswith("call_llmos_")
        jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])
        if isinstance(choice, dict):
            assert c.function.name == "get_time"
    content, streamed, finish = joined(oai.chat.completions.create(**kw, stream=True))
    assert (content or None) == (msg.content or None) and finish == r.choices[0].finish_reason
    assert [(c["name"], c["arguments"]) for c in streamed] == [(c.function.name, c.function.arguments) for c in calls]
    assert all(c["id"].startswith("call_llmos_") for c in streamed)  # (another request: another pid in the id)


def test_a_tool_result_round_trip(oai):
    first = oai.chat.completions.create(model=MODEL, messages=MSGS, tools=[WEATHER], tool_choice="required",
                                        parallel_tool_calls=False, max_tokens=200, temperature=0)
    assert first.choices[0].finish_reason == "tool_calls", first
    call = first.choices[0].message.tool_calls[0]
    follow = MSGS + [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp": 18, "unit": "c"})}]
    second = oai.chat.completions.create(model=MODEL, messages=follow, tools=[WEATHER], tool_choice="none",
                                         max_tokens=20, temperature=0)
    assert second.choices[0].message.content and second.usage.prompt_tokens > first.usage.prompt_tokens
    assert second.usage.prompt_tokens_details.cached_tokens > 0  # the shared conversation hit the prefix cache


def test_response_format_and_tools_with_it(oai):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 20},
                                               "sure": {"type": "boolean"}},
              "required": ["answer", "sure"], "additionalProperties": False}
    rf = {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": True}}
    r = oai.chat.completions.create(model=MODEL, messages=MSGS, response_format=rf, max_tokens=120, temperature=0)
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    r = oai.chat.completions.create(model=MODEL, messages=MSGS, response_format={"type": "json_object"},
                                    max_tokens=120, temperature=0)
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    both = oai.chat.completions.create(model=MODEL, messages=MSGS, response_format=rf, tools=TOOLS,
                                       max_tokens=120, temperature=0)
    m = both.choices[0].message
    if m.tool_calls:
        for c in m.tool_calls:
            jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])
    else:
        jsonschema.validate(json.loads(m.content), schema)  # no call: the answer follows response_format


def test_bad_tool_requests_are_400s_naming_the_field(oai):
    for kw, param in [({"tools": [{"type": "retrieval"}]}, "tools"),
                      ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
                      ({"tool_choice": "required"}, "tool_choice"),
                      ({"response_format": {"type": "yaml"}}, "response_format")]:
        with pytest.raises(openai.BadRequestError) as e:
            oai.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=4, **kw)
        assert e.value.body["param"] == param, e.value.body


def test_the_sdk_takes_schemas_and_tools(gw):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["n"], "additionalProperties": False}
    with gw.client(timeout=60) as c:
        out = c.generate(MODEL, "A number:", json_schema=schema, max_tokens=40)
        jsonschema.validate(out, schema)
        reply = c.chat(MODEL, MSGS, tools=TOOLS, tool_choice="required", max_tokens=80)
        assert reply.tool_calls and all(jsonschema.validate(t.arguments, SCHEMAS[t.name]) is None
                                        for t in reply.tool_calls)
        assert c.generate(MODEL, "Pick:", choices=["red", "green"], max_tokens=5) in ("red", "green")
        assert re.fullmatch(r"[0-9]{3}", c.generate(MODEL, "Digits:", regex=r"[0-9]{3}", max_tokens=8))


def test_the_openai_agents_sdk_runs_a_two_tool_agent_to_completion(gw):
    """The Agents SDK's chat-completions model against llmosd: each turn's call is valid by
    construction, the tool really runs, its result goes back as a tool message, and the agent
    ends (here: once two tools have run, since a random model would never choose to)."""
    import asyncio

    from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
    from agents.agent import ToolsToFinalOutputResult

    set_tracing_disabled(True)
    ran = []

    from typing import Annotated

    from pydantic import Field

    Small = Annotated[int, Field(ge=-99, le=99)]  # bounded, so a random model's numbers end

    @function_tool
    def add(a: Small, b: Small) -> int:
        """Add two integers."""
        ran.append(("add", a, b))
        return a + b

    @function_tool
    def negate(n: Small) -> int:
        """The negative of an integer."""
        ran.append(("negate", n))
        return -n

    def after_two(ctx, results) -> ToolsToFinalOutputResult:
        return ToolsToFinalOutputResult(is_final_output=len(ran) >= 2, final_output=str(results[-1].output))

    async def main():
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=gw.token, max_retries=0, timeout=60)
        agent = Agent(name="calc", instructions="Use the tools.", tools=[add, negate], tool_use_behavior=after_two,
                      reset_tool_choice=False,
                      model=OpenAIChatCompletionsModel(model=MODEL, openai_client=client),
                      model_settings=ModelSettings(tool_choice="required", parallel_tool_calls=False, max_tokens=200,
                                                   temperature=0))
        try:
            return await Runner.run(agent, "Add 2 and 3, then negate the result.", max_turns=4)
        finally:
            await client.close()
    result = asyncio.run(main())
    assert len(ran) == 2 and result.final_output == str(ran[1][1] + ran[1][2] if ran[1][0] == "add" else -ran[1][1])
    kinds = [type(i).__name__ for i in result.new_items]
    assert kinds.count("ToolCallItem") == 2 and kinds.count("ToolCallOutputItem") == 2


def test_a_process_waiting_on_a_tool_keeps_its_pages_until_its_pin_runs_out(make_kernel):
    import time

    k, _ = make_kernel(pages=256, page_size=4, budget=64, max_position_embeddings=4096)
    k.config.tool_wait_ttl_s = 0.5
    grammar = fmt.tool_grammar([TIME], "required", parallel=False)
    agent = k.spawn(ROOT, SpawnSpec("tiny", messages=[{"role": "user", "content": "Time?"}], tools=[TIME],
                                    grammar=grammar, interactive=True, stop=StopRules(max_tokens=60)))
    k.run_until_idle()
    assert agent.state.value == "blocked" and fmt.parse(agent.stdout)[1] and agent.pinned_until > time.monotonic()
    held = k.models["tiny"].memory.pages_held(agent.pid)
    pressure = [k.spawn(ROOT, SpawnSpec("tiny", tokens=list(range(5 + i, 45 + i)),
                                        stop=StopRules(max_tokens=200, ignore_eos=True))) for i in range(3)]
    for _ in range(40):  # the others need every page: only the pin keeps the agent's
        k.step()
    assert not k.models["tiny"].memory.is_swapped(agent.pid) and agent.usage.preemptions == 0
    assert k.models["tiny"].memory.pages_held(agent.pid) == held
    time.sleep(0.5)
    k.run_until_idle()
    assert all(p.state.done for p in pressure)
    assert agent.usage.preemptions > 0  # once the pin ran out, its pages went to swap like anyone's
    computed = agent.num_computed
    k.write(ROOT, agent.pid, '{"hour": 9}', role="tool")  # the result continues it: swapped back, not recomputed
    k.run_until_idle()
    assert agent.usage.swaps >= 1 and agent.usage.cached_tokens == 0 and agent.num_computed > computed
