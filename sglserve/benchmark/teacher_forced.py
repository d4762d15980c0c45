"""Teacher-forced scoring of a fixed chat text through a real ModelRunner: the accuracy bars of
issue 12 (fp8 weights, fp8 KV cache against the unquantized model) are measured with it, by
benchmarks/fp8_accuracy.py and the CPU / GPU tests.

The text: the first N ShareGPT conversations (file order, roles human -> user, gpt -> assistant),
each rendered through the model's chat template and cut to a token cap. They are read from the
installed ShareGPT JSON or from a small extracted file (`write_conversations`), so a machine
without the ShareGPT package scores the same text.

Each conversation is scored alone, as one EXTEND of a fresh request, on the ModelRunner's own
pools, attention backend and forward: the path a served prefill takes. Only per-position
negative log-likelihoods and argmaxes are kept (a 1024 x 49k logits matrix per conversation
would not fit many times over).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence

import torch

from sglserve.benchmark.datasets import GPT_ROLES, HUMAN_ROLES, iter_json_array
from sglserve.model_executor.forward_batch import ForwardBatch, ForwardMode

Conversation = List[Dict[str, str]]  # [{"role": "user" | "assistant", "content": ...}, ...]
EXTRACT_FORMAT = "sglserve-chat-conversations-v1"


def build_runner(model_path: str, device: str, dtype: str, max_tokens: int, weights_only: bool = False,
                 **server_args: Any) -> Any:
    """A ModelRunner as the server builds one from these flags (e.g. quantization="fp8",
    kv_cache_dtype="fp8_e4m3"), with a pool for one conversation of max_tokens and no CUDA graphs
    (a prefill does not use them). weights_only: the fp8 scheme with activations left in the
    model dtype (W8A16), which no flag selects: for comparison with the served W8A8."""
    from sglserve.configs.model_config import ModelConfig
    from sglserve.model_executor.model_runner import ModelRunner
    from sglserve.server_args import ServerArgs

    sa = ServerArgs(model_path=model_path, device=device, dtype=dtype, max_total_tokens=max_tokens + 64,
                    max_running_requests=2, disable_cuda_graph=True, **server_args)
    mc = ModelConfig.from_server_args(sa)
    if weights_only:
        mc.quant_scheme = dataclasses.replace(mc.quant_scheme, activation=None)
    return ModelRunner(mc, sa)


def sharegpt_conversation(record: Any) -> Conversation:
    """A ShareGPT record's turns as chat messages (human -> user, gpt -> assistant; others dropped)."""
    turns = (record.get("conversations") or record.get("conversation") or []) if isinstance(record, dict) else []
    messages = []
    for turn in turns:
        who = turn.get("from") if isinstance(turn, dict) else None
        role = "user" if who in HUMAN_ROLES else "assistant" if who in GPT_ROLES else None
        if role is not None:
            messages.append({"role": role, "content": str(turn.get("value", ""))})
    return messages


def load_conversations(path: str, n: int) -> List[Conversation]:
    """The first n conversations with at least one message: from a ShareGPT JSON array, or from a
    file written by write_conversations."""
    with open(path, "r", encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    if head.startswith("{"):
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
        if data.get("format") != EXTRACT_FORMAT:
            raise ValueError(f"{path}: not a ShareGPT JSON array nor a {EXTRACT_FORMAT} file")
        convs = data["conversations"]
    else:
        convs = (c for c in map(sharegpt_conversation, iter_json_array(path)) if c)
    out = list(itertools.islice(convs, n))
    if len(out) < n:
        raise ValueError(f"{path}: only {len(out)} conversations, {n} asked for")
    return out


def write_conversations(path: str, conversations: Sequence[Conversation], source: str) -> None:
    """The small file a machine without the ShareGPT package reads (load_conversations)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"format": EXTRACT_FORMAT, "source": source, "conversations": list(conversations)}, f,
                  ensure_ascii=False)


def chat_token_ids(tokenizer: Any, conversations: Sequence[Conversation], max_tokens: int) -> List[List[int]]:
    """Each conversation through the chat template, tokenized, cut to its first max_tokens ids."""
    texts = [tokenizer.apply_chat_template(list(c), tokenize=False) for c in conversations]
    return [tokenizer.encode(t, add_special_tokens=False)[:max_tokens] for t in texts]


@dataclass
class Scored:
    """One conversation: at each position i < len - 1, -log p(ids[i + 1]) and the argmax token."""

    nll: torch.Tensor  # float64 [len - 1]
    top1: torch.Tensor  # int64 [len - 1]


def score(model_runner: Any, token_ids: Sequence[Sequence[int]]) -> List[Scored]:
    """Teacher-forced scoring of every conversation as one prefill of its own on model_runner."""
    mr = model_runner
    out: List[Scored] = []
    for ids in token_ids:
        n = len(ids)
        row = mr.req_to_token_pool.alloc(1)[0]
        slots = mr.allocator.alloc_extend([0], [n], [-1])
        if slots is None:
            raise RuntimeError(f"KV pool of {mr.max_total_num_tokens} tokens cannot hold {n}")
        mr.req_to_token_pool.req_to_token[row, :n] = slots.to(mr.req_to_token_pool.req_to_token)
        fb = ForwardBatch.build(ForwardMode.EXTEND, list(ids), [row], [0], [n], slots, mr.device, True)
        logits = mr.forward(fb).all_logits[: n - 1].float()
        target = torch.tensor(ids[1:], device=logits.device)
        nll = -torch.log_softmax(logits, -1).gather(1, target[:, None])[:, 0]
        out.append(Scored(nll.double().cpu(), logits.argmax(-1).cpu()))
        mr.allocator.free(slots)
        mr.req_to_token_pool.free(row)
    return out


def perplexity(scored: Sequence[Scored]) -> float:
    """exp of the mean negative log-likelihood over every scored position."""
    return math.exp(float(torch.cat([s.nll for s in scored]).mean()))


def top1_agreement(a: Sequence[Scored], b: Sequence[Scored]) -> float:
    """Fraction of positions where both runs' argmax is the same token."""
    same = sum(int((x.top1 == y.top1).sum()) for x, y in zip(a, b))
    return same / sum(x.top1.numel() for x in a)
