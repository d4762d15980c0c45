"""The `guarded` server: the default model with every reliability option on, shared by
test_reliability.py and test_fuzz.py (one start-up for both)."""

from __future__ import annotations

import pytest

from tests.helpers import start_server
from tests.server.reliability_helpers import KEY, MAX_QUEUED, MAX_RUNNING, PAYLOAD, TIMEOUT_S


@pytest.fixture(scope="session")
def guarded(tmp_path_factory):
    s = start_server(
        tmp_path_factory,
        ["--max-total-tokens", "16384", "--enable-metrics", "--max-running-requests", str(MAX_RUNNING),
         "--max-queued-requests", str(MAX_QUEUED), "--request-timeout", str(TIMEOUT_S),
         "--max-payload-size", str(PAYLOAD)],
        name="guarded", env={"SGLSERVE_API_KEY": KEY},
    )
    yield s
    s.stop()
