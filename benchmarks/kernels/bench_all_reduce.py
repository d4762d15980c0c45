"""The tensor-parallel all-reduce on N GPUs: the one-shot symmetric-memory kernel against NCCL.

For each message size (tokens x hidden, bf16 and fp32) every rank checks that
parallel_state.tp_all_reduce (which picks the one-shot kernel where it fits) gives NCCL's sum,
eagerly and replayed from a CUDA graph of many back-to-back all-reduces with fresh inputs (the
turn-taking of the two buffer slots under a graph); then it times a graph of 64 all-reduces
(one 8B decode step at TP=2) each way. Rank 0 prints one JSON line per size; exit 1 on a
mismatch (a rank's exit code). tests/gpu/test_tp_gpu.py runs it on 2 GPUs.

  python benchmarks/kernels/bench_all_reduce.py --tp 2 [--hidden 4096 --tokens 1 8 64 256 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys

import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gemv import time_graph  # noqa: E402  (seconds per call of one graph of the given calls)

N_GRAPH = 64


def graph_of(fn, n: int) -> torch.cuda.CUDAGraph:
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn(n)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn(n)
    return g


def worker(rank: int, tp: int, port: int, args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from sglserve.distributed import parallel_state as ps

    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    ps.init_tp_group(rank, tp, f"127.0.0.1:{port}", device, custom_all_reduce=True)
    small = ps.tp_group().small_all_reduce
    bad = 0
    for dtype in (torch.bfloat16, torch.float32):
        for tokens in args.tokens:
            shape = (tokens, args.hidden)
            gen = torch.Generator(device=device).manual_seed(1000 * rank + tokens)
            x = torch.randn(shape, device=device, dtype=dtype, generator=gen)
            want = x.clone()
            dist.all_reduce(want, group=ps.tp_group().device_group)
            got = ps.tp_all_reduce(x.clone())
            tol = 0.02 * tp if dtype == torch.bfloat16 else 1e-5  # bf16 sums of tp terms in another order: a few ulps
            ok = torch.allclose(got, want, rtol=tol, atol=tol)
            # a graph of N_GRAPH dependent all-reduces, replayed on fresh inputs
            ins = [torch.empty(shape, device=device, dtype=dtype) for _ in range(N_GRAPH)]
            outs = [None] * N_GRAPH

            def chain(n, fn=ps.tp_all_reduce):
                for i in range(n):
                    outs[i] = fn(ins[i])
            g = graph_of(chain, N_GRAPH)
            for rep in range(3):
                for i, t in enumerate(ins):
                    t.copy_(torch.randn(shape, device=device, dtype=dtype,
                                        generator=torch.Generator(device=device).manual_seed(rank * 7919 + rep * 131 + i)))
                refs = [t.clone() for t in ins]
                g.replay()
                for o, r in zip(outs, refs):
                    dist.all_reduce(r, group=ps.tp_group().device_group)
                    ok &= torch.allclose(o, r, rtol=tol, atol=tol)
            used_one_shot = small is not None and small.fits(x)
            us_custom = time_graph([lambda: chain(N_GRAPH)]) * 1e6 / N_GRAPH
            us_nccl = time_graph([lambda: [dist.all_reduce(t, group=ps.tp_group().device_group) for t in ins]]) \
                * 1e6 / N_GRAPH
            bad += not ok
            if rank == 0:
                print(json.dumps({"tp": tp, "dtype": str(dtype).split(".")[-1], "tokens": tokens, "hidden": args.hidden,
                                  "kib": round(x.numel() * x.element_size() / 1024, 1), "one_shot": used_one_shot,
                                  "match_nccl": bool(ok), "us_tp_all_reduce": round(us_custom, 2),
                                  "us_nccl": round(us_nccl, 2)}), flush=True)
    torch.cuda.synchronize()
    dist.barrier(group=ps.tp_group().cpu_group)
    # Leave without tearing the groups down: NCCL's and symmetric memory's teardown can block
    # on a peer that already left; the exit code carries the verdict (mp.spawn raises on non-zero)
    sys.stdout.flush()
    os._exit(1 if bad else 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 64, 256, 4096])
    args = ap.parse_args()
    if torch.cuda.device_count() < args.tp:
        sys.exit(f"--tp {args.tp} needs {args.tp} GPUs; {torch.cuda.device_count()} visible")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        mp.spawn(worker, args=(args.tp, port, args), nprocs=args.tp, join=True)
    except mp.ProcessExitedException as e:
        sys.exit(f"a rank failed: {e}")


if __name__ == "__main__":
    main()
