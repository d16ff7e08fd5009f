"""`qcompile predictor fit --kind sens-line|gbt-sens --sensitivity noise|measured|FILE` end to end on a tiny run:
fit through the CLI, save, load, and predict exactly what the same predictor fitted in-process predicts, with the
prior computed independently; every bad combination of options is one line on stderr and exit 2."""

import numpy as np
import pytest

from qcompile.cli import main
from qcompile.search.predictors import BoostedOptions, BoostedPredictor, load_predictor, noise_sensitivity
from qcompile.search.predictors.measured import append_jsonl, config_hash, model_fingerprint, read_jsonl
from qcompile.search.predictors.sensitivity import sensitivity_configs
from tests.search.test_sensitivity import known_sensitivity
from tests.search.test_supernet_evaluator import make_run

N = 60


@pytest.fixture(scope="module")
def cache(tspace, tqnet, tmp_path_factory):
    """A tiny run and a JSONL cache of N records in `collect`'s format (values: a synthetic loss)."""
    tmp = tmp_path_factory.mktemp("fitcli")
    run = make_run(tspace, tqnet, tmp / "run")
    cfgs = [tspace.sample(seed=i, bits=(2, 3, 4)) for i in range(N)]
    loss = 0.2 + known_sensitivity(tspace, seed=2).features(tspace, cfgs)[:, -1]
    loss = loss + np.random.RandomState(0).normal(0, 0.001, N)
    path = tmp / "acc.jsonl"
    for i, (c, v) in enumerate(zip(cfgs, loss)):
        append_jsonl(path, {"key": f"k{i}", "config": c.to_dict(), "accuracy": 0.5, "loss": float(v),
                            "space": tspace.to_dict(), "model": model_fingerprint(tqnet), "run": str(run),
                            "split": "val", "calib_batches": 1, "calib_seed": 1, "batch_size": 32})
    return path, run, cfgs, -loss


def fit(cache_path, out, *extra):
    return main(["predictor", "fit", str(cache_path), "--out", str(out), "--target", "loss", "--holdout", "0.25",
                 *extra])


def in_process(space, cfgs, y, sens, n_estimators):
    return BoostedPredictor(space, seed=0, options=BoostedOptions(n_estimators=n_estimators, holdout=0.25),
                            sensitivity=sens).fit(cfgs, y)


def test_gbt_sens_with_the_noise_prior(tspace, tqnet, cache, tmp_path, capsys):
    path, _, cfgs, y = cache
    assert fit(path, tmp_path / "p", "--kind", "gbt-sens", "--sensitivity", "noise", "--n-estimators", "30") == 0
    assert "gbt-sens, sensitivity noise" in capsys.readouterr().out
    got = load_predictor(tmp_path / "p", space=tspace)
    want_sens = noise_sensitivity(tqnet, tspace)  # from the fixture's supernet, not the run the CLI loaded
    np.testing.assert_array_equal(got.sensitivity.weight, want_sens.weight)
    np.testing.assert_array_equal(got.sensitivity.act, want_sens.act)
    assert len(got.trees) == 30 and got.report["sensitivity"] == "noise"
    test = [tspace.sample(seed=900 + i, bits=(2, 3, 4)) for i in range(30)]
    want = in_process(tspace, cfgs, y, want_sens, 30)
    np.testing.assert_array_equal(got.predict(test), want.predict(test))
    assert got.report["kendall_tau"] == pytest.approx(want.report["kendall_tau"])


def test_sens_line_from_a_saved_prior(tspace, cache, tmp_path):
    path, _, cfgs, y = cache
    sens = known_sensitivity(tspace, seed=2)
    sens.save(tmp_path / "sens.json")
    assert fit(path, tmp_path / "p", "--kind", "sens-line", "--sensitivity", str(tmp_path / "sens.json")) == 0
    got = load_predictor(tmp_path / "p", space=tspace)
    assert got.trees == [] and got.options.n_estimators == 0
    test = [tspace.sample(seed=700 + i, bits=(2, 3, 4)) for i in range(30)]
    np.testing.assert_array_equal(got.predict(test), in_process(tspace, cfgs, y, sens, 0).predict(test))
    # the values are the loss of that very prior plus noise: the line ranks held-out subnets almost exactly
    assert got.report["kendall_tau"] > 0.9


def test_measured_prior_is_cached_beside_the_data(tspace, cache, tmp_path, capsys):
    path, run, cfgs, y = cache
    local = tmp_path / "acc.jsonl"
    local.write_text(path.read_text())
    assert fit(local, tmp_path / "p", "--kind", "sens-line", "--sensitivity", "measured") == 0
    side = read_jsonl(tmp_path / "acc.sensitivity.jsonl")
    want_cfgs = {c.stable_hash() for *_, c in sensitivity_configs(tspace, (2,), 4)}
    assert len(side) == len(want_cfgs) == 1 + 2 * tspace.num_layer_slots
    assert all(r["calib_batches"] == 1 and r["batch_size"] == 32 for r in side)  # the records' protocol
    got = load_predictor(tmp_path / "p", space=tspace)
    # the prior is the differences of the side file's losses (base, then one slot's weights or activations)
    loss = {r["config_hash"]: r["loss"] for r in side}
    items = sensitivity_configs(tspace, (2,), 4)
    base = loss[config_hash(tspace, items[0][3])]
    for kind, slot, _, c in items[1:]:
        table = got.sensitivity.weight if kind == "w" else got.sensitivity.act
        assert table[slot, 0] == pytest.approx(loss[config_hash(tspace, c)] - base)
    # a second fit reads the side file (nothing measured again) and fits the same line
    assert fit(local, tmp_path / "q", "--kind", "sens-line", "--sensitivity", "measured") == 0
    assert len(read_jsonl(tmp_path / "acc.sensitivity.jsonl")) == len(side)
    test = cfgs[:10]
    np.testing.assert_array_equal(load_predictor(tmp_path / "q").predict(test), got.predict(test))


