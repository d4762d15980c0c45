"""Teacher-forced top-1 agreement between two servers (e.g. TP=2 against TP=1), through /generate.

Each server scores the same fixed token prompts (input_top_logprobs with top_logprobs_num=1:
the argmax at every prompt position), one run at a time since the two need the same GPUs:

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


def collect(args: argparse.Namespace) -> None:
    top1 = []
    for ids in prompts(args.num_prompts, args.len, args.vocab, args.seed):
        r = requests.post(f"http://127.0.0.1:{args.port}/generate", timeout=300, json={
            "input_ids": ids, "sampling_params": {"temperature": 0, "max_new_tokens": 1},
            "return_logprob": True, "logprob_start_len": 0, "top_logprobs_num": 1})
        r.raise_for_status()
        tops = r.json()["meta_info"]["input_top_logprobs"]
        top1.append([t[0][1] if t else None for t in tops])
    with open(args.out, "w") as f:
        json.dump(top1, f)


def compare(args: argparse.Namespace) -> None:
    a, b = (json.load(open(p)) for p in (args.a, args.b))
    pairs = [(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb) if x is not None and y is not None]
    agree = sum(x == y for x, y in pairs) / max(1, len(pairs))
    print(json.dumps({"tag": args.tag, "positions": len(pairs), "top1_agreement": round(agree, 5)}))
    if len(pairs) == 0 or agree < args.min:
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
