"""Stored responses (`store: true`) for GET /v1/responses/{id} and previous_response_id.

An in-memory LRU of --responses-store-size entries in the HTTP process: the least recently
stored or read response is dropped first, so memory stays bounded; a dropped or never-stored
id answers 404, as OpenAI answers an unknown one. Each entry keeps the response object and
the conversation up to and including its output (chat messages without the instructions,
which OpenAI does not carry over to the next turn), so the next turn needs no other lookup.
Nothing survives a restart.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional


@dataclass
class StoredResponse:
    response: Dict[str, Any]  # the response object, as GET returns it
    history: List[Dict[str, Any]]  # chat messages: earlier turns, this input, this output


class ResponsesStore:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity  # 0: nothing is stored
        self._entries: "OrderedDict[str, StoredResponse]" = OrderedDict()

    def put(self, entry: StoredResponse) -> None:
        if self.capacity <= 0:
            return
        rid = entry.response["id"]
        self._entries[rid] = entry
        self._entries.move_to_end(rid)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def get(self, rid: str) -> Optional[StoredResponse]:
        entry = self._entries.get(rid)
        if entry is not None:
            self._entries.move_to_end(rid)
        return entry

    def pop(self, rid: str) -> Optional[StoredResponse]:
        return self._entries.pop(rid, None)

    def __len__(self) -> int:
        return len(self._entries)
