"""The scheduler's text side (tokenizer, EOS ids, grammar backend), built on a thread while the model loads.

None of it is needed to build the model or size the KV pool, and all of it is host work that
took ~0.3 s (tokenizer: transformers' tokenizer modules + the file) and ~0.5 s (xgrammar's
import and tokenizer info) in a row on the start-up path, the grammar part after the CUDA graphs.
Started before ModelRunner, it runs while the weights load and the graphs are captured (device
waits and torch ops that release the GIL), and the Scheduler joins it just before it needs it.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional

from sglserve.scheduler.grammar_manager import GrammarManager
from sglserve.server_args import ServerArgs
from sglserve.utils.hf_transformers_utils import get_tokenizer


@dataclass
class TextSide:
    tokenizer: Any  # None with --skip-tokenizer-init
    eos_token_ids: set
    grammar_manager: GrammarManager


def eos_token_ids(hf_config: Any, tokenizer: Any, model_path: str) -> set:
    """The model's stop ids: config.json's, the tokenizer's, and generation_config.json's."""
    ids = set()
    eos = getattr(hf_config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    try:
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
        ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    except Exception:  # no generation_config.json (GGUF, dummy)
        pass
    ids.discard(None)
    return ids


def build_text_side(sa: ServerArgs, model_config: Any, agree: Optional[Callable[[int], int]]) -> TextSide:
    tokenizer = None if sa.skip_tokenizer_init else get_tokenizer(sa.tokenizer_path)
    eos = eos_token_ids(model_config.hf_config, tokenizer, sa.model_path)
    grammar = GrammarManager(tokenizer, model_config.vocab_size, eos, sa.grammar_backend, agree=agree)
    return TextSide(tokenizer, eos, grammar)


def start_text_side(sa: ServerArgs, model_config: Any, agree: Optional[Callable[[int], int]]) -> "Future[TextSide]":
    """build_text_side on its own thread; `.result()` joins it and re-raises its error.

    AutoTokenizer's module (~2-5 s of GIL-bound imports: transformers' generation and masking
    modules) is imported there too. Importing it on the calling thread first instead made no
    measurable difference to start-up (H100, RESULTS.md V8)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sglserve-text-side")
    future = pool.submit(build_text_side, sa, model_config, agree)
    pool.shutdown(wait=False)  # the thread ends with its one task
    return future
