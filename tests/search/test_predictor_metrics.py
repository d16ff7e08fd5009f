"""kendall_tau / pairwise_accuracy / rmse against scipy and brute-force pair counts."""

import itertools

import numpy as np
import pytest
import scipy.stats

import qcompile.search as qs
from qcompile import ConfigError
from qcompile.search.predictors import rmse


def brute_pairwise(pred, true):
    good = total = 0.0
    for i, j in itertools.combinations(range(len(true)), 2):
        if true[i] == true[j]:
            continue
        total += 1
        if pred[i] == pred[j]:
            good += 0.5
        elif (pred[i] > pred[j]) == (true[i] > true[j]):
            good += 1
    return good / total


@pytest.mark.parametrize("seed", range(6))
def test_kendall_tau_matches_scipy_with_ties(seed):
    rng = np.random.RandomState(seed)
    a = rng.randint(0, 6, 40).astype(float)
    b = a + rng.normal(0, 2, 40).round()
    assert qs.kendall_tau(a, b) == pytest.approx(scipy.stats.kendalltau(a, b).statistic, abs=1e-12)


def test_kendall_tau_extremes():
    x = np.arange(10.0)
    assert qs.kendall_tau(x, x) == 1.0
    assert qs.kendall_tau(x, -x) == -1.0
    assert qs.kendall_tau(x, np.ones(10)) == 0.0  # scipy: nan


@pytest.mark.parametrize("seed", range(6))
def test_pairwise_accuracy_matches_brute_force(seed):
    rng = np.random.RandomState(100 + seed)
    true = rng.randint(0, 8, 30).astype(float)
    pred = true + rng.randint(-3, 4, 30)
    assert qs.pairwise_accuracy(pred, true) == pytest.approx(brute_pairwise(pred, true), abs=1e-12)


def test_pairwise_accuracy_known_values():
    assert qs.pairwise_accuracy([1, 2, 3], [10, 20, 30]) == 1.0
    assert qs.pairwise_accuracy([3, 2, 1], [10, 20, 30]) == 0.0
    # pairs (0,1) right, (0,2) right, (1,2) wrong -> 2/3
    assert qs.pairwise_accuracy([1, 3, 2], [10, 20, 30]) == pytest.approx(2 / 3)
    assert rmse([1, 2], [1, 4]) == pytest.approx(np.sqrt(2))


def test_metrics_bad_input():
    with pytest.raises(ConfigError, match="equal length"):
        qs.kendall_tau([1, 2, 3], [1, 2])
    with pytest.raises(ConfigError, match="at least 2"):
        qs.pairwise_accuracy([1], [1])
    with pytest.raises(ConfigError, match="finite"):
        qs.kendall_tau([1, np.nan], [1, 2])


def test_heldout_report_by_hand():
    from qcompile.search.predictors.metrics import heldout_report

    # pairs (0,1) and (0,2) concordant, (1,2) discordant: tau (2 - 1) / 3, 2 of 3 pairs ordered right
    r = heldout_report([1.0, 2.0, 3.0], [1.0, 3.0, 2.0], bitops=[30.0, 20.0, 10.0])
    assert r["kendall_tau"] == pytest.approx(1 / 3) and r["pairwise_accuracy"] == pytest.approx(2 / 3)
    assert r["rmse"] == pytest.approx((2 / 3) ** 0.5)
    # fewer BitOPs ranked higher: -bitops orders the configs as the predictions do
    assert r["bitops_kendall_tau"] == pytest.approx(1 / 3) and r["bitops_pairwise_accuracy"] == pytest.approx(2 / 3)
    assert "bitops_kendall_tau" not in heldout_report([1.0, 2.0], [2.0, 1.0])
