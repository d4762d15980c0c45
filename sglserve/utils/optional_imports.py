"""Keep transformers from importing vision and ML packages, and torch, that a text-only server never uses through it.

transformers imports some optional packages whenever they are installed, also for a text model:
every model config (LlamaConfig, Qwen2Config, ...) imports `utils.type_validators` -> `video_utils`
-> `torchvision.io`, whose `torchvision.ops` import `torch._dynamo` and sympy (4.4 s of the
scheduler's start-up on the H100 host, where torchvision is installed: RESULTS.md W1), and
AutoTokenizer's generation module imports `sklearn.metrics` (1.4 s). sglserve serves text models
only, so the server's processes mark these packages absent before transformers is first imported:
a `None` entry in `sys.modules` makes `importlib.util.find_spec` answer None (transformers then
treats the package as not installed) and `import` raise ImportError.

The same goes for torch itself, as transformers sees it: import_transformers_without_torch.

SGLSERVE_KEEP_OPTIONAL_IMPORTS=1 turns both off. Library users of `sglserve.Engine` are not affected:
only `python -m sglserve.launch_server` (the launcher and the children it spawns) calls it.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Tuple

UNUSED_OPTIONAL_PACKAGES: Tuple[str, ...] = ("torchvision", "sklearn")


def hide_unused_optional_packages() -> Tuple[str, ...]:
    """Mark UNUSED_OPTIONAL_PACKAGES absent in this process; returns the names it hid.

    A package already imported stays (something in this process uses it), and so does everything
    once transformers is imported: its availability checks are cached by then."""
    if os.environ.get("SGLSERVE_KEEP_OPTIONAL_IMPORTS", "") not in ("", "0") or "transformers" in sys.modules:
        return ()
    hidden = tuple(name for name in UNUSED_OPTIONAL_PACKAGES if name not in sys.modules)
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    return hidden


TRANSFORMERS_NO_ADVISORY = "TRANSFORMERS_NO_ADVISORY_WARNINGS"


def import_transformers_without_torch(server_args: Any) -> bool:
    """Import transformers with torch hidden from it, then let torch be imported again as usual.
    Returns whether it applied (where not, nothing changes).

    transformers decides once per process whether torch is installed (`is_torch_available` is
    cached), and with torch it imports much that a server never uses: every model config reaches
    `activations` -> `hub_kernels` -> `core_model_loading` -> `torch.distributed.tensor` ->
    sympy (3.7-4.6 s of the scheduler's start-up on the H100 host, RESULTS.md W1), AutoTokenizer
    reaches `masking_utils` -> `torch._dynamo` (1.5 s), and the HTTP and detokenizer processes
    import torch itself (2.7 s) only through transformers. The server's processes use
    transformers for configs, tokenizers, chat templates and generation_config.json, none of
    which needs torch; the models are sglserve's own. So `import transformers` runs while
    `sys.modules["torch"]` is None (find_spec answers None: transformers sees no torch), and
    afterwards sglserve imports and uses torch as before.

    Not applied where transformers or torch is already imported, with
    SGLSERVE_KEEP_OPTIONAL_IMPORTS=1, with --trust-remote-code (remote code may use torch
    through transformers), and where start-up must convert a GGUF file's metadata that is not
    in the cache yet (transformers converts GGUF only with torch: utils/gguf_cache.py)."""
    from sglserve.utils.gguf_cache import server_gguf_conversions_cached

    if (os.environ.get("SGLSERVE_KEEP_OPTIONAL_IMPORTS", "") not in ("", "0") or "transformers" in sys.modules
            or "torch" in sys.modules or getattr(server_args, "trust_remote_code", False)
            or not server_gguf_conversions_cached(server_args)):
        return False
    advisory = os.environ.get(TRANSFORMERS_NO_ADVISORY)
    os.environ[TRANSFORMERS_NO_ADVISORY] = "1"  # its "PyTorch was not found" line at import
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        import transformers  # noqa: F401

        from transformers.utils.import_utils import is_torch_available

        applied = not is_torch_available()  # cached from here on (a transformers that did not cache it: no effect)
    except ImportError:  # a transformers that needs torch to import: forget the half import, take the usual path
        for name in [m for m in sys.modules if m == "transformers" or m.startswith("transformers.")]:
            del sys.modules[name]
        applied = False
    finally:
        if sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
        if advisory is None:
            os.environ.pop(TRANSFORMERS_NO_ADVISORY, None)
        else:
            os.environ[TRANSFORMERS_NO_ADVISORY] = advisory
    return applied


def transformers_without_torch() -> bool:
    """Whether this process's transformers was imported without torch (for start-up's log)."""
    if "transformers" not in sys.modules:
        return False
    from transformers.utils.import_utils import is_torch_available

    return not is_torch_available()
