"""The benchmark tools against a live default-model server, and Engine parity with HTTP."""

from __future__ import annotations

import os

import pytest
import requests

from sglserve import bench_serving

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "unit", "fixtures")


def bench(server, **kw):
    args = dict(base_url=server.base_url, disable_tqdm=True, warmup_requests=0, seed=0, output_details=True)
    args.update(kw)
    return bench_serving.run_benchmark(args)


@pytest.mark.parametrize(
    "backend,kw",
    [
        ("sglserve", dict(dataset_name="random", num_prompts=6, random_input_len=16, random_output_len=4,
                          request_rate=float("inf"))),
        ("openai", dict(dataset_name="random", num_prompts=4, random_input_len=16, random_output_len=4,
                        request_rate=20.0, max_concurrency=2)),
        ("openai-chat", dict(dataset_name="sharegpt", dataset_path=os.path.join(FIXTURES, "sharegpt_truncated.json"),
                             num_prompts=3, sharegpt_output_len=4, request_rate=float("inf"))),
        ("sglserve", dict(dataset_name="generated-shared-prefix", gsp_num_groups=2, gsp_prompts_per_group=3,
                          gsp_system_prompt_len=48, gsp_question_len=8, gsp_output_len=4, max_concurrency=3)),
    ],
)
def test_load_generator_on_live_server(server, backend, kw):
    res = bench(server, backend=backend, **kw)
    n = kw["num_prompts"] if "num_prompts" in kw else kw["gsp_num_groups"] * kw["gsp_prompts_per_group"]
    assert (res["completed"], res["failed"]) == (n, 0), {k: v for k, v in res.items() if not isinstance(v, (list, dict))}
    assert res["duration"] > 0 and res["output_throughput"] > 0
    # Metrics come from real timestamps: positive, ordered, and TTFT below end-to-end latency
    assert 0 < res["median_ttft_ms"] <= res["median_e2e_latency_ms"]
    assert res["mean_itl_ms"] > 0
    if kw.get("max_concurrency"):
        # time-averaged requests in flight cannot exceed the cap
        assert res["concurrency"] <= kw["max_concurrency"] + 1e-6
    if kw["dataset_name"] == "generated-shared-prefix":
        assert res["cache_hit_rate"] > 0  # the groups share their system prompt through the radix cache


def test_engine_matches_http_greedy(server):
    import sglserve

    prompts = ["The capital of France is", "List three colors:"]
    params = {"temperature": 0, "max_new_tokens": 12}
    http = [requests.post(server.base_url + "/generate", json={"text": p, "sampling_params": params}, timeout=120).json()
            for p in prompts]
    lp_args = {"return_logprob": True, "top_logprobs_num": 2, "logprob_start_len": 0, "return_text_in_logprobs": True}
    http_lp = requests.post(server.base_url + "/generate", json={"text": prompts[0], "sampling_params": params, **lp_args},
                            timeout=120).json()
    engine = sglserve.Engine(max_total_tokens=4096)
    try:
        outs = engine.generate(prompts, params)
        streamed = list(engine.generate(prompts[0], params, stream=True))
        engine_lp = engine.generate(prompts[0], params, **lp_args)
        with pytest.raises(ValueError, match="context length"):  # what the server answers with 400
            engine.generate("word " * 10000, params)
        with pytest.raises(ValueError):  # a bad prompt in a batch withdraws the whole batch
            engine.generate([prompts[0], "word " * 10000], params)
        assert engine.scheduler.check_memory_integrity() and not engine.scheduler.planner.waiting
    finally:
        engine.shutdown()
    for key in ("output_token_logprobs", "input_token_logprobs", "output_top_logprobs"):
        got, want = engine_lp["meta_info"][key], http_lp["meta_info"][key]
        assert len(got) == len(want) > 0, key
        flat_got = [e for entry in got for e in (entry if key.endswith("top_logprobs") else [entry])]
        flat_want = [e for entry in want for e in (entry if key.endswith("top_logprobs") else [entry])]
        assert [list(e[1:]) for e in flat_got] == [list(e[1:]) for e in flat_want], key  # token ids and texts
        for a, b in zip(flat_got, flat_want):
            assert (a[0] is None and b[0] is None) or abs(a[0] - b[0]) < 1e-4, key
    assert [o["text"] for o in outs] == [h["text"] for h in http]
    assert [o["output_ids"] for o in outs] == [h["output_ids"] for h in http]
    assert streamed[-1]["text"] == outs[0]["text"]
    assert all(streamed[i + 1]["text"].startswith(streamed[i]["text"]) for i in range(len(streamed) - 1))
