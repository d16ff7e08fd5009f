"""AccuracyPredictor: learns a known function of the encoding, deterministic, held-out report, save/load, transfer."""

import numpy as np
import pytest

import qcompile as qc
import qcompile.search as qs
from qcompile import CheckpointError, ConfigError
from qcompile.search.encoding import encode, encoding_size

FAST = dict(hidden=(64, 64, 64), bit_hidden=(64,), epochs=60)


def synthetic(space, n, seed, bits=(2, 3, 4)):
    """Configs and a ground-truth 'accuracy': a fixed linear function of the one-hot encoding + interactions."""
    cfgs = [space.sample(seed=seed + i, bits=bits) for i in range(n)]
    rng = np.random.RandomState(1234)
    w = rng.normal(0, 1, encoding_size(space))
    x = np.stack([encode(space, c) for c in cfgs])
    y = x @ w
    return cfgs, 0.9 + 0.02 * (y - y.mean()) / y.std()


def test_fit_learns_and_reports_heldout(tspace):
    cfgs, y = synthetic(tspace, 300, 0)
    pred = qs.AccuracyPredictor(tspace, seed=0, **FAST).fit(cfgs, y)
    r = pred.report
    assert r["n_holdout"] == 60 and r["n_train"] == 240
    # the report is computed on held-out configs: recompute it independently
    test_cfgs, test_y = synthetic(tspace, 100, 10_000)
    p = pred.predict(test_cfgs)
    assert isinstance(p, np.ndarray) and p.shape == (100,) and p.dtype == np.float64
    import scipy.stats

    assert scipy.stats.kendalltau(p, test_y).statistic > 0.6
    assert qs.pairwise_accuracy(p, test_y) > 0.8
    assert r["kendall_tau"] > 0.6 and r["pairwise_accuracy"] > 0.8 and r["rmse"] < 0.02
    # a predictor that predicts noise would not: the report is a real held-out score
    noise = qs.AccuracyPredictor(tspace, seed=0, **FAST).fit(cfgs, np.random.RandomState(0).permutation(y))
    assert noise.report["kendall_tau"] < 0.3


def test_deterministic_per_seed(tspace):
    cfgs, y = synthetic(tspace, 80, 0)
    a = qs.AccuracyPredictor(tspace, seed=3, **FAST).fit(cfgs, y).predict(cfgs[:10])
    b = qs.AccuracyPredictor(tspace, seed=3, **FAST).fit(cfgs, y).predict(cfgs[:10])
    c = qs.AccuracyPredictor(tspace, seed=4, **FAST).fit(cfgs, y).predict(cfgs[:10])
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_save_load_roundtrip_and_other_space(tspace, tmp_path):
    cfgs, y = synthetic(tspace, 60, 0)
    pred = qs.AccuracyPredictor(tspace, seed=0, **FAST).fit(cfgs, y)
    pred.save(tmp_path / "p")
    assert (tmp_path / "p" / "predictor.safetensors").is_file() and (tmp_path / "p" / "predictor.json").is_file()
    back = qs.AccuracyPredictor.load(tmp_path / "p")
    assert np.array_equal(back.predict(cfgs), pred.predict(cfgs))
    assert back.report == pytest.approx(pred.report)
    assert qs.AccuracyPredictor.load(tmp_path / "p", space=tspace).space.to_dict() == tspace.to_dict()
    other = qc.spaces.mobilenet_v3(num_classes=10, width_mult=0.25, resolutions=(16,), kernels=(3,), expands=(3,),
                                   depths=(1, 2))
    with pytest.raises(ConfigError, match="space"):
        qs.AccuracyPredictor.load(tmp_path / "p", space=other)
    with pytest.raises(ConfigError):
        qs.AccuracyPredictor(other, seed=0, **FAST).fit(
            [other.sample(seed=i, bits=(2, 3)) for i in range(10)], np.arange(10.0), init_from=pred)
    with pytest.raises(CheckpointError):
        qs.AccuracyPredictor.load(tmp_path / "missing")


