"""Micro-benchmark of the Triton attention kernels at Llama-3.1-8B shapes (one layer:
32 q heads, 8 kv heads, head dim 128, bf16 KV in pages scattered over the pool).

Decode: every (batch size, context) pair, timed with triton.testing.do_bench (L2 flushed
between runs), reported as achieved HBM bandwidth: bytes of K and V read plus q, o,
req_to_token and split scratch, over the time. Decode attention is bandwidth bound, so
GB/s against the card's peak is the figure of merit.
Extend (--extend): a few prefill shapes, reported as TFLOP/s (causal FLOPs only).

    python benchmarks/kernels/bench_attention.py                      # decode grid
    python benchmarks/kernels/bench_attention.py --extend --json out.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import torch
import triton

ROOT = Path(__file__).resolve().parents[2]


def _import_sglserve_kernels() -> None:
    try:
        import sglserve_kernels  # noqa: F401
    except ImportError:  # not pip-installed: map the name onto the repo's kernels/ folder
        spec = importlib.util.spec_from_file_location(
            "sglserve_kernels", ROOT / "kernels" / "__init__.py", submodule_search_locations=[str(ROOT / "kernels")]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["sglserve_kernels"] = module
        spec.loader.exec_module(module)


_import_sglserve_kernels()

from sglserve_kernels.attn_decode import (  # noqa: E402
    decode_attention_fwd,
    decode_attention_ref,
    decode_kv_splits,
    decode_max_splits,
)
from sglserve_kernels.attn_extend import extend_attention_fwd, extend_attention_ref  # noqa: E402
from sglserve_kernels.kv_store import store_kv_cache, store_kv_cache_ref  # noqa: E402
from sglserve_kernels._utils import num_sms  # noqa: E402

PEAK_GBS = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0}  # nominal HBM bandwidth (SXM parts)


def peak_bandwidth() -> float | None:
    name = torch.cuda.get_device_name()
    for key, gbs in PEAK_GBS.items():
        if key in name:
            return gbs
    return None


def ints(text: str):
    return [int(x) for x in text.split(",") if x]


def shapes(text: str):
    return [tuple(int(v) for v in item.split(":")) for item in text.split(",") if item]


class Pool:
    """One layer's K/V for max_tokens tokens, handed to requests as randomly ordered pages."""

    def __init__(self, max_bs: int, max_ctx: int, page_size: int, heads_kv: int, head_dim: int, dtype):
        self.page_size = page_size
        pages_per_req = -(-max_ctx // page_size)
        num_pages = max_bs * pages_per_req
        slots_total = (num_pages + 1) * page_size  # page 0 reserved, as in MHATokenToKVPool
        self.k = torch.randn(slots_total, heads_kv, head_dim, dtype=dtype, device="cuda")
        self.v = torch.randn(slots_total, heads_kv, head_dim, dtype=dtype, device="cuda")
        pages = torch.randperm(num_pages, device="cuda") + 1
        offs = torch.arange(page_size, device="cuda")
        slots = (pages.view(max_bs, pages_per_req)[:, :, None] * page_size + offs).view(max_bs, -1)
        self.req_to_token = slots[:, :max_ctx].to(torch.int32).contiguous()


def bench_decode(args, pool: Pool, bs: int, ctx: int, check: bool) -> dict:
    h, hkv, d = args.heads, args.kv_heads, args.head_dim
    dtype = pool.k.dtype
    q = torch.randn(bs, h, d, dtype=dtype, device="cuda")
    o = torch.empty_like(q)
    rows = torch.arange(bs, dtype=torch.int64, device="cuda")
    seq_lens = torch.full((bs,), ctx, dtype=torch.int32, device="cuda")
    splits_cap = decode_max_splits(bs, hkv, args.max_kv_splits, num_sms())
    num_kv_splits = decode_kv_splits(seq_lens, hkv, args.max_kv_splits)
    mid_o = torch.empty(bs, h, splits_cap, d, dtype=torch.float32, device="cuda")
    mid_lse = torch.empty(bs, h, splits_cap, dtype=torch.float32, device="cuda")
    scale = 1.0 / math.sqrt(d)

    def fn():
        decode_attention_fwd(q, pool.k, pool.v, o, pool.req_to_token, rows, seq_lens, num_kv_splits,
                             mid_o, mid_lse, scale)

    if check:
        fn()
        ref = decode_attention_ref(q, pool.k, pool.v, pool.req_to_token, rows, seq_lens, scale)
        err = (o.float() - ref.float()).abs().max().item()
        assert err < 2e-2, f"decode bs={bs} ctx={ctx}: max error {err}"
    ms = triton.testing.do_bench(fn, warmup=25, rep=100)
    elt = pool.k.element_size()
    kv_bytes = 2 * bs * ctx * hkv * d * elt
    other = 2 * bs * h * d * elt + bs * ctx * 4 + 2 * bs * h * splits_cap * (d + 1) * 4
    gbs = (kv_bytes + other) / (ms * 1e-3) / 1e9
    return dict(kind="decode", bs=bs, ctx=ctx, ms=ms, gbs=gbs, splits=int(num_kv_splits.max().item()),
                splits_cap=splits_cap)


def bench_extend(args, pool: Pool, bs: int, prefix: int, ext: int, check: bool) -> dict:
    h, hkv, d = args.heads, args.kv_heads, args.head_dim
    dtype = pool.k.dtype
    t = bs * ext
    q = torch.randn(t, h, d, dtype=dtype, device="cuda")
    k = torch.randn(t, hkv, d, dtype=dtype, device="cuda")
    v = torch.randn(t, hkv, d, dtype=dtype, device="cuda")
    o = torch.empty_like(q)
    i32 = dict(dtype=torch.int32, device="cuda")
    rows = torch.arange(bs, dtype=torch.int64, device="cuda")
    meta = (torch.full((bs,), prefix, **i32), torch.full((bs,), ext, **i32), torch.arange(0, t, ext, **i32))
    scale = 1.0 / math.sqrt(d)

    def fn():
        extend_attention_fwd(q, k, v, o, pool.k, pool.v, pool.req_to_token, rows, *meta, ext, scale)

    if check:
        fn()
        ref = extend_attention_ref(q, k, v, pool.k, pool.v, pool.req_to_token, rows, *meta, scale)
        err = (o.float() - ref.float()).abs().max().item()
        assert err < 2e-2, f"extend bs={bs} prefix={prefix} ext={ext}: max error {err}"
    ms = triton.testing.do_bench(fn, warmup=25, rep=100)
    flops = bs * 4 * h * d * (ext * prefix + ext * (ext + 1) / 2)
    return dict(kind="extend", bs=bs, prefix=prefix, ext=ext, ms=ms, tflops=flops / (ms * 1e-3) / 1e12)


def bench_kv_store(args, pool: Pool, num_tokens: int) -> dict:
    """One Triton launch for K and V vs plain indexing (two index_put launches)."""
    hkv, d = args.kv_heads, args.head_dim
    num_tokens = min(num_tokens, pool.req_to_token.numel())
    k = torch.randn(num_tokens, hkv * d, dtype=pool.k.dtype, device="cuda")
    v = torch.randn_like(k)
    loc = pool.req_to_token.flatten()[torch.randperm(pool.req_to_token.numel(), device="cuda")[:num_tokens]].long()
    triton_ms = triton.testing.do_bench(lambda: store_kv_cache(pool.k, pool.v, loc, k, v), warmup=25, rep=100)
    index_ms = triton.testing.do_bench(lambda: store_kv_cache_ref(pool.k, pool.v, loc, k, v), warmup=25, rep=100)
    return dict(kind="kv_store", tokens=num_tokens, triton_ms=triton_ms, index_ms=index_ms)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bs", type=ints, default=ints("1,8,16,32,64,128,256"))
    p.add_argument("--ctx", type=ints, default=ints("512,1024,2048,4096,8192"))
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--max-kv-splits", type=int, default=16)
    p.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    p.add_argument("--extend", action="store_true", help="also time prefill shapes")
    p.add_argument("--extend-shapes", type=shapes, default=shapes("1:0:8192,4:0:2048,16:0:512,8:1024:512,64:0:128,32:2048:64"),
                   help="bs:prefix:extend triples for --extend")
    p.add_argument("--no-check", action="store_true", help="skip the accuracy check of small configs")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_attention needs a CUDA GPU")
    dtype = getattr(torch, args.dtype)
    peak = peak_bandwidth()
    print(f"# {torch.cuda.get_device_name()} ({num_sms()} SMs), triton {triton.__version__}, torch {torch.__version__}; "
          f"H={args.heads} KVH={args.kv_heads} D={args.head_dim} {args.dtype} page_size={args.page_size}; "
          f"peak {peak or '?'} GB/s")
    results = []
    extend_shapes = args.extend_shapes
    max_ctx = max(args.ctx + ([p + e for _, p, e in extend_shapes] if args.extend else []))
    max_bs = max(args.bs + ([b for b, _, _ in extend_shapes] if args.extend else []))
    pool = Pool(max_bs, max_ctx, args.page_size, args.kv_heads, args.head_dim, dtype)

    print(f"{'bs':>5} {'ctx':>6} {'splits':>6} {'us':>9} {'GB/s':>8} {'%peak':>6}")
    for bs in args.bs:
        for ctx in args.ctx:
            r = bench_decode(args, pool, bs, ctx, check=not args.no_check and bs * ctx <= 64 * 1024)
            pct = f"{100 * r['gbs'] / peak:5.1f}%" if peak else "   ?"
            print(f"{bs:>5} {ctx:>6} {r['splits']:>6} {r['ms'] * 1e3:>9.1f} {r['gbs']:>8.0f} {pct:>6}", flush=True)
            results.append(r)

    if args.extend:
        print(f"\n{'bs':>5} {'prefix':>6} {'ext':>6} {'us':>9} {'TFLOP/s':>8}")
        for bs, prefix, ext in extend_shapes:
            r = bench_extend(args, pool, bs, prefix, ext, check=not args.no_check and bs * ext <= 4096)
            print(f"{bs:>5} {prefix:>6} {ext:>6} {r['ms'] * 1e3:>9.1f} {r['tflops']:>8.1f}", flush=True)
            results.append(r)

    print(f"\n{'tokens':>7} {'triton us':>10} {'index us':>10}   (KV store, one layer)")
    for n in (1, 8, 64, 256, 2048, 8192):
        r = bench_kv_store(args, pool, n)
        print(f"{n:>7} {r['triton_ms'] * 1e3:>10.1f} {r['index_ms'] * 1e3:>10.1f}", flush=True)
        results.append(r)

    if args.json:
        meta = dict(device=torch.cuda.get_device_name(), sms=num_sms(), triton=triton.__version__,
                    torch=torch.__version__, args={k: str(v) for k, v in vars(args).items()}, peak_gbs=peak)
        args.json.write_text(json.dumps(dict(meta=meta, results=results), indent=1))


if __name__ == "__main__":
    main()
