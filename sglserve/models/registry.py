"""Architecture name (config.architectures[0]) -> model class."""

from __future__ import annotations

import importlib
from typing import Dict, List, Type

from torch import nn

# Modules whose EntryClass lists the architectures they implement.
MODEL_MODULES = ["sglserve.models.llama", "sglserve.models.qwen2", "sglserve.models.qwen3"]


def _registry() -> Dict[str, Type[nn.Module]]:
    out: Dict[str, Type[nn.Module]] = {}
    for module_name in MODEL_MODULES:
        for cls in importlib.import_module(module_name).EntryClass:
            out[cls.__name__] = cls
    return out


def supported_architectures() -> List[str]:
    return sorted(_registry())


def get_model_class(architecture: str) -> Type[nn.Module]:
    registry = _registry()
    if architecture not in registry:
        raise ValueError(f"model architecture {architecture!r} is not supported; supported: {sorted(registry)}")
    return registry[architecture]
