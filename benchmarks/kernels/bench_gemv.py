"""Decode-sized linears (M in 1..16): cuBLAS bf16, row-wise `torch._scaled_mm` FP8 (x quantized per
token, as the runtime would run it: from the FP8 rows that the kernel before each linear wrote (the
RMSNorm, SiLU-and-mul and, for o_proj, decode attention's merge with the Triton backend);
--no-fused-input: from bf16 x, the GEMM quantizing it) and the skinny GEMM (kernels/gemv.py) over a config sweep, in
TB/s of weight read. Writes the winners as the selection table the runtime loads
(kernels/gemv_dispatch.py): `use` is true where the kernel beat the baseline by >= 3 %.

Shapes: Llama-3.1-8B (qkv, o, gate_up, down), its TP=2 shards and Llama-3.1-70B's TP=4 shards.
Every timing is a CUDA graph of one call per weight copy, enough copies that they do not fit in
L2 (so W streams from HBM as in a real forward), replayed 20 times.

    python benchmarks/kernels/bench_gemv.py --out kernels/gemv_table.json      # GPU: sweep, write table
    python benchmarks/kernels/bench_gemv.py --write-default kernels/gemv_table.json  # reasoning only
    TRITON_INTERPRET=1 python benchmarks/kernels/bench_gemv.py --dry --out /tmp/t.json  # CPU: code path
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attention import peak_bandwidth  # noqa: E402  (also maps sglserve_kernels onto kernels/)

from sglserve_kernels._utils import num_sms  # noqa: E402
from sglserve_kernels.gemv import FMA_MAX_M, GemvConfig, skinny_gemm, skinny_gemm_fp8, skinny_gemm_fp8_ref, skinny_gemm_ref  # noqa: E402
from sglserve_kernels.fp8_rows import quantize_rows  # noqa: E402
from sglserve_kernels.gemv_dispatch import entry_config, heuristic_config, m_bucket, scaled_mm_rowwise, table_key  # noqa: E402
from sglserve_kernels.numerics import Fp8Rows  # noqa: E402

MODELS = {  # name: (hidden, intermediate, heads, kv heads, head dim, tp)
    "8b": (4096, 14336, 32, 8, 128, 1), "8b_tp2": (4096, 14336, 32, 8, 128, 2), "70b_tp4": (8192, 28672, 64, 8, 128, 4),
}
M_LIST = (1, 2, 4, 8, 16)
NOTE_DEFAULT = ("NOT YET MEASURED: configs from kernels/gemv_dispatch.heuristic_config for an H200 (132 SMs); "
                "bf16 uses the kernel up to M=4 (cuBLAS streams 1.8-2.1 TB/s there), FP8 everywhere. "
                "Overwrite with benchmarks/kernels/bench_gemv.py on the GPU.")


LM_HEADS = {"8b": (128256, 4096)}  # vocab x hidden: the LM head stays in the model dtype under --quantization fp8


def model_shapes(names: List[str]) -> List[Tuple[str, int, int]]:
    """(label, N, K) per rank: qkv, o, gate_up, down."""
    out = []
    for name in names:
        h, inter, heads, kv, hd, tp = MODELS[name]
        out += [(f"{name} qkv", (heads // tp + 2 * max(1, kv // tp)) * hd, h), (f"{name} o", h, heads // tp * hd),
                (f"{name} gate_up", 2 * inter // tp, h), (f"{name} down", h, inter // tp)]
    return out


def lm_head_shapes(names: List[str]) -> List[Tuple[str, int, int]]:
    """(label, vocab, hidden) of the models' LM heads (one rank), always swept as bf16."""
    return [(f"{name} lm_head", *LM_HEADS[name]) for name in names if name in LM_HEADS]


FP8_DOT_TILES = [(64, 256, 4, 3), (64, 256, 4, 4), (64, 256, 4, 5), (128, 256, 8, 3), (64, 128, 4, 4), (64, 128, 4, 6),
                 (128, 128, 4, 4), (32, 256, 4, 3), (32, 512, 4, 3)]


