"""benchmarks/profile_step.py's CPU pinning (``--retime-on-cores``): every thread of the
process moves, the autograd engine's device threads included, not only the calling one."""

import os
import threading

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture
def profile_step(monkeypatch):
    monkeypatch.syspath_prepend(BENCH)
    import profile_step

    return profile_step


def test_cpu_sets_parse(profile_step):
    assert profile_step.cpu_set("0-3,8") == {0, 1, 2, 3, 8}
    assert profile_step.cpu_set("5") == {5}


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_every_thread_is_pinned(profile_step):
    allowed = os.sched_getaffinity(0)
    one = {min(allowed)}
    started, stop = threading.Event(), threading.Event()
    other = threading.Thread(target=lambda: (started.set(), stop.wait()))
    other.start()
    started.wait()
    try:
        profile_step.pin_threads(one)
        assert os.sched_getaffinity(0) == one
        assert os.sched_getaffinity(other.native_id) == one
    finally:
        profile_step.pin_threads(allowed)
        stop.set()
        other.join()
    assert os.sched_getaffinity(0) == allowed
