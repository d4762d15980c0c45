"""One tensor-parallel rank of the TP unit tests (test_tensor_parallel.py): joins a gloo group,
loads each tiny model's shard and runs the same paged-KV scenario as TP=1 (model_driver)."""

from __future__ import annotations

import traceback
from typing import Dict, List, Sequence, Tuple

import torch

from model_driver import PagedModelRunner, load_model

STEPS = 12


def prompt(n: int, seed: int, vocab: int) -> List[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def scenario(model_path: str, load_format: str) -> Dict[str, object]:
    """Batched prefill, a 3-chunk prefill and a prefix hit, then greedy decode: tokens and logits."""
    model, config = load_model(model_path, load_format=load_format)
    v = config.vocab_size
    out: Dict[str, object] = {}
    runner = PagedModelRunner(model, config, page_size=4)
    prompts = [prompt(n, 10 + n, v) for n in (5, 17, 30, 1)]
    reqs = [runner.new_req() for _ in prompts]
    first = runner.extend(reqs, prompts, return_all_logits=True)
    out["batched_logits"] = first.all_logits
    out["batched_tokens"] = runner.greedy(reqs, first.next_token_logits, STEPS)
    runner = PagedModelRunner(model, config, page_size=1)
    ids = prompt(40, 1, v)
    req = runner.new_req()
    chunks = [runner.extend([req], [c]) for c in (ids[:13], ids[13:27], ids[27:])]
    out["chunked_logits"] = chunks[-1].next_token_logits
    out["chunked_tokens"] = runner.greedy([req], chunks[-1].next_token_logits, STEPS)
    shared = prompt(37, 2, v)
    a, b = runner.new_req(), runner.new_req()
    a_out = runner.extend([a], [shared + prompt(6, 3, v)])
    runner.share_prefix(a, b, 36)
    b_out = runner.extend([b], [(shared + prompt(9, 4, v))[36:]])
    out["hit_tokens"] = runner.greedy([a, b], torch.cat([a_out.next_token_logits, b_out.next_token_logits]), STEPS)
    return out


def run_rank(rank: int, tp: int, addr: str, cases: Sequence[Tuple[str, str, str]], results) -> None:
    from sglserve.distributed.parallel_state import destroy_tp_group, init_tp_group

    torch.set_num_threads(1)
    try:
        init_tp_group(rank, tp, addr, torch.device("cpu"))
        for name, path, fmt in cases:
            out = scenario(path, fmt)  # tensors as numpy: pickled by value, not shared with a dying process
            results.put((rank, name, {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in out.items()}))
        destroy_tp_group()
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))
