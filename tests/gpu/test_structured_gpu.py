"""Constrained decoding and logit adjustments on the GPU: the xgrammar bitmask applied to CUDA
logits (a random model, so only the grammar keeps the output in shape), penalties,
logit_bias, seeds, with CUDA graphs and overlap on.

Run on the GPU machine: python -m pytest tests/gpu -q (needs the SmolLM2 tokenizer in
.tok/smollm2 or SGLSERVE_GPU_TOKENIZER). Skipped without CUDA.
"""

from __future__ import annotations

import json
import os
import re

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from sglserve.engine import Engine  # noqa: E402
from tests.server.structured_schemas import SCHEMAS  # noqa: E402

TOKENIZER = os.environ.get("SGLSERVE_GPU_TOKENIZER", ".tok/smollm2")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    if not os.path.isdir(TOKENIZER):
        pytest.skip(f"no tokenizer at {TOKENIZER}")
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=49152, max_position_embeddings=2048, eos_token_id=2,
                      bos_token_id=1, tie_word_embeddings=True)
    d = tmp_path_factory.mktemp("gpu_grammar")
    cfg.save_pretrained(d)
    eng = Engine(model_path=str(d), load_format="dummy", tokenizer_path=TOKENIZER, device="cuda", dtype="bfloat16",
                 random_seed=0)
    yield eng
    eng.shutdown()


def test_grammars_on_cuda_logits(engine):
    schemas = [s for s in SCHEMAS if "number" not in json.dumps(s)]  # random weights: keep every value bounded
    params = [{"json_schema": json.dumps(s), "max_new_tokens": 160, "temperature": 0.7, "seed": i}
              for i, s in enumerate(schemas)]
    params += [{"regex": r"\d{3}-\d{4}", "max_new_tokens": 20, "temperature": 1.0, "seed": 1},
               {"ebnf": 'root ::= "yes" | "no"', "max_new_tokens": 8, "temperature": 1.0, "seed": 2},
               {"max_new_tokens": 16, "temperature": 0, "ignore_eos": True}]  # unconstrained, same batch
    outs = engine.generate(["Answer:"] * len(params), params)
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - the GPU image may lack it; parsing is still checked
        jsonschema = None
    for s, out in zip(schemas, outs):
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out
        value = json.loads(out["text"])
        if jsonschema is not None:
            jsonschema.validate(value, s)
    assert re.fullmatch(r"\d{3}-\d{4}", outs[-3]["text"]), outs[-3]
    assert outs[-2]["text"] in ("yes", "no")
    assert outs[-1]["meta_info"]["completion_tokens"] == 16


def test_bias_penalties_seed_on_cuda(engine):
    base = {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True}
    plain, banned, boosted, freq = engine.generate(["Hello"] * 4, [
        base, {**base, "logit_bias": {}}, {**base, "logit_bias": {"42": 100}}, {**base, "frequency_penalty": 2.0}])
    ban = plain["output_ids"][0]
    again = engine.generate("Hello", {**base, "logit_bias": {str(ban): -100}})
    assert ban not in again["output_ids"] and banned["output_ids"] == plain["output_ids"]
    assert set(boosted["output_ids"]) == {42}
    assert len(set(freq["output_ids"])) >= len(set(plain["output_ids"]))
    sampled = {"max_new_tokens": 16, "temperature": 1.0, "ignore_eos": True}
    a, b, c = engine.generate(["Hi"] * 3, [{**sampled, "seed": 7}, {**sampled, "seed": 7}, {**sampled, "seed": 8}])
    assert a["output_ids"] == b["output_ids"] != c["output_ids"]
