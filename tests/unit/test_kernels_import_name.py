"""The checkout's `kernels/` folder (installed as `sglserve_kernels`) must not shadow Hugging Face's
`kernels` package, which transformers >= 5.25 requires and imports: with the checkout's root on
sys.path, `import kernels` hands over to the installed package, and transformers' models import."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_import_kernels_from_checkout_root():
    got = _run("import os, kernels, sglserve_kernels; print(os.path.dirname(os.path.abspath(kernels.__file__)));"
               " print(os.path.dirname(os.path.abspath(sglserve_kernels.__file__)))").splitlines()
    ours = os.path.join(ROOT, "kernels")
    assert got[1] == ours  # sglserve_kernels is always the checkout's folder
    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        assert got[0] == ours  # nothing to defer to: stay as we were
    else:
        assert got[0] != ours  # the Hub's package, not ours


def test_transformers_models_import_beside_our_kernels():
    assert _run("from transformers import LlamaForCausalLM; import sglserve_kernels;"
                " print(sglserve_kernels.rmsnorm_ref.__name__)") == "rmsnorm_ref"
