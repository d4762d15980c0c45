"""Both grammar backends through GrammarManager on the default model's tokenizer: the grammar
kinds, the strict-tool structural tag, and the start-up errors of --grammar-backend."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from sglserve.constrained import backend_problem
from sglserve.entrypoints.openai.chat_tool_grammar import strict_structural_tag
from sglserve.entrypoints.openai.protocol import Tool
from sglserve.sampling.sampling_params import SamplingParams
from sglserve.scheduler.grammar_manager import GrammarManager
from sglserve.server_args import ServerArgs, ServerArgsError

WEATHER = {"type": "object", "properties": {"city": {"enum": ["Paris", "Lima"]}}, "required": ["city"]}


class R:
    def __init__(self, rid, **kw):
        self.rid, self.grammar = rid, None
        self.sampling_params = SamplingParams(**kw)


def matcher(gm, **kw):
    req = R("r", **kw)
    assert gm.add(req) is None
    deadline = time.time() + 30
    while len(gm) and time.time() < deadline:
        ready, failed = gm.pop_ready()
        assert not failed, failed
    return req


def accepts(gm, tokenizer, text, **kw):
    """Whether the grammar takes `text` and then the stop token."""
    req = matcher(gm, **kw)
    for tok in tokenizer.encode(text, add_special_tokens=False):
        if gm.accept(req, tok) is not None:
            return False
    return gm.accept(req, tokenizer.eos_token_id) is None and req.grammar.is_terminated()


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance"])
def test_grammar_kinds_and_strict_tools(tokenizer, backend):
    gm = GrammarManager(tokenizer, 49152, {tokenizer.eos_token_id}, backend)
    assert accepts(gm, tokenizer, '{"city": "Paris"}', json_schema=str(WEATHER).replace("'", '"'))
    assert not accepts(gm, tokenizer, '{"city": "Rome"}', json_schema=str(WEATHER).replace("'", '"'))
    assert accepts(gm, tokenizer, "555-1234", regex=r"\d{3}-\d{4}")
    assert not accepts(gm, tokenizer, "555-12345", regex=r"\d{3}-\d{4}")
    assert accepts(gm, tokenizer, "dog, cat", ebnf='root ::= a (", " a)?\na ::= "cat" | "dog"')
    tools = [Tool(function={"name": "get_weather", "parameters": WEATHER, "strict": True}),
             Tool(function={"name": "free", "parameters": {"type": "object"}})]
    tag = strict_structural_tag("hermes", tools)
    good = 'Let me look.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lima"}}\n</tool_call>'
    assert accepts(gm, tokenizer, good, structural_tag=tag)
    assert accepts(gm, tokenizer, "Just text, no call.", structural_tag=tag)
    assert not accepts(gm, tokenizer, good.replace("Lima", "Rome"), structural_tag=tag)  # strict: the schema holds
    assert not accepts(gm, tokenizer, good.replace("get_weather", "unknown"), structural_tag=tag)
    assert strict_structural_tag("hermes", tools[1:]) is None  # no strict tool: no grammar
    gm.backend.shutdown()


def test_backend_start_up_errors(monkeypatch):
    assert "not supported" in backend_problem("outlines")
    with pytest.raises(ServerArgsError, match="outlines"):
        ServerArgs(device="cpu", grammar_backend="outlines")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llguidance" else real(name, *a))
    assert backend_problem("llguidance") == ("--grammar-backend=llguidance needs the llguidance package, which is not "
                                             "installed: pip install llguidance")


@pytest.mark.parametrize("value", ["outlines", "bogus"])
def test_launch_refuses_a_backend_in_one_line(value):
    run = subprocess.run([sys.executable, "-m", "sglserve.launch_server", "--device", "cpu", "--grammar-backend", value],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "--grammar-backend" in lines[0] and "Traceback" not in run.stderr, run.stderr
