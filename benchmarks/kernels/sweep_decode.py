"""Sweep the grouped decode-attention tile (BLOCK_N, warps, stages) at Llama-3.1-8B shapes.

Prints achieved GB/s per config and, last, the best as SGLSERVE_DECODE_CFG=... (by summed
time over the shapes). Run on the GPU: python benchmarks/kernels/sweep_decode.py
"""

from __future__ import annotations

import itertools
import os

import torch
import triton

SHAPES = [(256, 512), (768, 512)]  # (batch, context)
H, KVH, D = 32, 8, 128


def make(bs, ctx):
    slots = bs * ctx + 16
    k = torch.randn(slots, KVH, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    q = torch.randn(bs, H, D, device="cuda", dtype=torch.bfloat16)
    perm = torch.randperm(slots - 16, device="cuda")[: bs * ctx] + 16
    req_to_token = perm.view(bs, ctx).to(torch.int32)
    return q, k, v, req_to_token


def main():
    import sglserve_kernels.attn_decode as ad

    configs = list(itertools.product([32, 64, 128], [4, 8], [2, 3]))
    inputs = {s: make(*s) for s in SHAPES}
    totals = {}
    for cfg in configs:
        os.environ["SGLSERVE_DECODE_CFG"] = ",".join(map(str, cfg))
        total, row = 0.0, []
        try:
            for (bs, ctx), (q, k, v, r2t) in inputs.items():
                o = torch.empty_like(q)
                seq = torch.full((bs,), ctx, dtype=torch.int32, device="cuda")
                rows = torch.arange(bs, device="cuda")
                splits = ad.decode_kv_splits(seq, KVH)
                ms = ad.decode_max_splits(bs, KVH, ad.DEFAULT_MAX_KV_SPLITS, torch.cuda.get_device_properties(0).multi_processor_count)
                mid_o = torch.empty(bs, H, ms, D, device="cuda", dtype=torch.float32)
                mid_lse = torch.empty(bs, H, ms, device="cuda", dtype=torch.float32)
                fn = lambda: ad.decode_attention_fwd(q, k, v, o, r2t, rows, seq, splits, mid_o, mid_lse, D ** -0.5)
                t = triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")
                gbs = bs * ctx * KVH * D * 2 * 2 / t / 1e6
                total += t
                row.append(f"bs{bs}/ctx{ctx}: {t * 1e3:7.1f} us {gbs:6.0f} GB/s")
        except Exception as e:  # a tile that does not compile or fit
            print(cfg, "failed:", type(e).__name__, str(e)[:80])
            continue
        totals[cfg] = total
        print(cfg, " | ".join(row), flush=True)
    best = min(totals, key=totals.get)
    print("SGLSERVE_DECODE_CFG=" + ",".join(map(str, best)))


if __name__ == "__main__":
    main()
