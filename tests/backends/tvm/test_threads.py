"""TVM thread-pool sizing: qcompile sets TVM_NUM_THREADS from the real core count unless the user did."""

from __future__ import annotations

import builtins
import io
import os

from qcompile.backends.tvm import threads


def test_user_setting_wins(monkeypatch):
    monkeypatch.setenv("TVM_NUM_THREADS", "3")
    assert threads.ensure_thread_default(2) == 3 and os.environ["TVM_NUM_THREADS"] == "3"


def test_default_is_the_physical_core_count(monkeypatch):
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "physical_cores", lambda: 5)
    assert threads.ensure_thread_default() == 5 and os.environ["TVM_NUM_THREADS"] == "5"
    monkeypatch.delenv("TVM_NUM_THREADS")
    assert threads.ensure_thread_default(4) == 4  # an explicit count for a lowering made before the pool


def test_physical_cores_counts_smt_siblings_once(monkeypatch):
    real_open = builtins.open

    def fake_open(path, *a, **kw):
        if str(path).endswith("thread_siblings_list"):
            return io.StringIO(siblings)
        return real_open(path, *a, **kw)

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)))
    monkeypatch.setattr(builtins, "open", fake_open)
    for siblings, cores in (("0", 8), ("0-1", 4), ("0,4", 4)):
        assert threads.physical_cores() == cores, siblings
