"""--max-queued-requests: how many sequences the HTTP process lets in at once.

The limit is max_running_requests + --max-queued-requests sequences (a request with n > 1 or a
batch counts each sequence). In flight = registered requests (TokenizerManager.rid_to_state)
+ admitted ones not registered yet: a burst of streams, whose generators start only after
the response headers go out, cannot overshoot the limit in between.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from sglserve.tokenizer.req_state import Overloaded


class AdmissionControl:
    def __init__(self, limit: Optional[int], registered: Callable[[], int]) -> None:
        self.limit = limit  # None: no limit
        self.registered = registered
        self.pending = 0

    @property
    def in_flight(self) -> int:
        return self.registered() + self.pending

    def admit(self, count: int, metrics: Any = None) -> "Ticket":
        """A ticket for `count` sequences; ValueError (400) if they can never fit, Overloaded (503) if not now."""
        if self.limit is not None:
            if count > self.limit:
                raise ValueError(f"The request runs {count} sequences; the server admits at most {self.limit} at "
                                 f"once (max_running_requests + --max-queued-requests).")
            if self.in_flight + count > self.limit:
                if metrics is not None:
                    metrics.on_rejected()
                raise Overloaded(f"The server is busy: {self.in_flight} requests in flight, the limit is "
                                 f"{self.limit} (max_running_requests + --max-queued-requests). Retry later.")
        return Ticket(self, count)


class Ticket:
    """Admitted sequences not yet registered; each registration (or the end) releases its share."""

    def __init__(self, control: AdmissionControl, count: int) -> None:
        self.control, self.left = control, count
        control.pending += count

    def release(self, k: int = 1) -> None:
        k = min(k, self.left)
        self.left -= k
        self.control.pending -= k

    def release_all(self) -> None:
        self.release(self.left)
