"""PortArgs: the ipc endpoints one server's processes talk over (not flags: made at launch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List


@dataclass
class PortArgs:
    """ipc:// endpoints in a private temp dir, one per socket; one tokenizer endpoint per HTTP worker."""

    ipc_dir: str
    tokenizer_ipc_names: List[str] = field(default_factory=list)  # [k]: HTTP worker k's PULL socket
    scheduler_input_ipc_name: str = ""
    detokenizer_ipc_name: str = ""

    @property
    def tokenizer_ipc_name(self) -> str:
        """The only HTTP process's endpoint (--api-server-count 1)."""
        return self.tokenizer_ipc_names[0]

    @classmethod
    def create(cls, num_http_workers: int = 1) -> "PortArgs":
        import tempfile

        d = tempfile.mkdtemp(prefix="sglserve-")
        names = [f"ipc://{d}/tokenizer"] + [f"ipc://{d}/tokenizer{k}" for k in range(1, num_http_workers)]
        return cls(ipc_dir=d, tokenizer_ipc_names=names, scheduler_input_ipc_name=f"ipc://{d}/scheduler",
                   detokenizer_ipc_name=f"ipc://{d}/detokenizer")
