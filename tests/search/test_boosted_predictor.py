"""BoostedPredictor: numpy trees equal scikit-learn's, learns beyond BitOPs, held-out report, save/load, errors."""

import json

import numpy as np
import pytest

import qcompile as qc
import qcompile.search as qs
from qcompile import CheckpointError, ConfigError
from qcompile.search.cost import bitops
from qcompile.search.encoding import encode, encoding_size
from qcompile.search.predictors.boosted import BoostedPredictor, features
from qcompile.search.predictors.saved import load_predictor

FAST = dict(n_estimators=60, max_depth=2, learning_rate=0.1)


def truth(space, cfgs):
    """A score that falls with log BitOPs plus an architecture effect BitOPs does not see."""
    rng = np.random.RandomState(1234)
    w = rng.normal(0, 1, encoding_size(space))
    x = np.stack([encode(space, c) for c in cfgs])
    lb = np.log([bitops(space, c) for c in cfgs])
    return -0.5 * (lb - lb.mean()) / lb.std() + (x @ w - (x @ w).mean()) / (x @ w).std()


@pytest.fixture(scope="module")
def data(tspace):
    cfgs = [tspace.sample(seed=i, bits=(2, 3, 4)) for i in range(240)]
    return cfgs, truth(tspace, cfgs)


def test_numpy_trees_match_sklearn(tspace, data):
    """Prediction from the stored arrays equals scikit-learn's own predict on the same fit."""
    from sklearn.ensemble import GradientBoostingRegressor

    cfgs, y = data
    pred = BoostedPredictor(tspace, seed=3, residual=False, holdout=0.0, **FAST).fit(cfgs, y)
    x = features(tspace, cfgs)
    sk = GradientBoostingRegressor(
        n_estimators=60, max_depth=2, learning_rate=0.1, subsample=0.8, min_samples_leaf=3, random_state=3
    ).fit(x, y)
    test = [tspace.sample(seed=7000 + i, bits=(2, 3, 4)) for i in range(50)]
    np.testing.assert_allclose(pred.predict(test), sk.predict(features(tspace, test)), rtol=0, atol=1e-9)


def test_learns_beyond_bitops_with_heldout_report(tspace, data):
    cfgs, y = data
    pred = BoostedPredictor(tspace, seed=0, **FAST).fit(cfgs, y)
    r = pred.report
    assert r["n_holdout"] == 48 and r["n_train"] == 192
    test = [tspace.sample(seed=9000 + i, bits=(2, 3, 4)) for i in range(150)]
    t = truth(tspace, test)
    tau = qs.kendall_tau(pred.predict(test), t)
    tau_bops = qs.kendall_tau(-np.array([bitops(tspace, c) for c in test], dtype=float), t)
    assert tau > tau_bops + 0.1 and tau > 0.45, (tau, tau_bops)
    # the report is the held-out score: recompute it from the same seeded split
    hold = np.random.RandomState(0).permutation(len(cfgs))[:48]
    p = pred.predict([cfgs[i] for i in hold])
    assert r["kendall_tau"] == pytest.approx(qs.kendall_tau(p, y[hold]))
    assert r["rmse"] == pytest.approx(float(np.sqrt(np.mean((p - y[hold]) ** 2))))


def test_save_load_roundtrip_and_space_check(tspace, data, tmp_path):
    cfgs, y = data
    pred = BoostedPredictor(tspace, seed=1, **FAST).fit(cfgs, y)
    pred.save(tmp_path / "p")
    assert not list((tmp_path / "p").glob("*.pkl"))
    doc = json.loads((tmp_path / "p" / "predictor.json").read_text())
    assert doc["kind"] == "gbt-accuracy-predictor" and doc["n_trees"] == 60
    back = load_predictor(tmp_path / "p", space=tspace)
    assert isinstance(back, BoostedPredictor)
    np.testing.assert_array_equal(back.predict(cfgs[:20]), pred.predict(cfgs[:20]))
    other = qc.spaces.get_space("mobilenet_v3", num_classes=10, width_mult=0.35, resolutions=(32,))
    with pytest.raises(ConfigError, match="another space"):
        BoostedPredictor.load(tmp_path / "p", space=other)
    with pytest.raises(CheckpointError):
        BoostedPredictor.load(tmp_path / "missing")


def test_bad_options_and_inputs(tspace, data):
    cfgs, y = data
    with pytest.raises(ConfigError, match="max_depth"):
        BoostedPredictor(tspace, max_depth=0)
    with pytest.raises(ConfigError, match="options"):
        BoostedPredictor(tspace, colour="red")
    with pytest.raises(ConfigError, match="one per config"):
        BoostedPredictor(tspace, **FAST).fit(cfgs, y[:5])
    with pytest.raises(ConfigError, match="not fitted"):
        BoostedPredictor(tspace).predict(cfgs[:2])


def test_cli_fit_gbt_on_negated_loss(tspace, data, tmp_path, capsys):
    """`qcompile predictor fit --kind gbt --target loss` fits -loss (higher = better) and saves a loadable predictor."""
    from qcompile.cli import main
    from qcompile.search.predictors.measured import append_jsonl

    cfgs, y = data
    cache = tmp_path / "acc.jsonl"
    for i, (c, v) in enumerate(zip(cfgs[:80], y[:80])):
        append_jsonl(
            cache,
            {"key": f"k{i}", "config": c.to_dict(), "accuracy": 0.5, "loss": float(-v), "space": tspace.to_dict()},
        )
    assert (
        main(
            [
                "predictor",
                "fit",
                str(cache),
                "--out",
                str(tmp_path / "p"),
                "--kind",
                "gbt",
                "--target",
                "loss",
                "--n-estimators",
                "40",
                "--holdout",
                "0.25",
            ]
        )
        == 0
    )
    assert "held-out Kendall tau" in capsys.readouterr().out
    pred = load_predictor(tmp_path / "p", space=tspace)
    assert isinstance(pred, BoostedPredictor) and pred.report["target"] == "negated mean loss"
    assert pred.report["n_holdout"] == 20 and len(pred.trees) == 40
    # it predicts the fitted values (-loss = y; 60 samples: a weak fit, but of the right sign), not the accuracy
    assert qs.kendall_tau(pred.predict(cfgs[80:200]), y[80:200]) > 0.15
    (tmp_path / "old.jsonl").write_text(cache.read_text().replace('"loss": ', '"loss_": '))
    capsys.readouterr()
    assert (
        main(["predictor", "fit", str(tmp_path / "old.jsonl"), "--out", str(tmp_path / "q"), "--target", "loss"]) == 2
    )
    assert "records without a loss" in capsys.readouterr().err
