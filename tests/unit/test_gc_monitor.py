"""--gc-warning-threshold-secs: a collection longer than the threshold is logged; the flag is checked."""

import gc
import logging

import pytest

from sglserve.server_args import ServerArgs, ServerArgsError
from sglserve.utils.gc_monitor import GcMonitor, install_gc_monitor
from sglserve.utils.process import freeze_startup_objects


@pytest.fixture
def monitor():
    made = []

    def install(threshold):
        m = install_gc_monitor(threshold)
        if m is not None:
            made.append(m)
        return m

    yield install
    for m in made:
        if m in gc.callbacks:
            gc.callbacks.remove(m)


def _garbage(n=20000):
    for _ in range(n):  # reference cycles: only the collector frees them
        a = []
        a.append(a)


def test_slow_collection_is_logged(monitor, caplog):
    m = monitor(1e-9)  # every collection is "slow"
    assert isinstance(m, GcMonitor) and m in gc.callbacks
    _garbage()
    with caplog.at_level(logging.WARNING, logger="sglserve.utils.gc_monitor"):
        gc.collect()
    assert m.slow_collections >= 1
    assert any("GC of generation 2 took" in r.getMessage() and "objects collected" in r.getMessage()
               for r in caplog.records)


def test_fast_collection_is_not_logged(monitor, caplog):
    m = monitor(3600.0)
    with caplog.at_level(logging.WARNING, logger="sglserve.utils.gc_monitor"):
        gc.collect()
    assert m.slow_collections == 0 and not caplog.records


def test_off_by_default_and_installed_once(monitor):
    assert ServerArgs(device="cpu").gc_warning_threshold_secs == 0.0
    assert monitor(0.0) is None
    first, second = monitor(1.0), monitor(0.5)
    assert first is second and second.threshold_s == 0.5
    assert sum(isinstance(cb, GcMonitor) for cb in gc.callbacks) == 1


def test_negative_threshold_is_refused():
    with pytest.raises(ServerArgsError, match="gc-warning-threshold-secs"):
        ServerArgs(device="cpu", gc_warning_threshold_secs=-1.0)


def test_start_up_freeze_collection_is_not_reported(monitor, caplog):
    m = monitor(1e-9)
    _garbage()
    gc.disable()  # no automatic collection may slip in around the one on purpose
    try:
        m.slow_collections = 0  # the automatic collections while making the garbage
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="sglserve.utils.gc_monitor"):
            freeze_startup_objects()
    finally:
        gc.enable()
    gc.unfreeze()
    assert m.slow_collections == 0 and not caplog.records and not m.quiet
    gc.collect()  # and the monitor reports again afterwards
    assert m.slow_collections >= 1


def test_gc_paused_for_imports_then_frozen_and_back_on():
    import gc

    from sglserve.utils.process import pause_gc_for_imports, resume_gc_after_imports

    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    try:
        pause_gc_for_imports()
        assert not gc.isenabled()
        made = [[i] for i in range(1000)]  # what the imports would leave alive
        resume_gc_after_imports()
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen + len(made)
        resume_gc_after_imports()  # not paused: nothing to do
        assert gc.isenabled()
        gc.disable()  # the caller's own choice is left alone
        resume_gc_after_imports()
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()
