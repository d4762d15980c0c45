"""Programmatic dependent launch (kernels/pdl.py): off where it cannot run, and on a Hopper GPU a
chain of the decode step's kernels captured in a CUDA graph gives the same bits with and without
it (each kernel must wait for the one before it before reading its output or writing)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from sglserve_kernels.activation import silu_and_mul
from sglserve_kernels.gemv import GemvConfig, skinny_gemm, skinny_gemm_fp8
from sglserve_kernels.layernorm import fused_add_rmsnorm
from sglserve_kernels import gemv
from sglserve_kernels.pdl import L2_PREFETCH_ENV, PDL_ENV, l2_prefetch_budget, pdl_args, pdl_enabled, prefetch_row_bytes
from sglserve.layers.quantization.fp8_utils import quantize_per_channel
from sglserve_kernels.testing import randn


def test_off_on_the_cpu_and_when_disabled(monkeypatch):
    assert pdl_args(torch.zeros(1)) == {"PDL": False}
    if torch.cuda.is_available():
        monkeypatch.setenv(PDL_ENV, "0")
        assert not pdl_enabled(torch.zeros(1, device="cuda"))


def test_no_prefetch_without_pdl(monkeypatch):
    monkeypatch.setenv(L2_PREFETCH_ENV, "64")
    assert l2_prefetch_budget(torch.zeros(1)) == 0  # the CPU: no PDL, no prefetch


@pytest.mark.parametrize("k, k_per_split, split, budget_mb, expect", [
    (4096, 1024, 4, 1024, 1024),  # the whole slice when the weight fits the budget
    (4096, 1024, 4, 4, 1024 // 4),  # 16 MiB weight, 4 MiB budget: a quarter of every slice
    (4096, 1024, 4, 3, 3 * 1024 // 16 // 16 * 16),  # rounded down to whole 16-byte units
    (4000, 1024, 4, 1024, 928),  # never past the shortest (last) slice
    (4096, 4096, 1, 0, 0),  # budget 0: off
])
def test_prefetch_row_bytes(k, k_per_split, split, budget_mb, expect):
    weight = torch.empty(4096, k, dtype=torch.float8_e4m3fn)
    assert prefetch_row_bytes(budget_mb << 20, weight, k_per_split, split) == expect


def test_prefetch_needs_16_byte_rows():
    weight = torch.empty(64, 1000, dtype=torch.float8_e4m3fn)  # a row of 1000 bytes
    assert prefetch_row_bytes(1 << 30, weight, 1000, 1) == 0
    assert prefetch_row_bytes(1 << 30, weight[:, 8:], 992, 1) == 0  # rows 1000 bytes apart
    assert prefetch_row_bytes(1 << 30, torch.empty(64, 1000, dtype=torch.bfloat16), 1000, 1) == 2000


_COMPILE_SM90 = """
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from sglserve_kernels import gemv
kernel = gemv._gemv_kernel
sig = {p.name: "*bf16" for p in kernel.params}
sig.update({n: "i32" for n in ("M", "N", "K", "stride_xm", "stride_wn", "stride_ym", "stride_wsn", "k_per_split",
                               "pf_chunks", "pf_elems", "pf_bytes")})
sig.update(W="*fp8e4nv", X="*fp8e4nv", XS="*fp32", WS="*fp32", P="*fp32")
const = json.loads(sys.argv[1])
sig.update(dict.fromkeys(const, "constexpr"))
src = ASTSource(kernel, sig, {(kernel.arg_names.index(n),): v for n, v in const.items()})
try:
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": 4, "num_stages": 3, "launch_pdl": True})
except Exception as e:  # a Triton build without the NVIDIA backend's ptxas
    print("SKIP", type(e).__name__, str(e)[:200])
    sys.exit(0)
sys.stdout.write(compiled.asm["ptx"])
"""


def _sm90_ptx(**constexprs) -> str:
    """_gemv_kernel compiled for sm_90 with Triton's own ptxas (no GPU needed), in a process of its
    own: the tests' interpreter mode has no compiler."""
    const = dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=256, USE_DOT=False, FP8_DOT=True, X_FP8=True, W_SCALE=1, SCALE_BN=1,
                 SCALE_BK=1, HAS_BIAS=False, WRITE_PARTIAL=True, DOT_PREC="tf32", PF_LANES=128, PDL=True)
    const.update(constexprs)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", _COMPILE_SM90, json.dumps(const)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    if out.stdout.startswith("SKIP"):
        pytest.skip(f"cannot compile for sm_90 here: {out.stdout[5:]}")
    return out.stdout


