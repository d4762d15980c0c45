"""Stored responses (`store: true`) for GET /v1/responses/{id} and previous_response_id.

An in-memory LRU of --responses-store-size entries in the HTTP process: the least recently
stored or read response is dropped first, so memory stays bounded; a dropped or never-stored
id answers 404, as OpenAI answers an unknown one. Each entry keeps the response object and
the conversation up to and including its output (chat messages without the instructions,
which OpenAI does not carry over to the next turn), so the next turn needs no other lookup.
Nothing survives a restart.

With --api-server-count > 1 a GET or a next turn may reach another HTTP process than the one
that stored the response, so the workers share one store: `SharedResponsesStore`, the same LRU
in an SQLite file in the server's private ipc dir (removed at exit). Entries are copies there:
change one by putting it again, never in place.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import orjson


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


class SharedResponsesStore:
    """ResponsesStore's interface over one SQLite file that every HTTP worker opens. Each call is
    one short transaction (BEGIN IMMEDIATE: the LRU order is updated by reads too)."""

    def __init__(self, path: str, capacity: int) -> None:
        self.capacity = capacity
        self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        with self._tx() as db:
            db.execute("CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, body BLOB)")
            db.execute("CREATE INDEX IF NOT EXISTS responses_seq ON responses (seq)")

    def _tx(self) -> "_Transaction":
        return _Transaction(self._db)

    def put(self, entry: StoredResponse) -> None:
        if self.capacity <= 0:
            return
        body = orjson.dumps({"response": entry.response, "history": entry.history})
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO responses VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM responses), ?)",
                       (entry.response["id"], body))
            db.execute("DELETE FROM responses WHERE seq <= (SELECT seq FROM responses ORDER BY seq DESC "
                       "LIMIT 1 OFFSET ?)", (self.capacity,))

    def get(self, rid: str) -> Optional[StoredResponse]:
        with self._tx() as db:
            row = db.execute("SELECT body FROM responses WHERE id = ?", (rid,)).fetchone()
            if row is not None:
                db.execute("UPDATE responses SET seq = (SELECT MAX(seq) + 1 FROM responses) WHERE id = ?", (rid,))
        return None if row is None else _entry(row[0])

    def pop(self, rid: str) -> Optional[StoredResponse]:
        with self._tx() as db:
            row = db.execute("SELECT body FROM responses WHERE id = ?", (rid,)).fetchone()
            db.execute("DELETE FROM responses WHERE id = ?", (rid,))
        return None if row is None else _entry(row[0])

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]


def _entry(body: bytes) -> StoredResponse:
    d = orjson.loads(body)
    return StoredResponse(d["response"], d["history"])


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an error): the other workers wait up to the timeout."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
