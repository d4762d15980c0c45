"""Teacher-forced top-1 agreement between two servers (e.g. TP=2 against TP=1), through /generate.

Each server scores the same fixed token prompts (input_top_logprobs with top_logprobs_num=1:
the argmax at every prompt position), one run at a time since the two need the same GPUs. Each
prompt is scored alone and again in one batch of all of them: on random (dummy) weights the
logits have near-ties that any rounding change flips, and batch-vs-alone on one server (other
GEMM shapes, the same model) is the noise floor that a TP=2 vs TP=1 figure is read against:

  python benchmarks/top1_agreement.py collect --port 30000 --out tp1.json [--num-prompts 8 --len 256]
  python benchmarks/top1_agreement.py compare tp1.json tp2.json --min 0.99

`compare` prints one JSON line (positions, agreement) and exits 1 below --min.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import List

import requests


def prompts(n: int, length: int, vocab: int, seed: int) -> List[List[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(length)] for _ in range(n)]


def score(port: int, input_ids) -> list:
    r = requests.post(f"http://127.0.0.1:{port}/generate", timeout=300, json={
        "input_ids": input_ids, "sampling_params": {"temperature": 0, "max_new_tokens": 1},
        "return_logprob": True, "logprob_start_len": 0, "top_logprobs_num": 1})
    r.raise_for_status()
    out = r.json()
    return [[t[0][1] if t else None for t in o["meta_info"]["input_top_logprobs"]]
            for o in (out if isinstance(out, list) else [out])]


def collect(args: argparse.Namespace) -> None:
    ps = prompts(args.num_prompts, args.len, args.vocab, args.seed)
    result = {"single": [score(args.port, ids)[0] for ids in ps], "batched": score(args.port, ps)}
    with open(args.out, "w") as f:
        json.dump(result, f)


def agreement(a: list, b: list) -> tuple:
    pairs = [(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb) if x is not None and y is not None]
    return len(pairs), sum(x == y for x, y in pairs) / max(1, len(pairs))


def compare(args: argparse.Namespace) -> None:
    a, b = (json.load(open(p)) for p in (args.a, args.b))
    n, agree = agreement(a["single"], b["single"])
    floor = {k: round(agreement(x["single"], x["batched"])[1], 5) for k, x in (("a", a), ("b", b))}
    print(json.dumps({"tag": args.tag, "positions": n, "top1_agreement": round(agree, 5),
                      "batch_vs_alone_a": floor["a"], "batch_vs_alone_b": floor["b"]}))
    if n == 0 or agree < args.min:
        sys.exit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--num-prompts", type=int, default=8)
    c.add_argument("--len", type=int, default=256)
    c.add_argument("--vocab", type=int, default=32000, help="prompt ids are drawn from [0, vocab)")
    c.add_argument("--seed", type=int, default=0)
    m = sub.add_parser("compare")
    m.add_argument("a")
    m.add_argument("b")
    m.add_argument("--min", type=float, default=0.99)
    m.add_argument("--tag", default="top1")
    args = ap.parse_args()
    collect(args) if args.cmd == "collect" else compare(args)


if __name__ == "__main__":
    main()
