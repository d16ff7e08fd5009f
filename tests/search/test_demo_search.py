"""The demo's search step in isolation: a tiny untrained supernet, real calibration and measurement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import qcompile as qc
import qcompile.search as qs
from qcompile.cli.demo import evaluate_config
from qcompile.cli.demo_search import (
    DemoSearchSettings,
    LogBitopsPredictor,
    load_or_build_table,
    pick_subnet,
    report_section,
    table_path,
)
from qcompile.data import load_dataset
from qcompile.search.cost import bitops
from tests.conftest import tiny_space


def test_log_bitops_predictor_recovers_a_line():
    space = tiny_space("mobilenet_v3")
    cfgs = [space.sample(seed=s, bits=(2, 3, 4)) for s in range(6)]
    x = np.log([bitops(space, c) for c in cfgs])
    pred = LogBitopsPredictor(space, cfgs, 0.1 + 0.05 * x)
    assert np.allclose(pred.coef, [0.1, 0.05])
    assert np.allclose(pred.predict(cfgs), 0.1 + 0.05 * x)


@pytest.mark.filterwarnings("ignore")
def test_pick_subnet_meets_the_budget_and_measures(tmp_path, monkeypatch):
    torch.manual_seed(0)
    space = tiny_space("mobilenet_v3")
    opts = {"weight_bits": [2, 3, 4, 8, 32], "act_bits": [2, 3, 4, 8, 32]}
    qnet = qc.quantize(qc.trace(space.build_supernet()), **opts).eval()
    data = load_dataset("digits", resolution=32, in_channels=3)
    rows = [{"name": f"random mixed #{i}", "config": space.sample(seed=i, bits=(2, 3, 4)), "accuracy": 0.1 + 0.01 * i}
            for i in range(4)]
    pick = pick_subnet(space, qnet, data, rows, tmp_path / "search", calib_batches=1, evaluate=evaluate_config, seed=0,
                       settings=DemoSearchSettings(n_evals=40, measured=2, table_cache=str(tmp_path / "cache"),
                                                   table_cover=2, table_fit=1))
    limit = float(np.median([bitops(space, r["config"]) for r in rows]))
    if pick.table is None:  # BitOPs budget (no latency table in this build)
        assert pick.limit == pytest.approx(limit) and bitops(space, pick.row["config"]) <= limit
    res = qs.SearchResult.load(tmp_path / "search")
    assert res.n_evals == 40 and res.best == pick.row["config"]
    assert (tmp_path / "search" / "pareto.png").is_file()
    assert 0.0 <= pick.row["accuracy"] <= 1.0 and pick.measured[0]["measured"] == pick.row["accuracy"]
    text = report_section(pick, measured_ms=1.25)
    assert "1.250 ms" in text and "Subnet picked by search" in text and pick.row["config"].stable_hash() in text
    if pick.table is not None:  # the table is cached: a second demo run times nothing and predicts the same
        path = table_path(space, str(tmp_path / "cache"))
        assert path.is_file()

        def no_timing(*a, **k):
            raise AssertionError("a cached latency table was timed again")

        monkeypatch.setattr(qs.LatencyTable, "_lower_saved", no_timing)
        monkeypatch.setattr(qs.LatencyTable, "_time_rounds", no_timing)
        again = load_or_build_table(space, path, max_cover=2, n_fit=1)
        assert len(again.networks) == 3  # the demo's table size settings reach LatencyTable.build
        cfg = pick.row["config"]
        assert again.predict(cfg) == pytest.approx(pick.table.predict(cfg))
