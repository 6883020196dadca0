import ctypes
import sys

import pytest

from pipeline import memory


@pytest.fixture(autouse=True)
def fresh_process_state():
    memory.keep_freed_memory.cache_clear()
    yield
    memory.keep_freed_memory.cache_clear()  # a later run sets the real thresholds again


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_thresholds_are_set_once_on_glibc(monkeypatch):
    calls = []

    class Mallopt:  # stands for the C function: takes argtypes and restype
        def __call__(self, option, value):
            calls.append((option, value))
            return 1

    class FakeLibc:
        mallopt = Mallopt()

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    assert memory.keep_freed_memory() is True
    assert memory.keep_freed_memory() is True
    assert calls == [(memory.M_MMAP_THRESHOLD, 16 << 20), (memory.M_TRIM_THRESHOLD, 64 << 20)]


def test_without_mallopt_nothing_is_set(monkeypatch):
    class NoMallopt:
        pass

    monkeypatch.setattr(ctypes, "CDLL", lambda name: NoMallopt())
    assert memory.keep_freed_memory() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_real_c_library_takes_the_thresholds(monkeypatch):
    assert memory.keep_freed_memory() is True
