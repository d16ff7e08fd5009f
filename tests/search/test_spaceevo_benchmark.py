"""CI's tiny version of benchmarks/spaceevo.py: tiny table, 3 seeds of evolution vs random, 3 trained spaces (MAC
stand-in latency: timing seven block types' kernels takes minutes; the kernel latency adapter has its own tests)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_spaceevo_benchmark_tiny(tmp_path):
    from benchmarks.spaceevo import main

    assert main(["all", "--tiny", "--calib-seeds", "2", "--extra-train", "64", "--out", str(tmp_path)]) == 0
    search = json.loads((tmp_path / "search_mac.json").read_text())
    assert search["seeds"] == 3 and len(search["rows"]) == 3
    assert all(r["evolution"] > 0 and r["random"] > 0 for r in search["rows"])
    qt = json.loads((tmp_path / "qt_mac.json").read_text())
    assert len(qt["spaces"]) == 3
    assert all(0 <= s["pareto_accuracy"] <= 1 for s in qt["spaces"])
    assert -1 <= qt["kendall_tau"] <= 1
    assert qt["calib_seeds"] == 2 and qt["extra_train"] == 64  # the less noisy evaluation protocol was used
    table = json.loads((tmp_path / "table.json").read_text())
    assert sorted(table["entries"]) == ["1", "2", "3", "4", "5", "6"]
    assert all(len(rows) == 4 for stage in table["entries"].values() for rows in stage.values())
