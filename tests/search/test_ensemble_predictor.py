"""EnsemblePredictor: the mean of its members' predictions standardised on the fit set, computed by hand; blind
to a member's scale; save/load round trip; bad members are one clear ConfigError."""

import json

import numpy as np
import pytest

import qcompile as qc
import qcompile.search as qs
from qcompile import CheckpointError, ConfigError
from qcompile.search.predictors import ensemble as ens_mod
from tests.search.test_boosted_predictor import truth

GBT = dict(n_estimators=40, max_depth=2, learning_rate=0.1, holdout=0.0)
MLP = dict(hidden=(32, 32), bit_hidden=(16,), epochs=30, holdout=0.0)


def members(space, seed=0):
    return [qs.BoostedPredictor(space, seed=seed, **GBT), qs.AccuracyPredictor(space, seed=seed, **MLP)]


@pytest.fixture(scope="module")
def data(tspace):
    cfgs = [tspace.sample(seed=i, bits=(2, 3, 4)) for i in range(160)]
    y = truth(tspace, cfgs) + np.random.RandomState(5).normal(0, 0.3, len(cfgs))
    return cfgs, y


@pytest.fixture(scope="module")
def fitted(tspace, data):
    cfgs, y = data
    return qs.EnsemblePredictor(tspace, members=members(tspace, seed=2), seed=2, holdout=0.25).fit(cfgs, y)


class Scaled:
    """A member whose output is another predictor's times `a` plus `b` (a predictor on another scale)."""

    def __init__(self, inner, a, b):
        self.inner, self.a, self.b = inner, a, b
        self.space, self.options = inner.space, inner.options

    def fit(self, configs, values):
        self.inner.fit(configs, values)
        return self

    def predict(self, configs):
        return self.a * self.inner.predict(configs) + self.b

    def save(self, path):  # pragma: no cover - not saved here
        raise NotImplementedError


def test_equals_the_hand_computed_mean_of_standardised_predictions(tspace, data, fitted):
    cfgs, y = data
    # the same seeded split as every predictor's (`fit_split`): 40 held out, the rest fitted
    perm = np.random.RandomState(2).permutation(len(cfgs))
    train = np.sort(perm[40:])
    tr, ytr = [cfgs[i] for i in train], y[train]
    # the members fitted independently on the training part, with the same settings and seed
    gbt = qs.BoostedPredictor(tspace, seed=2, **GBT).fit(tr, ytr)
    mlp = qs.AccuracyPredictor(tspace, seed=2, **MLP).fit(tr, ytr)
    test = [tspace.sample(seed=5000 + i, bits=(2, 3, 4)) for i in range(40)]
    z = []
    for m in (gbt, mlp):
        p_tr, p = m.predict(tr), m.predict(test)
        z.append((p - p_tr.mean()) / p_tr.std())
    want = ytr.mean() + ytr.std() * (z[0] + z[1]) / 2
    np.testing.assert_allclose(fitted.predict(test), want, rtol=0, atol=1e-9)
    r = fitted.report
    assert r["n_train"] == 120 and r["n_holdout"] == 40
    assert r["members"] == ["gbt-accuracy-predictor", "mlp-accuracy-predictor"]
    held = [cfgs[i] for i in perm[:40]]
    assert r["kendall_tau"] == pytest.approx(qs.kendall_tau(fitted.predict(held), y[perm[:40]]))
    assert r["member_reports"][0]["kendall_tau"] == pytest.approx(qs.kendall_tau(gbt.predict(held), y[perm[:40]]))
    # averaging the two does better on this noisy target than the worse member, on unseen configs
    t = truth(tspace, test)
    taus = [qs.kendall_tau(m.predict(test), t) for m in (gbt, mlp)]
    assert qs.kendall_tau(fitted.predict(test), t) > min(taus)


def test_a_members_scale_does_not_weigh(tspace, data, fitted):
    """Each member is standardised on the fit set: a member's output times 1000 plus 7 changes nothing."""
    cfgs, y = data
    gbt, mlp = members(tspace, seed=2)
    other = qs.EnsemblePredictor(tspace, members=[Scaled(gbt, 1000.0, 7.0), mlp], seed=2, holdout=0.25).fit(cfgs, y)
    test = [tspace.sample(seed=6000 + i, bits=(2, 3, 4)) for i in range(30)]
    np.testing.assert_allclose(other.predict(test), fitted.predict(test), rtol=1e-9, atol=1e-9)


def test_save_load_round_trip(tspace, data, fitted, tmp_path):
    cfgs, _ = data
    fitted.save(tmp_path / "p")
    doc = json.loads((tmp_path / "p" / "predictor.json").read_text())
    assert doc["kind"] == ens_mod.KIND
    assert [m["dir"] for m in doc["members"]] == ["member-00", "member-01"]
    assert [m["kind"] for m in doc["members"]] == ["gbt-accuracy-predictor", "mlp-accuracy-predictor"]
    assert (tmp_path / "p" / "member-00" / "predictor.safetensors").is_file()
    test = cfgs[:20] + [tspace.sample(seed=7000 + i, bits=(2, 3, 4)) for i in range(20)]
    for got in (qs.load_predictor(tmp_path / "p"), qs.load_predictor(tmp_path / "p", space=tspace)):
        assert isinstance(got, qs.EnsemblePredictor)
        np.testing.assert_array_equal(got.predict(test), fitted.predict(test))
        assert got.report == json.loads(json.dumps(fitted.report))
    other = qc.spaces.get_space("mobilenet_v3", num_classes=10, width_mult=0.35, resolutions=(32,))
    with pytest.raises(ConfigError, match="another space"):
        qs.load_predictor(tmp_path / "p", space=other)
    (tmp_path / "p" / "member-01" / "predictor.json").unlink()
    with pytest.raises(CheckpointError, match="member-01"):
        qs.load_predictor(tmp_path / "p")


def test_default_members_are_the_cv_chosen_settings(tspace):
    from qcompile.cli.predictor import ENSEMBLE_GBT_DEFAULTS

    ens = qs.EnsemblePredictor(tspace, seed=3)
    gbt, mlp = ens.members
    assert isinstance(gbt, qs.BoostedPredictor) and isinstance(mlp, qs.AccuracyPredictor)
    assert (gbt.options.max_depth, gbt.options.n_estimators, gbt.options.learning_rate) == (3, 1000, 0.02)
    assert {k: getattr(gbt.options, k) for k in ENSEMBLE_GBT_DEFAULTS} == ENSEMBLE_GBT_DEFAULTS
    assert mlp.options.hidden == (400, 400, 400) and gbt.seed == mlp.seed == 3
    assert gbt.options.holdout == mlp.options.holdout == 0.0


def test_bad_members(tspace, data):
    with pytest.raises(ConfigError, match="members: got \\[\\]"):
        qs.EnsemblePredictor(tspace, members=[])
    with pytest.raises(ConfigError, match="members\\[1\\].options.holdout"):
        qs.EnsemblePredictor(tspace, members=[qs.BoostedPredictor(tspace, **GBT), qs.AccuracyPredictor(tspace)])
    with pytest.raises(ConfigError, match="members\\[0\\]"):
        qs.EnsemblePredictor(tspace, members=[object()])
    with pytest.raises(ConfigError, match="holdout"):
        qs.EnsemblePredictor(tspace, members=members(tspace), holdout=1.0)
    with pytest.raises(ConfigError, match="not fitted"):
        qs.EnsemblePredictor(tspace, members=members(tspace)).predict(data[0][:2])
