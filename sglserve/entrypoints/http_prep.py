"""HttpSidePrep: the HTTP process's own start-up work, on a thread while the scheduler loads.

The web stack's imports (fastapi, pydantic, the protocol models, transformers) and the tokenizer
take seconds; done after the children's ReadyMsg they added those seconds to start-up in a row.
This module imports nothing heavy itself: the launcher imports it before it spawns the children.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional

from sglserve.server_args import ServerArgs
from sglserve.utils.optional_imports import import_transformers_without_torch, transformers_without_torch
from sglserve.utils.process import freeze_startup_objects

logger = logging.getLogger(__name__)


class HttpSidePrep:
    def __init__(self, server_args: ServerArgs) -> None:
        self.server_args = server_args
        self.tokenizer: Any = None
        self.error: Optional[BaseException] = None
        self.seconds = 0.0
        self._done = threading.Event()
        threading.Thread(target=self._run, name="sglserve-http-prep", daemon=True).start()

    def _run(self) -> None:
        t0 = time.perf_counter()
        try:
            # First: the HTTP side uses no torch, and transformers then imports none (utils/optional_imports.py)
            import_transformers_without_torch(self.server_args)
            import sglserve.entrypoints.http_server  # noqa: F401  (the app's imports)

            sa = self.server_args
            if not sa.skip_tokenizer_init:
                from sglserve.utils.hf_transformers_utils import get_tokenizer

                self.tokenizer = get_tokenizer(sa.tokenizer_path, sa.trust_remote_code)
            # The full collection over what start-up has built (modules, tokenizer: ~0.1 s on the
            # CPU runner), here beside the scheduler: the launcher's freeze after the ReadyMsgs
            # then walks only the few objects made since
            freeze_startup_objects()
        except BaseException as e:  # raised in the caller's thread by result()
            self.error = e
        finally:
            self.seconds = time.perf_counter() - t0
            self._done.set()

    def result(self, dead_child: Callable[[], Optional[str]], poll_s: float = 0.5) -> Any:
        """The tokenizer (None with --skip-tokenizer-init) once loaded, or the thread's error.
        `dead_child()` names a child that died meanwhile: start-up fails at once (RuntimeError)."""
        while not self._done.wait(poll_s):
            dead = dead_child()
            if dead:
                raise RuntimeError(f"{dead} during start-up")
        if self.error is not None:
            raise self.error
        logger.info("HTTP side prepared in %.2f s (web stack imports, tokenizer%s), beside the scheduler.", self.seconds,
                    "; transformers without torch" if transformers_without_torch() else "")
        return self.tokenizer
