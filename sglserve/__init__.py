"""sglserve: an OpenAI-compatible LLM inference server (SGLang's architecture)."""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy, so `python -m sglserve.launch_server --help` does not import torch first
    if name == "Engine":
        from sglserve.engine import Engine

        return Engine
    raise AttributeError(name)