def fp8_dot_candidates(n: int, k: int, sms: int) -> List[GemvConfig]:
    """W8A8 on the tensor cores (GemvConfig.fp8_dot): W tiles of 64-128 rows as the MMA's long side,
    128-256 bytes of K a tile, 3-6 stages in flight; SPLIT_K where the columns give too few programs: the
    smallest split that gives every SM a program and the next two (V20: the 4096- and 6144-row shapes, 64-96
    blocks of 64 rows, read 2.5-2.9 TB/s at split 4 where the 28672-row gate_up reads 3.95 unsplit)."""
    out = []
    for bn, bk, w, s in FP8_DOT_TILES:
        n_blocks, ktiles = -(-n // bn), -(-k // bk)
        splits = [sp for sp in (1, 2, 4, 8, 16) if sp == 1 or sp <= ktiles // 2]
        enough = [sp for sp in splits if n_blocks * sp >= sms] or splits[-1:]
        for split in enough[:3]:
            out.append(GemvConfig(bn, bk, split, w, s, False, True))
    return out


def candidates(m: int, n: int, k: int, fp8: bool, sms: int) -> List[GemvConfig]:
    """A pruned sweep around the heuristic. Up to 2 rows, the FMA path: BLOCK_N x BLOCK_K tiles
    whose fp32 partials hold 16-64 values a thread (bigger spills, smaller leaves too few bytes in
    flight), 4 or 8 warps, Triton's own pipelining off (the kernel already keeps the next tile in
    flight) plus the heuristic tile with it on; a few 16-row tensor-core dots at every M. SPLIT_K
    only where the columns alone give fewer than 2 programs per SM, keeping 1/2-16 programs per SM."""
    tiles = []
    mb = m_bucket(m)
    if mb <= FMA_MAX_M:
        for w in (4, 8):
            for bn in (2, 4, 8, 16, 32):
                for bk in ((256, 512, 1024, 2048) if fp8 else (256, 512, 1024)):
                    if 16 <= mb * bn * bk // (32 * w) <= 64:
                        tiles.append((bn, bk, w, 1, False))
        h = heuristic_config(m, n, k, "fp8" if fp8 else "bf16", sms)
        tiles.append((h.block_n, h.block_k, h.num_warps, 3, False))
    bk_dot = 256 if fp8 else 128
    dot_bns = (32, 64, 128) if mb >= 2 else (64,)
    tiles += [(bn, bk_dot, 8 if bn == 128 else 4, s, True) for bn in dot_bns for s in (3, 5)]
    out = {heuristic_config(m, n, k, "fp8" if fp8 else "bf16", sms)}
    for bn, bk, w, s, dot in tiles:
        n_blocks, ktiles = -(-n // bn), -(-k // bk)
        for split in (1, 2, 4, 8, 16):
            if split > 1 and (split > ktiles // 2 or n_blocks >= 2 * sms or n_blocks * split > 16 * sms):
                continue
            if n_blocks * split < sms // 2 and split < 16:
                continue  # too few programs to stream W: a larger split follows
            out.add(GemvConfig(bn, bk, split, w, s, dot))
    if fp8:
        out.update(fp8_dot_candidates(n, k, sms))
    return sorted(out, key=str)


def time_graph(fns: List[Callable[[], object]], reps: int = 20) -> float:
    """Seconds per call: one CUDA graph of all fns (one per weight copy), replayed `reps` times."""
    for f in fns:
        f()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for f in fns:
            f()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / reps / len(fns)


def time_cpu(fns: List[Callable[[], object]], reps: int = 1) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        for f in fns:
            f()
    return (time.perf_counter() - t0) / reps / len(fns)


def weights(n: int, k: int, fp8: bool, device: str, l2_bytes: int) -> List[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    per = n * k * (1 if fp8 else 2)
    copies = max(2, -(-4 * l2_bytes // per)) if device == "cuda" else 1
    out = []
    for _ in range(copies):
        w = torch.randn(n, k, device=device) * k ** -0.5
        w = w.to(torch.bfloat16) if device == "cuda" else w  # the CPU interpreter has no bf16
        if fp8:
            s = (w.abs().amax(dim=1, keepdim=True).float() / 448.0).clamp(min=1e-12)
            out.append(((w.float() / s).clamp(-448, 448).to(torch.float8_e4m3fn), s))
        else:
            out.append((w, None))
    return out


def bench_one(label: str, n: int, k: int, m: int, fp8: bool, device: str, sms: int, l2: int,
              max_configs: Optional[int], only: Optional[List[GemvConfig]] = None,
              fused_input: bool = True) -> Dict[str, object]:
    """only: time these configs instead of the sweep's candidates. fused_input: FP8 shapes are timed
    from Fp8Rows, as decode hands them x (no quantization pass in the timing)."""
    ws = weights(n, k, fp8, device, l2)
    x = torch.randn(m, k, device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    timer = time_graph if device == "cuda" else time_cpu
    w_bytes = n * k * (1 if fp8 else 2)
    xin = x
    if fp8:
        base_name = "scaled_mm"
        q, sa = quantize_rows(x, None, "token")
        if fused_input:
            xin = Fp8Rows(q, sa, x.dtype)
        base = timer([lambda w=w, s=s: scaled_mm_rowwise(xin, w, s, None, "token", None) for w, s in ws]) \
            if device == "cuda" else float("inf")
        raw = timer([lambda w=w, s=s: torch._scaled_mm(q, w.t(), scale_a=sa, scale_b=s.reshape(1, n),
                                                         out_dtype=torch.bfloat16) for w, s in ws]) \
            if device == "cuda" else float("inf")
    else:
        base_name = "cublas"
        base = timer([lambda w=w: torch.nn.functional.linear(x, w) for w, _ in ws])
        raw = base
    best: Tuple[float, Optional[GemvConfig]] = (float("inf"), None)
    cands = (only if only is not None else candidates(m, n, k, fp8, sms))[:max_configs]
    w0, s0 = ws[0]
    ref = skinny_gemm_fp8_ref(x, w0, s0, None, None, "token") if fp8 else skinny_gemm_ref(x, w0)
    for cfg in cands:
        run = (lambda w, s: skinny_gemm_fp8(xin, w, s, None, None, "token", None, cfg)) if fp8 else \
              (lambda w, s: skinny_gemm(x, w, None, cfg))
        try:
            y = run(w0, s0)
            if not torch.allclose(y.float(), ref.float(), atol=3e-2, rtol=3e-2):
                print(f"# {label} m={m} {cfg}: WRONG RESULT, skipped", flush=True)
                continue
            t = timer([lambda w=w, s=s: run(w, s) for w, s in ws])
        except Exception as e:  # e.g. out of shared memory for this tile: not a candidate
            print(f"# {label} m={m} {cfg}: {type(e).__name__}: {str(e)[:120]}", flush=True)
            continue
        if t < best[0]:
            best = (t, cfg)
    t, cfg = best
    tbps = lambda sec: round(w_bytes / sec / 1e12, 3) if sec not in (0, float("inf")) else None  # noqa: E731
    us = lambda sec: round(sec * 1e6, 2) if sec != float("inf") else None  # noqa: E731
    row = {"label": label, "m": m, "kind": "fp8" if fp8 else "bf16", "x": "fp8 rows" if xin is not x else str(x.dtype),
           "n": n, "k": k, "configs": len(cands),
           "kernel_us": us(t), "kernel_tbps": tbps(t), f"{base_name}_us": us(base),
           f"{base_name}_tbps": tbps(base), "raw_baseline_tbps": tbps(raw), "config": None if cfg is None else vars(cfg),
           "use": cfg is not None and t < 0.97 * base}
    print(json.dumps(row), flush=True)
    return row


def base_config(base: Optional[Dict], kind: str, n: int, k: int, m: int) -> Optional[GemvConfig]:
    """The config a table entry names for this shape and M bucket (None: no entry)."""
    row = (base or {}).get("entries", {}).get(table_key(kind, n, k), {}).get(str(m_bucket(m)))
    return entry_config(row) if row else None


def table_from_rows(rows: List[Dict[str, object]], measured: bool, device_name: Optional[str], note: str) -> Dict:
    entries: Dict[str, Dict[str, Dict[str, object]]] = {}
    for r in rows:
        cfg = r["config"] or {}
        entries.setdefault(table_key(r["kind"], r["n"], r["k"]), {})[str(m_bucket(r["m"]))] = {
            "use": bool(r["use"]), **cfg, "measured": measured, "label": r["label"],
            "kernel_tbps": r.get("kernel_tbps"),
            "baseline_tbps": r.get("cublas_tbps", r.get("scaled_mm_tbps")),
        }
    return {"note": note, "measured": measured, "device": device_name,
            "default_max_m": {"bf16": 0, "fp16": 0, "fp32": 0, "fp8": 16, "fp8_block": 16}, "entries": entries}


def default_rows(shapes, sms: int) -> List[Dict[str, object]]:
    rows = []
    for fp8 in (False, True):
        for label, n, k in shapes:
            for m in M_LIST:
                cfg = heuristic_config(m, n, k, "fp8" if fp8 else "bf16", sms)
                rows.append({"label": label, "m": m, "kind": "fp8" if fp8 else "bf16", "n": n, "k": k,
                             "config": vars(cfg), "use": fp8 or m <= 4})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "kernels" / "gemv_table.json"))
    ap.add_argument("--write-default", metavar="PATH", help="write the reasoning-only table and exit (no GPU)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--m", nargs="+", type=int, default=list(M_LIST))
    ap.add_argument("--kinds", nargs="+", default=["bf16", "fp8"], choices=["bf16", "fp8"])
    ap.add_argument("--budget-s", type=float, default=300.0, help="stop sweeping after this; the rest keep defaults")
    ap.add_argument("--max-configs", type=int, default=None, help="at most this many configs per shape")
    ap.add_argument("--dry", action="store_true", help="CPU interpreter: tiny shapes, 2 configs, wall-clock timing")
    ap.add_argument("--base", metavar="TABLE", help="a table whose entries are kept where this run measures none")
    ap.add_argument("--no-fused-input", action="store_true",
                    help="FP8: time every shape from bf16 x (the GEMM quantizes it), as before the fused FP8 input")
    ap.add_argument("--lm-head", action="store_true", help="also sweep the models' LM heads (bf16, after the rest)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="sweep only these projections (qkv o gate_up down lm_head)")
    ap.add_argument("--fp8-dot-vs-base", action="store_true",
                    help="FP8 shapes: time only the fp8_dot configs and --base's own config for the shape")
    args = ap.parse_args()
    shapes = model_shapes(args.models)
    if args.write_default:
        table = table_from_rows(default_rows(shapes, 132), False, None, NOTE_DEFAULT)
        Path(args.write_default).write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
        print(f"wrote {args.write_default}: {len(table['entries'])} shapes, not measured")
        return
    device = "cuda" if torch.cuda.is_available() and not args.dry else "cpu"
    if device == "cpu":
        shapes, args.max_configs = [("tiny qkv", 48, 64), ("tiny down", 32, 96)], 2
    heads = lm_head_shapes(args.models) if args.lm_head and device == "cuda" else []
    if args.only:  # the other shapes keep --base's entries
        keep = lambda label: label.split()[-1] in args.only  # noqa: E731
        shapes, heads = [s for s in shapes if keep(s[0])], [s for s in heads if keep(s[0])]
    sms = num_sms() if device == "cuda" else 8
    l2 = torch.cuda.get_device_properties(0).L2_cache_size if device == "cuda" else 0
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)"
    peak = peak_bandwidth() if device == "cuda" else None
    print(f"# {name}: {sms} SMs, L2 {l2 >> 20} MiB, HBM peak {peak} GB/s; budget {args.budget_s} s", flush=True)
    base = json.loads(Path(args.base).read_text()) if args.base else None
    t_end = time.time() + args.budget_s
    measured: Dict[Tuple[str, int, int, int], Dict[str, object]] = {}
    for m in args.m:  # M=1 over every shape first: batch-1 decode matters most
        for kind in args.kinds:
            for label, n, k in shapes:
                if time.time() > t_end:
                    break
                only = None
                if args.fp8_dot_vs_base and kind == "fp8":
                    only = fp8_dot_candidates(n, k, sms) + [c for c in [base_config(base, kind, n, k, m)] if c]
                measured[(kind, n, k, m)] = bench_one(label, n, k, m, kind == "fp8", device, sms, l2, args.max_configs, only,
                                                      fused_input=not args.no_fused_input)
    for m in args.m:  # the LM heads after the layers' shapes: bf16 whatever --kinds says
        for label, n, k in heads:
            if time.time() < t_end:
                measured[("bf16", n, k, m)] = bench_one(label, n, k, m, False, device, sms, l2, args.max_configs)
    rows = [measured.get((r["kind"], r["n"], r["k"], r["m"]), r) for r in default_rows(shapes, sms)
            if r["kind"] in args.kinds and r["m"] in args.m]
    rows += [measured[("bf16", n, k, m)] for m in args.m for _, n, k in heads if ("bf16", n, k, m) in measured]
    done = sum(1 for r in rows if "kernel_us" in r)
    note = (f"Measured by benchmarks/kernels/bench_gemv.py on {name}: {done} of {len(rows)} (shape, M) entries; "
            f"the rest (measured: false) keep the heuristic defaults.")
    table = table_from_rows(rows, False, name, note)
    for r in rows:  # per-entry measured flags
        if "kernel_us" in r:
            table["entries"][table_key(r["kind"], r["n"], r["k"])][str(m_bucket(r["m"]))]["measured"] = True
    table["measured"] = done == len(rows) and device == "cuda"
    if base is not None:  # keep --base's entries where this run measured none
        for key, buckets in base.get("entries", {}).items():
            for bucket, entry in buckets.items():
                mine = table["entries"].setdefault(key, {}).get(bucket)
                if mine is None or not mine.get("measured"):
                    table["entries"][key][bucket] = entry
        table["note"] += f" Entries not measured here are {args.base}'s."
    Path(args.out).write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    wins = sum(1 for r in rows if "kernel_us" in r and r["use"])
    print(f"wrote {args.out}: {done} measured entries, kernel picked in {wins}", flush=True)


if __name__ == "__main__":
    main()