@pytest.mark.parametrize("path", ["fp8_dot", "fma"])
def test_gemv_prefetch_is_issued_before_the_wait(path):
    """The L2 prefetch must come before griddepcontrol.wait (else it overlaps nothing), and before
    the first weight load; with PF_LANES 0 the kernel has none."""
    extra = {} if path == "fp8_dot" else dict(FP8_DOT=False, BLOCK_M=1, BLOCK_N=2, BLOCK_K=1024, W_SCALE=1)
    ptx = _sm90_ptx(**extra)
    events = [m.group() for m in re.finditer(r"cp\.async\.bulk\.prefetch\.L2|griddepcontrol\.wait|ld\.global", ptx)]
    assert events[0] == "cp.async.bulk.prefetch.L2" and events.count("cp.async.bulk.prefetch.L2") == 1
    assert "griddepcontrol.wait" in events
    assert "cp.async.bulk.prefetch" not in _sm90_ptx(PF_LANES=0, **extra)


def _chain(x, residual, norm_w, w_up, s_up, w_down, s_down, w_o):
    """norm -> FP8 GEMM (FMA path, split 2) -> SiLU-mul -> FP8 GEMM (fp8_dot, split 3) -> bf16 GEMM."""
    h, residual = fused_add_rmsnorm(x, residual, norm_w, 1e-6)
    up = skinny_gemm_fp8(h, w_up, s_up, None, None, "token", None, GemvConfig(8, 512, 2, 4, 1, False))
    act = silu_and_mul(up)
    down = skinny_gemm_fp8(act, w_down, s_down, None, None, "token", None,
                           GemvConfig(64, 256, 3, 4, 3, False, fp8_dot=True))
    return skinny_gemm(down, w_o, None, GemvConfig(16, 128, 3, 4, 2, True)), residual


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                    reason="needs a Hopper GPU")
@pytest.mark.parametrize("m, prefetch_mb", [(1, None), (2, None), (8, None), (1, "0"), (2, "24"), (1, "1024"), (2, "0.5")])
def test_graph_chain_same_bits_with_and_without(m, prefetch_mb, monkeypatch):
    """PDL on, with the GEMMs' L2 prefetch at its default, off, 24 MiB, whole weights, or a sliver."""
    if prefetch_mb is not None:
        monkeypatch.setenv(L2_PREFETCH_ENV, prefetch_mb)
    gen = torch.Generator().manual_seed(m)
    d, inter = 1024, 2816
    norm_w = randn(gen, d, dtype=torch.bfloat16, device="cuda")
    w_up, s_up = (t.cuda() for t in quantize_per_channel(randn(gen, 2 * inter, d, scale=d ** -0.5)))
    w_down, s_down = (t.cuda() for t in quantize_per_channel(randn(gen, d, inter, scale=inter ** -0.5)))
    w_o = randn(gen, d, d, dtype=torch.bfloat16, device="cuda", scale=d ** -0.5)
    x0 = randn(gen, m, d, dtype=torch.bfloat16, device="cuda")
    r0 = randn(gen, m, d, dtype=torch.bfloat16, device="cuda")

    monkeypatch.setenv(PDL_ENV, "0")
    expect, expect_r = _chain(x0.clone(), r0.clone(), norm_w, w_up, s_up, w_down, s_down, w_o)

    monkeypatch.setenv(PDL_ENV, "1")
    assert pdl_enabled(x0)
    if prefetch_mb is not None:
        assert (l2_prefetch_budget(x0) > 0) == (prefetch_mb != "0")
    x, r = x0.clone(), r0.clone()
    _chain(x.clone(), r.clone(), norm_w, w_up, s_up, w_down, s_down, w_o)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, out_r = _chain(x, r, norm_w, w_up, s_up, w_down, s_down, w_o)
    for _ in range(20):  # replays back to back: a kernel reading before its producer finished would show
        x.copy_(x0)
        r.copy_(r0)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, expect) and torch.equal(out_r, expect_r)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                    reason="needs a Hopper GPU")
def test_gemv_asks_the_l2_for_its_weights(monkeypatch):
    """The prefetch is in the kernel that ran (its PTX), and changes no bit."""
    monkeypatch.setenv(PDL_ENV, "1")
    gen = torch.Generator().manual_seed(3)
    w, s = (t.cuda() for t in quantize_per_channel(randn(gen, 1024, 2048, scale=2048 ** -0.5)))
    x = randn(gen, 1, 2048, dtype=torch.bfloat16, device="cuda")
    outs = {}
    for mb in ("0", "1024"):
        monkeypatch.setenv(L2_PREFETCH_ENV, mb)
        outs[mb] = skinny_gemm_fp8(x, w, s, None, None, "token", None, GemvConfig(64, 256, 2, 4, 3, False, fp8_dot=True))
    assert torch.equal(outs["0"], outs["1024"])
    ptx = [k.asm.get("ptx", "") for cache in gemv._gemv_kernel.device_caches.values() for k in cache[0].values()]
    assert any("cp.async.bulk.prefetch.L2.global" in p for p in ptx)
    assert any("cp.async.bulk.prefetch" not in p for p in ptx)  # and the launch with the budget at 0 has none
