"""Keep transformers from importing vision and ML packages that a text-only server never uses.

transformers imports some optional packages whenever they are installed, also for a text model:
every model config (LlamaConfig, Qwen2Config, ...) imports `utils.type_validators` -> `video_utils`
-> `torchvision.io`, whose `torchvision.ops` import `torch._dynamo` and sympy (4.4 s of the
scheduler's start-up on the H100 host, where torchvision is installed: RESULTS.md W1), and
AutoTokenizer's generation module imports `sklearn.metrics` (1.4 s). sglserve serves text models
only, so the server's processes mark these packages absent before transformers is first imported:
a `None` entry in `sys.modules` makes `importlib.util.find_spec` answer None (transformers then
treats the package as not installed) and `import` raise ImportError.

SGLSERVE_KEEP_OPTIONAL_IMPORTS=1 turns it off. Library users of `sglserve.Engine` are not affected:
only `python -m sglserve.launch_server` (the launcher and the children it spawns) calls it.
"""

from __future__ import annotations

import os
import sys
from typing import Tuple

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
