"""Log-probabilities of generated tokens: in the kernel (against transformers' own logits), through
Read and Wait, and through the OpenAI gateway in its shapes, streaming and not."""
import math
import re

import openai
import pytest
import torch

from daemon import start_daemon
from llmos.kernel import ROOT, SpawnSpec, StopRules
from llmos.kernel.proc import SamplingParams

MODEL = "tiny-llama"


def reference(ref, tokens: list[int], n: int) -> list[torch.Tensor]:
    """log-softmax of transformers' logits at each generated position (greedy, alone)."""
    dev = ref.model.device
    with torch.no_grad():
        out = ref.model.generate(torch.tensor([tokens], device=dev), max_new_tokens=n, do_sample=False,
                                 attention_mask=torch.ones(1, len(tokens), dtype=torch.long, device=dev),
                                 output_logits=True, return_dict_in_generate=True)
    return [torch.log_softmax(x[0].float(), -1) for x in out.logits]


def test_logprobs_match_transformers_in_a_mixed_batch(make_kernel):
    k, ref = make_kernel()
    prompts = [[5, 6, 7], list(range(20, 57)), [9, 8]]
    lp = SamplingParams(logprobs=True, top_logprobs=5)
    procs = [k.spawn(ROOT, SpawnSpec("tiny", tokens=t, sampling=lp if i != 1 else SamplingParams(),
                                     stop=StopRules(max_tokens=10, ignore_eos=True))) for i, t in enumerate(prompts)]
    k.run_until_idle()
    assert procs[1].logprobs == []  # it did not ask: no work, nothing kept
    for p, t in ((procs[0], prompts[0]), (procs[2], prompts[2])):
        want = reference(ref, t, 10)
        assert [x.token for x in p.logprobs] == p.out_tokens == ref.greedy(t, 10)
        for x, w in zip(p.logprobs, want):
            assert math.isclose(x.logprob, w[x.token].item(), abs_tol=1e-4)
            top = w.topk(5)
            assert [a for a, _, _ in x.top] == top.indices.tolist()
            assert all(math.isclose(v, e, abs_tol=1e-4) for (_, _, v), e in zip(x.top, top.values.tolist()))
            assert x.top[0][0] == x.token  # greedy picks the most likely
        assert p.logprobs[-1].text_end == len(p.stdout) and "".join(x.text for x in p.logprobs) == p.stdout


def test_bad_logprob_requests_are_refused(make_kernel):
    k, _ = make_kernel()
    from llmos.kernel import InvalidArgument
    with pytest.raises(InvalidArgument, match=r"top_logprobs must be in \[0, 20\], got 21"):
        k.spawn(ROOT, SpawnSpec("tiny", tokens=[5], sampling=SamplingParams(logprobs=True, top_logprobs=21)))
    with pytest.raises(InvalidArgument, match="top_logprobs needs logprobs"):
        k.spawn(ROOT, SpawnSpec("tiny", tokens=[5], sampling=SamplingParams(top_logprobs=2)))


@pytest.fixture(scope="module")
def gw(tmp_path_factory, tiny_model_dir):
    d = start_daemon(tmp_path_factory.mktemp("logprobs"), str(tiny_model_dir), "--kv-pages", "256",
                     "--http", "127.0.0.1:0")
    d.url = re.search(r"http://\S+", d.ready).group(0).rstrip(",")
    with d.client(timeout=60) as admin:
        d.token = admin.create_token("lp", user="alice")[1]
    yield d
    d.stop_cleanly()


def test_read_and_wait_carry_them(gw):
    with gw.client(timeout=60) as c:
        pid = c.spawn(MODEL, "The quick brown fox", max_tokens=12, ignore_eos=True, logprobs=True, top_logprobs=2)
        chunks = list(c.read(pid))
        r = c.wait(pid)
    streamed = [x for ch in chunks for x in ch.logprobs]
    assert len(r.logprobs) == 12 and [x.token for x in streamed] == [x.token for x in r.logprobs]
    assert [x.logprob for x in streamed] == [x.logprob for x in r.logprobs] and all(len(x.top) == 2 for x in streamed)
    assert "".join(x.text for x in r.logprobs) == r.output  # the tokens' texts spell the output
    for ch in chunks:  # each chunk carries the tokens whose text it holds
        assert "".join(x.text for x in ch.logprobs) == ch.text or not ch.text


def test_openai_logprobs_streaming_and_not(gw):
    msgs = [{"role": "user", "content": "Hello world"}]
    greedy = {"temperature": 0, "max_tokens": 8, "extra_body": {"ignore_eos": True}}
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.token, max_retries=0, timeout=60) as oai:
        r = oai.chat.completions.create(model=MODEL, messages=msgs, logprobs=True, top_logprobs=3, **greedy)
        content = r.choices[0].logprobs.content
        assert len(content) == 8 and "".join(x.token for x in content) == r.choices[0].message.content
        assert all(len(x.top_logprobs) == 3 and x.top_logprobs[0].logprob >= x.top_logprobs[1].logprob
                   and x.logprob <= 0 and x.bytes == list(x.token.encode()) for x in content)
        chunks = list(oai.chat.completions.create(model=MODEL, messages=msgs, logprobs=True, top_logprobs=3,
                                                  stream=True, **greedy))
        streamed = [x for ch in chunks if ch.choices and ch.choices[0].logprobs for x in ch.choices[0].logprobs.content]
        assert [x.token for x in streamed] == [x.token for x in content]  # the second run hits the prefix cache:
        assert all(math.isclose(a.logprob, b.logprob, abs_tol=1e-5) for a, b in zip(streamed, content))  # last bits
        plain = oai.chat.completions.create(model=MODEL, messages=msgs, **greedy)
        assert plain.choices[0].logprobs is None
        t = oai.completions.create(model=MODEL, prompt="The quick brown fox", logprobs=2, **greedy)
        lp = t.choices[0].logprobs
        assert len(lp.tokens) == 8 and "".join(lp.tokens) == t.choices[0].text and len(lp.top_logprobs[0]) <= 2
        assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])
        with pytest.raises(openai.BadRequestError, match="top_logprobs"):
            oai.chat.completions.create(model=MODEL, messages=msgs, logprobs=True, top_logprobs=21, **greedy)