def test_bad_input(tspace):
    cfgs, y = synthetic(tspace, 10, 0)
    with pytest.raises(ConfigError, match="one per config"):
        qs.AccuracyPredictor(tspace).fit(cfgs, y[:5])
    with pytest.raises(ConfigError, match="holdout"):
        qs.AccuracyPredictor(tspace, holdout=1.5)
    with pytest.raises(ConfigError, match="hidden"):
        qs.AccuracyPredictor(tspace, hidden=())
    with pytest.raises(ConfigError, match="options"):
        qs.AccuracyPredictor(tspace, colour="red")


def test_transfer_from_float_predictor(tspace):
    """APQ transfer: the quantized predictor starts from the float one (bit head at zero) and beats
    a scratch fit when few quantized samples are available."""
    rng = np.random.RandomState(7)
    wa = rng.normal(0, 1, encoding_size(tspace))
    n_arch = qs.AccuracyPredictor(tspace).n_arch

    def truth(cfgs, quant):
        x = np.stack([encode(tspace, c) for c in cfgs])
        arch = x[:, :n_arch] @ wa[:n_arch]
        bitpart = x[:, n_arch:] @ wa[n_arch:] if quant else 0.0
        return 0.9 + 0.01 * arch + 0.003 * bitpart

    fcfgs = [tspace.sample(seed=i) for i in range(300)]
    fpred = qs.AccuracyPredictor(tspace, seed=0, **FAST).fit(fcfgs, truth(fcfgs, False))
    few = [tspace.sample(seed=5000 + i, bits=(2, 3, 4)) for i in range(30)]
    test = [tspace.sample(seed=9000 + i, bits=(2, 3, 4)) for i in range(150)]
    tpred = qs.AccuracyPredictor(tspace, seed=0, **FAST).fit(few, truth(few, True), init_from=fpred)
    scratch = qs.AccuracyPredictor(tspace, seed=0, **FAST).fit(few, truth(few, True))
    # before fine-tuning the transferred predictor equals the float one: check through a zero-epoch-like init
    t_true = truth(test, True)
    tau_t = qs.kendall_tau(tpred.predict(test), t_true)
    tau_s = qs.kendall_tau(scratch.predict(test), t_true)
    assert tpred.transferred and not scratch.transferred
    assert tau_t > tau_s + 0.05, (tau_t, tau_s)


def test_mlp_ensemble_is_the_mean_of_its_members_and_roundtrips(tspace, tmp_path):
    """MLPEnsemble: one held-out split for all members, prediction = mean of members, save/load via load_predictor."""
    cfgs, y = synthetic(tspace, 120, 0)
    ens = qs.MLPEnsemble(tspace, seed=2, members=3, **FAST).fit(cfgs, y)
    assert [m.seed for m in ens.members] == [2, 3, 4] and ens.report["n_holdout"] == 24
    test, _ = synthetic(tspace, 20, 5000)
    mean = np.mean([m.predict(test) for m in ens.members], axis=0)
    np.testing.assert_allclose(ens.predict(test), mean, rtol=0, atol=1e-12)
    # every member was fitted on the same 96 configs: a member refitted on them alone predicts the same
    train = np.random.RandomState(2).permutation(120)[24:]  # the ensemble's seeded split, in its order
    opts = qs.PredictorOptions(**{**FAST, "holdout": 0.0})
    alone = qs.AccuracyPredictor(tspace, seed=3, options=opts).fit([cfgs[i] for i in train], y[train])
    np.testing.assert_allclose(alone.predict(test), ens.members[1].predict(test), rtol=0, atol=1e-6)
    ens.save(tmp_path / "e")
    back = qs.load_predictor(tmp_path / "e", space=tspace)
    assert isinstance(back, qs.MLPEnsemble)
    np.testing.assert_allclose(back.predict(test), ens.predict(test), rtol=0, atol=1e-9)
    with pytest.raises(ConfigError, match="members"):
        qs.MLPEnsemble(tspace, members=0)
