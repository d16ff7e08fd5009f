"""CI's tiny version of benchmarks/predictor.py's model selection: on a synthetic cache, every kind's CV uses the
same folds, `ens`'s CV tau is the standardised mean of the gbt and mlp fold predictions at their chosen settings
(recomputed here by refitting independently), fold fits in 2 processes give the numbers of 1, and
`--choose-by-cv` marks the kind with the best CV tau."""

import json

import numpy as np
import pytest

import qcompile.search as qs
from qcompile.cli.predictor import collect_configs
from qcompile.search.predictors.measured import append_jsonl
from tests.search.test_boosted_predictor import truth

N = 90  # configs 0..89: i % 3 == 0 held out (30), 60 fitted
GBT = [dict(max_depth=1, n_estimators=30, learning_rate=0.1), dict(max_depth=2, n_estimators=30, learning_rate=0.1)]
MLP = {"a": dict(hidden=(16,), bit_hidden=(8,), epochs=15, weight_decay=1e-3),
       "b": dict(hidden=(32, 32), bit_hidden=(8,), epochs=15, weight_decay=1e-4)}


@pytest.fixture(scope="module")
def cache(tspace, tmp_path_factory):
    cfgs = collect_configs(tspace, N, 0, (2, 3, 4))
    loss = 1.0 - 0.1 * truth(tspace, cfgs) + np.random.RandomState(3).normal(0, 0.05, len(cfgs))
    path = tmp_path_factory.mktemp("bench") / "acc.jsonl"
    for c, v in zip(cfgs, loss):
        append_jsonl(path, {"config": c.to_dict(), "accuracy": 0.5, "loss": float(v), "space": tspace.to_dict(),
                            "split": "val", "calib_batches": 1, "calib_seed": 1})
    return path, cfgs, -loss


def bench(monkeypatch, path, out, *extra):
    from benchmarks import predictor as bp

    monkeypatch.setattr(bp, "GBT_GRID", GBT)
    monkeypatch.setattr(bp, "MLP_GRID", MLP)
    argv = ["run-unused", str(path), "--n", str(N), "--holdout-every", "3", "--calib-batches", "1",
            "--extra-train", "0", "--folds", "3", "--out", str(out), *extra]
    assert bp.main(argv) == 0
    return json.loads(out.read_text())


def test_ens_cv_uses_the_folds_of_gbt_and_mlp(tspace, cache, tmp_path, monkeypatch, capsys):
    path, cfgs, y = cache
    got = bench(monkeypatch, path, tmp_path / "a.json", "--kinds", "ens", "--choose-by-cv", "--jobs", "2")
    assert list(got["predictors"]) == ["gbt", "mlp", "ens"]
    assert got["n_fit"] == 60 and got["n_holdout"] == 30 and got["folds"] == 3
    fit = [i for i in range(len(cfgs)) if i % 3 != 0]
    fc, ft = [cfgs[i] for i in fit], y[fit]
    perm = np.random.RandomState(0).permutation(len(fit))
    splits = [(np.setdiff1d(np.arange(len(fit)), np.sort(perm[f::3])), np.sort(perm[f::3])) for f in range(3)]

    def fold_preds(make):
        out = []
        for tr, te in splits:
            p = make().fit([fc[i] for i in tr], ft[tr])
            out.append((p.predict([fc[i] for i in tr]), p.predict([fc[i] for i in te])))
        return out

    gbt = {json.dumps(p): fold_preds(lambda p=p: qs.BoostedPredictor(tspace, seed=0, holdout=0.0, **p)) for p in GBT}
    mlp = {k: fold_preds(lambda p=p: qs.AccuracyPredictor(tspace, seed=0, holdout=0.0, **p)) for k, p in MLP.items()}
    for kind, preds in (("gbt", gbt), ("mlp", mlp)):
        for name, fp in preds.items():
            want = np.mean([qs.kendall_tau(p_te, ft[te]) for (_, p_te), (_, te) in zip(fp, splits)])
            assert got["predictors"][kind]["cv_tau"][name] == pytest.approx(want, abs=1e-12), (kind, name)
    bg = max(gbt, key=lambda k: got["predictors"]["gbt"]["cv_tau"][k])
    bm = max(mlp, key=lambda k: got["predictors"]["mlp"]["cv_tau"][k])
    taus = []
    for f, (_, te) in enumerate(splits):
        z = [(p_te - p_tr.mean()) / p_tr.std() for p_tr, p_te in (gbt[bg][f], mlp[bm][f])]
        taus.append(qs.kendall_tau((z[0] + z[1]) / 2, ft[te]))
    ens = got["predictors"]["ens"]
    assert ens["setting"] == f"gbt={bg}+mlp={bm}"
    assert ens["cv_tau_best"] == pytest.approx(np.mean(taus), abs=1e-12)
    best = {k: r["cv_tau_best"] for k, r in got["predictors"].items()}
    assert got["chosen_kind"] == max(best, key=best.get)
    assert [k for k, r in got["predictors"].items() if r["chosen_by_cv"]] == [got["chosen_kind"]]
    assert "<- chosen by CV" in capsys.readouterr().out
    # the held-out score of ens is that of the product predictor over the two refitted members
    assert -1 <= ens["kendall_tau"] <= 1 and 0 <= ens["pairwise_accuracy"] <= 1


def test_cv_only_reads_no_heldout_value_and_one_process_agrees(cache, tmp_path, monkeypatch):
    """--cv-only at one setting each (--gbt-grid default: the ensemble's trees; --mlp-grid NAME)."""
    from benchmarks import predictor as bp

    path, *_ = cache
    monkeypatch.setattr(bp, "DEFAULT_GBT", GBT[1])
    grids = ("--gbt-grid", "default", "--mlp-grid", "a")
    one = bench(monkeypatch, path, tmp_path / "b.json", "--kinds", "gbt,ens", "--cv-only", "--jobs", "1", *grids)
    assert set(one["predictors"]) == {"gbt", "mlp", "ens"}
    assert list(one["predictors"]["gbt"]["cv_tau"]) == [json.dumps(GBT[1])]
    assert list(one["predictors"]["mlp"]["cv_tau"]) == ["a"]
    assert not any("kendall_tau" in r for r in one["predictors"].values())
    assert "bitops_more_is_better" not in one and "noise_ceiling" not in one
    two = bench(monkeypatch, path, tmp_path / "c.json", "--kinds", "gbt,ens", "--cv-only", "--jobs", "2", *grids)
    for kind in one["predictors"]:
        assert one["predictors"][kind]["cv_tau"] == two["predictors"][kind]["cv_tau"]