@pytest.mark.parametrize("args, says", [
    (["--kind", "gbt-sens"], "--sensitivity: got None"),
    (["--kind", "gbt", "--sensitivity", "noise"], "only with --kind sens-line or gbt-sens"),
    (["--kind", "mlp", "--run", "x"], "--run"),
    (["--kind", "sens-line", "--sensitivity", "noise", "--n-estimators", "5"], "--n-estimators: got 5"),
    (["--kind", "gbt-sens", "--sensitivity", "nosuch.json"], "existing LayerSensitivity JSON"),
    (["--kind", "gbt", "--init-from", "x"], "only with --kind mlp"),
    (["--kind", "gbt-sens", "--sensitivity", "bogus"], "noise, measured"),
])
def test_bad_combinations_are_one_line(cache, tmp_path, capsys, args, says):
    path, *_ = cache
    assert fit(path, tmp_path / "p", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "p").exists()


def test_the_run_must_be_the_one_measured(tspace, tqnet, cache, tmp_path, capsys):
    import copy

    import torch

    path, *_ = cache
    q2 = copy.deepcopy(tqnet)  # a run of the same space with other weights
    with torch.no_grad():
        next(p for p in q2.parameters() if p.dim() == 4).add_(0.01)
    run2 = make_run(tspace, q2, tmp_path / "run2")
    assert fit(path, tmp_path / "p", "--kind", "gbt-sens", "--sensitivity", "noise", "--run", str(run2)) == 2
    assert "its weights differ" in capsys.readouterr().err
    # records that name no run need --run
    bare = tmp_path / "bare.jsonl"
    bare.write_text(path.read_text().replace('"run": ', '"run_": '))
    assert fit(bare, tmp_path / "p", "--kind", "gbt-sens", "--sensitivity", "noise") == 2
    assert "--run: got None" in capsys.readouterr().err
    assert fit(bare, tmp_path / "p", "--kind", "gbt-sens", "--sensitivity", "noise", "--n-estimators", "5",
               "--run", str(make_run(tspace, tqnet, tmp_path / "run3"))) == 0
    assert isinstance(load_predictor(tmp_path / "p"), BoostedPredictor)


def test_ensemble_fit_then_search_with_it(tspace, cache, tmp_path, capsys):
    """`--kind ensemble`: the saved directory predicts what the same ensemble fitted in-process predicts, and
    `qcompile search --predictor DIR` maximises exactly those predictions."""
    import json

    import qcompile.search as qs
    from qcompile.search.predictors import AccuracyPredictor, EnsemblePredictor, PredictorOptions

    path, run, cfgs, y = cache
    assert fit(path, tmp_path / "p", "--kind", "ensemble", "--n-estimators", "30", "--epochs", "20",
               "--hidden", "32,32") == 0
    assert "predictor (ensemble, target negated mean loss)" in capsys.readouterr().out
    got = load_predictor(tmp_path / "p", space=tspace)
    assert isinstance(got, EnsemblePredictor) and len(got.members) == 2
    gbt_opts = got.members[0].options
    # the trees take the ensemble's defaults (depth 3, shrinkage 0.02) where no flag was given
    assert (gbt_opts.n_estimators, gbt_opts.max_depth, gbt_opts.learning_rate) == (30, 3, 0.02)
    want = EnsemblePredictor(tspace, seed=0, holdout=0.25, members=[
        BoostedPredictor(tspace, seed=0, options=BoostedOptions(n_estimators=30, max_depth=3, learning_rate=0.02,
                                                                holdout=0.0)),
        AccuracyPredictor(tspace, seed=0, options=PredictorOptions(epochs=20, hidden=(32, 32), holdout=0.0)),
    ]).fit(cfgs, y)
    test = [tspace.sample(seed=800 + i, bits=(2, 3, 4)) for i in range(30)]
    np.testing.assert_allclose(got.predict(test), want.predict(test), rtol=0, atol=1e-12)
    assert got.report["kendall_tau"] == pytest.approx(want.report["kendall_tau"])
    assert got.report["n_holdout"] == 15 and got.report["target"] == "negated mean loss"

    assert main(["search", str(run), "--algorithm", "random", "--objectives", "accuracy,bitops", "--predictor",
                 str(tmp_path / "p"), "--evals", "24", "--seed", "0", "--out", str(tmp_path / "s"),
                 "--no-progress"]) == 0
    res = qs.SearchResult.load(tmp_path / "s")
    assert res.n_evals == 24
    assert json.loads((tmp_path / "s" / "search.json").read_text())["algorithm"] == "random"
    # values are kept in the objective's own units and direction (search/result.py)
    np.testing.assert_allclose(res.F[:, 0], got.predict(res.configs), rtol=1e-9, atol=1e-12)
