"""utils/cuda_context.py: the scheduler's primary context made on a thread through the driver API."""

from __future__ import annotations

import os

import pytest

from sglserve.utils import cuda_context


class FakeDriver:
    """libcuda's three calls; `fail` names the one that returns an error code."""

    def __init__(self, fail: str = "") -> None:
        self.fail, self.calls = fail, []

    def _call(self, name: str, *args) -> int:
        self.calls.append((name, *args))
        return 100 if name == self.fail else 0

    def cuInit(self, flags):
        return self._call("cuInit", flags)

    def cuDeviceGet(self, dev_ref, ordinal):
        dev_ref._obj.value = 10 + ordinal
        return self._call("cuDeviceGet", ordinal)

    def cuDevicePrimaryCtxRetain(self, ctx_ref, dev):
        return self._call("cuDevicePrimaryCtxRetain", dev.value)


@pytest.fixture
def driver(monkeypatch):
    """driver(fake): libcuda.so.1 opens as `fake` (an exception: opening it raises that)."""

    def use(fake):
        def cdll(name):
            assert name == "libcuda.so.1"
            if isinstance(fake, Exception):
                raise fake
            return fake

        monkeypatch.setattr(cuda_context, "_thread", None)
        monkeypatch.setattr(cuda_context.ctypes, "CDLL", cdll)
        return fake

    return use


def test_retains_the_primary_context_of_the_ordinal(driver, monkeypatch):
    monkeypatch.delenv("CUDA_MODULE_LOADING", raising=False)
    fake = driver(FakeDriver())
    cuda_context.start_context_creation(2)
    assert cuda_context.wait_context_creation() >= 0.0
    assert fake.calls == [("cuInit", 0), ("cuDeviceGet", 2), ("cuDevicePrimaryCtxRetain", 12)]
    assert os.environ["CUDA_MODULE_LOADING"] == "LAZY"  # what torch sets before its own cuInit


def test_a_second_start_makes_no_second_thread(driver):
    fake = driver(FakeDriver())
    cuda_context.start_context_creation(0)
    first = cuda_context._thread
    cuda_context.start_context_creation(1)
    assert cuda_context._thread is first
    cuda_context.wait_context_creation()
    assert [c for c in fake.calls if c[0] == "cuDeviceGet"] == [("cuDeviceGet", 0)]


@pytest.mark.parametrize("fail", ["cuInit", "cuDeviceGet"])
def test_a_driver_error_stops_quietly_for_torch_to_report(driver, fail):
    fake = driver(FakeDriver(fail=fail))
    cuda_context.start_context_creation(0)
    cuda_context.wait_context_creation()
    assert fake.calls[-1][0] == fail  # nothing after the failing call, and no exception


def test_no_driver_is_not_an_error(driver):
    driver(OSError("libcuda.so.1: cannot open shared object file"))
    cuda_context.start_context_creation(0)
    cuda_context.wait_context_creation()
    assert not cuda_context._thread.is_alive()


def test_nothing_started_means_nothing_to_wait_for(monkeypatch):
    monkeypatch.setattr(cuda_context, "_thread", None)
    assert cuda_context.wait_context_creation() == 0.0

