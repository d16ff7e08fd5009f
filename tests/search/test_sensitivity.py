"""Per-layer sensitivities: the measured configs, the additive features against a hand count, recovery of
known sensitivities through a stand-in evaluator, and the sensitivity line of `BoostedPredictor`."""

import numpy as np
import pytest

import qcompile.search as qs
from qcompile import ConfigError
from qcompile.search.cost import bitops
from qcompile.search.predictors.boosted import BoostedPredictor
from qcompile.search.predictors.saved import load_predictor
from qcompile.search.predictors.sensitivity import LayerSensitivity, measure_sensitivities, sensitivity_configs


def known_sensitivity(space, seed=0):
    rng = np.random.RandomState(seed)
    n = space.num_layer_slots
    # a few very sensitive slots among many mild ones, as measured on trained supernets
    w = rng.gamma(0.5, 0.01, (n, 1))
    a = rng.gamma(0.5, 0.01, (n, 1))
    return LayerSensitivity((2,), 4, 0.15, w, a)


class AdditiveEvaluator:
    """Stand-in for `SupernetEvaluator`: loss = base + the sum of per-slot damages (3 bits: a quarter of 2 bits)."""

    def __init__(self, space, sens):
        self.space, self.sens, self.calls = space, sens, 0

    def loss(self, configs):
        self.calls += len(configs)
        return self.sens.base_loss + self.sens.features(self.space, configs)[:, -1]


def test_sensitivity_configs(tspace):
    items = sensitivity_configs(tspace, low_bits=(2, 3))
    n = tspace.num_layer_slots
    assert len(items) == 1 + 2 * 2 * n
    base = items[0][3]
    assert items[0][:3] == ("base", -1, 4) and set(base.policy.bits) == {(4, 4)}
    assert base.depths == tspace.largest().depths
    for kind, slot, b, cfg in items[1:]:
        diff = [i for i, (p, q) in enumerate(zip(cfg.policy.bits, base.policy.bits)) if p != q]
        assert diff == [slot]
        assert cfg.policy.bits[slot] == ((b, 4) if kind == "w" else (4, b))
    with pytest.raises(ConfigError, match="low_bits"):
        sensitivity_configs(tspace, low_bits=(4,))
    with pytest.raises(ConfigError, match="bit choices"):
        sensitivity_configs(tspace, low_bits=(5,))
    with pytest.raises(ConfigError, match="every layer slot active"):
        sensitivity_configs(tspace, arch=tspace.smallest())


def test_features_by_hand(tspace):
    sens = known_sensitivity(tspace)
    cfgs = [tspace.sample(seed=i, bits=(2, 3, 4)) for i in range(20)]
    x = sens.features(tspace, cfgs)
    assert x.shape == (20, 5)
    for cfg, row in zip(cfgs, x):
        active = tspace._active_layer_slots(cfg)
        want = np.zeros(5)
        for s, ((w, a), on) in enumerate(zip(cfg.policy.bits, active)):
            if not on:
                continue
            for k, (v, table) in enumerate(((w, sens.weight), (a, sens.act))):
                d = {2: table[s, 0], 3: table[s, 0] / 4, 4: 0.0}[v]
                if v in (2, 3):
                    want[2 * k + (v - 2)] += d
                want[4] += d
        np.testing.assert_allclose(row, want, rtol=1e-12, atol=1e-15)
    # uniform top bits and a float subnet carry no damage
    top = tspace.largest(bits=4)
    assert np.all(sens.features(tspace, [top, tspace.largest()]) == 0)


def test_measure_recovers_known_sensitivities(tspace, tmp_path):
    sens = known_sensitivity(tspace, seed=3)
    ev = AdditiveEvaluator(tspace, sens)
    got = measure_sensitivities(ev, low_bits=(2,))
    assert ev.calls == 1 + 2 * tspace.num_layer_slots
    assert got.base_loss == pytest.approx(0.15)
    np.testing.assert_allclose(got.weight, sens.weight, atol=1e-12)
    np.testing.assert_allclose(got.act, sens.act, atol=1e-12)
    back = LayerSensitivity.load(got.save(tmp_path / "s.json"))
    np.testing.assert_array_equal(back.weight, got.weight)
    assert back.low_bits == (2,) and back.top == 4


def test_sensitivity_line_ranks_an_additive_target(tspace, tmp_path):
    """On a loss that is additive in per-layer damage (plus noise), the fitted sensitivity line ranks held-out
    subnets far better than BitOPs or the trees without the prior; it saves and loads with its sensitivity."""
    sens = known_sensitivity(tspace, seed=5)
    rng = np.random.RandomState(0)
    cfgs = [tspace.sample(seed=i, bits=(2, 3, 4)) for i in range(120)]
    test = [tspace.sample(seed=5000 + i, bits=(2, 3, 4)) for i in range(80)]

    def score(cs):  # higher = better: the negated loss
        return -(sens.base_loss + sens.features(tspace, cs)[:, -1]) + rng.normal(0, 0.002, len(cs))

    y, t = score(cfgs), score(test)
    line = BoostedPredictor(tspace, seed=0, n_estimators=0, holdout=0.0, sensitivity=sens).fit(cfgs, y)
    trees = BoostedPredictor(tspace, seed=0, n_estimators=60, max_depth=2, learning_rate=0.1, holdout=0.0).fit(cfgs, y)
    tau_line = qs.kendall_tau(line.predict(test), t)
    tau_trees = qs.kendall_tau(trees.predict(test), t)
    tau_bops = qs.kendall_tau(-np.array([bitops(tspace, c) for c in test], dtype=float), t)
    assert tau_line > 0.8 and tau_line > tau_trees + 0.15 and tau_line > tau_bops + 0.3, (tau_line, tau_trees, tau_bops)
    line.save(tmp_path / "p")
    back = load_predictor(tmp_path / "p", space=tspace)
    assert back.trees == [] and back.sensitivity is not None
    np.testing.assert_array_equal(back.predict(test), line.predict(test))
    with pytest.raises(ConfigError, match="layer slots"):
        BoostedPredictor(tspace, sensitivity=LayerSensitivity((2,), 4, 0.1, np.zeros((3, 1)), np.zeros((3, 1))))
