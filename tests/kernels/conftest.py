"""Kernel tests: make `sglserve_kernels` importable from kernels/ and run Triton on the CPU
interpreter when there is no GPU.

The repo's kernels/ folder is installed as `sglserve_kernels` (pyproject package-dir); before
an editable install exists this maps the name to the folder. Never import it as `kernels`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    # Must be set before any @triton.jit function is defined.
    os.environ.setdefault("TRITON_INTERPRET", "1")

_KERNELS_DIR = Path(__file__).resolve().parents[2] / "kernels"


def _ensure_sglserve_kernels() -> None:
    try:
        import sglserve_kernels  # noqa: F401
        return
    except ImportError:
        pass
    spec = importlib.util.spec_from_file_location(
        "sglserve_kernels", _KERNELS_DIR / "__init__.py", submodule_search_locations=[str(_KERNELS_DIR)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["sglserve_kernels"] = module
    spec.loader.exec_module(module)


_ensure_sglserve_kernels()

# The interpreter truncates fp32 -> bf16; round to nearest like the GPU so bf16 kernel checks mean something.
from sglserve_kernels.testing import interpreter_bf16_round_to_nearest  # noqa: E402

interpreter_bf16_round_to_nearest()



# ---- shared fixtures (helpers live in sglserve_kernels.testing) -----------------------

import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture
def device() -> str:
    return "cuda" if HAS_CUDA else "cpu"


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
