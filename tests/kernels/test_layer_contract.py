"""The layers' CUDA path (CustomOp.forward_cuda) with our kernels equals their native path:
guards the kernel names and signatures sglserve/layers expects of sglserve_kernels."""

from __future__ import annotations

import pytest
import torch

import sglserve_kernels

layernorm = pytest.importorskip("sglserve.layers.layernorm")
activation = pytest.importorskip("sglserve.layers.activation")
rotary = pytest.importorskip("sglserve.layers.rotary_embedding")


def kernel_for(op):
    fn = getattr(sglserve_kernels, op.kernel_name, None)
    assert fn is not None, f"sglserve_kernels has no {op.kernel_name!r}"
    return fn


def test_rmsnorm_layer(device, gen):
    norm = layernorm.RMSNorm(96, eps=1e-5).to(device)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(96, generator=gen))
    x = torch.randn(2, 3, 96, generator=gen).to(device)
    r = torch.randn(2, 3, 96, generator=gen).to(device)
    with torch.inference_mode():
        torch.testing.assert_close(norm.forward_cuda(kernel_for(norm), x), norm.forward_native(x))
        got = norm.forward_cuda(kernel_for(norm), x, r.clone())
        want = norm.forward_native(x, r.clone())
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_silu_and_mul_layer(device, gen):
    act = activation.SiluAndMul()
    x = torch.randn(2, 5, 64, generator=gen).to(device)
    torch.testing.assert_close(act.forward_cuda(kernel_for(act), x), act.forward_native(x))


@pytest.mark.parametrize("is_neox", [True, False])
def test_rotary_layer(is_neox, device, gen):
    rope = rotary.get_rope(64, 256, 10000.0, is_neox_style=is_neox).to(device)
    pos = torch.randint(0, 256, (7,), generator=gen).to(device)
    q = torch.randn(7, 4 * 64, generator=gen).to(device)
    k = torch.randn(7, 2 * 64, generator=gen).to(device)
    want = rope.forward_native(pos, q.clone(), k.clone())
    got = rope.forward_cuda(kernel_for(rope), pos, q.clone(), k.clone())
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_exports_are_functions_even_after_submodule_imports():
    """A submodule named like an export would shadow it once imported (the import system sets
    the package attribute); every export must stay the function."""
    import importlib
    import pkgutil
    import types

    for info in pkgutil.iter_modules(sglserve_kernels.__path__):
        importlib.import_module(f"sglserve_kernels.{info.name}")
    for name in sglserve_kernels.__all__:
        value = getattr(sglserve_kernels, name)
        assert callable(value) and not isinstance(value, types.ModuleType), name
