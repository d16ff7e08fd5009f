"""Accuracy predictors on measured subnets of a trained supernet: held-out ranking against BitOPs and the noise.

    # measure configs i = 0..399 (space.sample(seed=i, bits=(2,3,4)), canonical) with the less noisy
    # protocol (val + 512 fixed training images, 8 calibration batches); resumable JSONL cache:
    OMP_NUM_THREADS=1 .venv/bin/python -m qcompile.cli predictor collect RUN --n 400 --out acc.jsonl \\
        --calib-batches 8 --extra-train 512 --threads 1
    # optional: the same held-out configs again with calibration seed 2 (the noise ceiling), and float
    # subnets for the APQ transfer variant
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/predictor.py RUN acc.jsonl --target loss --out pred.json \\
        [--float-data float.jsonl]

Split: config i is held out when i % `--holdout-every` == 0 (100 of 400), so the held-out set and the
fit set grow together while the cache is filled; with `--holdout-below B` only configs i < B can be held
out (`--holdout-every 3 --holdout-below 300`: the same 100 subnets however far the collection goes).
Hyper-parameters of every predictor kind are chosen by
K-fold cross-validation on the fit set only (mean Kendall tau over the folds); the chosen setting is
refitted on the whole fit set and scored once on the held-out subnets: Kendall tau, pairwise accuracy
(APQ's metric) and RMSE, next to ranking by BitOPs alone (in both directions: more BitOPs = more
accurate is the natural proxy, fewer = better the convention of `pred.report`) and, where the held-out
subnets were also measured with calibration seed 2, the noise ceiling (seed 2 against seed 1).

Kinds: `mlp` (APQ's MLP on the one-hot encoding, `qs.AccuracyPredictor`), `mlp-ens` (mean of 5 MLP
seeds), `mlp-transfer` (APQ transfer: initialised from an MLP fitted on float subnets, `--float-data`),
`gbt` (`qs.BoostedPredictor`: boosted trees over a log-BitOPs line), and with `--sensitivity` the
sensitivity prior (`qcompile.search.predictors.sensitivity`: per-layer loss increases measured once
on the largest architecture, one layer slot at a time at 2 bits, as the retraining-free paper's
greedy search measures them): `sens-line` (least squares on log BitOPs and the summed sensitivities
of the 2- and 3-bit layers, no trees) and `gbt-sens` (boosted trees over that line, the sensitivity
features among the trees' features). `ens` is `qs.EnsemblePredictor`: the mean of the `gbt` and `mlp`
predictions, each standardised on the fit set, at the settings their own CV chose; its CV tau is computed from
their fold predictions (no refit), on the same folds, so the kinds' CV taus compare (asking for `ens` runs
`gbt` and `mlp` first). `--choose-by-cv` names the kind with the best CV tau before any held-out subnet is
scored and marks it "chosen" in the table and JSON: its held-out score is the pre-registered result.
`--jobs J` runs the CV fits in J spawned processes, one thread each (the same numbers as `--jobs 1`);
`--cv-only` stops after model selection and reads no held-out value. The target is the measurement's mean
loss (`--target loss`, fitted negated so that higher = better), its logarithm (`--target logloss`, fitted as
-log loss) or top-1 (`--target accuracy`).

    # the sensitivity prior (121 measurements of the largest architecture, cached in FILE.jsonl, resumable)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/predictor.py RUN acc.jsonl --sensitivity sens.json \
        --kinds sens-line,gbt-sens,gbt,mlp-ens --out pred.json
    # the trees, APQ's MLP and their ensemble, the kind chosen by 5-fold CV (folds in 2 processes)
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/predictor.py RUN acc.jsonl --n 2400 \
        --holdout-every 3 --holdout-below 300 --kinds ens --gbt-grid large --choose-by-cv --jobs 2 --out pred.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

import qcompile.search as qs
from qcompile.cli.predictor import collect_configs
from qcompile.config import SubnetConfig
from qcompile.errors import ConfigError
from qcompile.search.predictors import BoostedOptions, PredictorOptions, rmse
from qcompile.search.predictors.ensemble import DEFAULT_GBT
from qcompile.search.predictors.measured import config_hash, read_jsonl
from qcompile.spaces import from_dict
from qcompile.utils.io import atomic_write_text

log = logging.getLogger("benchmarks.predictor")

MLP_GRID = {
    "small": dict(hidden=(64, 64), bit_hidden=(64,), epochs=200, weight_decay=1e-3),
    "apq": dict(hidden=(400, 400, 400), bit_hidden=(400,), epochs=300, weight_decay=1e-4),
}
GBT_GRID = [
    dict(max_depth=d, n_estimators=n, learning_rate=lr)
    for d, n, lr in itertools.product((1, 2, 3), (300,), (0.02, 0.05))
]
#: for thousands of fit subnets: deeper trees and more of them can pay off (chosen by CV like the small grid)
GBT_GRID_LARGE = [
    dict(max_depth=d, n_estimators=n, learning_rate=lr)
    for d, n, lr in itertools.product((2, 3, 4), (300, 1000), (0.02, 0.05))
]
#: the settings the large grid ranked best at 2,300 fit subnets (depth 3-4, 1000 trees; session 10), a third of its CPU
GBT_GRID_MEDIUM = [
    dict(max_depth=d, n_estimators=n, learning_rate=lr)
    for d, n, lr in itertools.product((3, 4), (1000,), (0.02, 0.05))
]


#: the members of kind `ens` (`qs.EnsemblePredictor`), each at the setting its own CV chose
ENS_MEMBERS = ("gbt", "mlp")


def scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    return {
        "kendall_tau": qs.kendall_tau(pred, true),
        "pairwise_accuracy": qs.pairwise_accuracy(pred, true),
        "rmse": rmse(pred, true),
    }


def measurements(path: str, space, protocol: dict, target: str) -> dict[tuple[str, int], float]:
    """(canonical config hash, calibration seed) -> value (higher = better) of the records of `protocol`."""
    by: dict[tuple[str, int], float] = {}
    for r in read_jsonl(path):
        if any(r.get(k, d) != v for k, (v, d) in protocol.items()):
            continue
        if target == "accuracy":
            v = float(r["accuracy"])
        elif target == "logloss":
            v = -float(np.log(r["loss"]))
        else:
            v = -float(r["loss"])
        by.setdefault((config_hash(space, SubnetConfig.from_dict(r["config"])), int(r["calib_seed"])), v)
    return by


def make_fitter(space, kind: str, params: dict, seed: int, init_from=None, sensitivity=None):
    """A function (configs, values) -> fitted predictor of `kind` with `params` (no internal hold-out)."""
    if kind in ("gbt", "gbt-sens", "sens-line"):
        sens = sensitivity if kind != "gbt" else None
        return lambda c, y: qs.BoostedPredictor(
            space, seed=seed, options=BoostedOptions(holdout=0.0, **params), sensitivity=sens
        ).fit(c, y)
    seeds = range(seed, seed + 5) if kind == "mlp-ens" else (seed,)

    def fit(c, y):
        preds = [
            qs.AccuracyPredictor(space, seed=s, options=PredictorOptions(holdout=0.0, **params)).fit(
                c, y, init_from=init_from
            )
            for s in seeds
        ]
        return preds[0] if len(preds) == 1 else _Mean(preds)

    return fit


class _Mean:
    def __init__(self, preds):
        self.preds = preds

    def predict(self, configs):
        return np.mean([p.predict(configs) for p in self.preds], axis=0)


def folds(n: int, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The `k` (train, test) index splits of the fit set that every kind's CV uses (sorted indices): test fold f
    is every k-th entry of one seeded permutation, from entry f."""
    perm = np.random.RandomState(seed).permutation(n)
    out = []
    for f in range(k):
        te = np.sort(perm[f::k])
        out.append((np.sort(np.setdiff1d(perm, te)), te))
    return out


def fold_job(job: tuple) -> tuple[np.ndarray, np.ndarray, float]:
    """One CV fit, top-level so that a process pool can run it: (space, kind, params, seed, init_from,
    sensitivity, cfgs, y, train, test) -> (predictions on train, predictions on test, CPU seconds)."""
    space, kind, params, seed, init, sens, cfgs, y, tr, te = job
    torch.set_num_threads(1)
    t0 = time.process_time()
    p = make_fitter(space, kind, params, seed, init, sens)([cfgs[i] for i in tr], y[tr])
    return p.predict([cfgs[i] for i in tr]), p.predict([cfgs[i] for i in te]), time.process_time() - t0


def _single_thread() -> None:
    torch.set_num_threads(1)


class FoldRunner:
    """Runs `fold_job`s in this process (`jobs` 1) or in a pool of `jobs` spawned processes, each fitting on one
    thread (spawned, not forked: a fork after torch's thread pool has started can hang)."""

    def __init__(self, jobs: int) -> None:
        if jobs < 1:
            raise ConfigError("--jobs", jobs, ">= 1")
        self.jobs = jobs
        self._pool = None

    def __enter__(self) -> FoldRunner:
        if self.jobs > 1:
            from concurrent.futures import ProcessPoolExecutor
            from multiprocessing import get_context

            self._pool = ProcessPoolExecutor(self.jobs, mp_context=get_context("spawn"), initializer=_single_thread)
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def map(self, jobs: list[tuple]) -> list[tuple[np.ndarray, np.ndarray, float]]:
        return list(self._pool.map(fold_job, jobs)) if self._pool is not None else [fold_job(j) for j in jobs]


def cv_predictions(runner: FoldRunner, space, kind: str, grid: dict, seed: int, init_by_setting: dict, sens,
                   cfgs: list, y: np.ndarray, splits: list) -> dict[str, list]:
    """Setting name -> per fold (train predictions, test predictions, CPU s), every setting and fold of one kind
    submitted to `runner` at once."""
    keys = [(name, f) for name in grid for f in range(len(splits))]
    jobs = [(space, kind, grid[name], seed, init_by_setting.get(name), sens, cfgs, y, *splits[f])
            for name, f in keys]
    res = runner.map(jobs)
    out: dict[str, list] = {name: [] for name in grid}
    for (name, _), r in zip(keys, res):
        out[name].append(r)
    return out


def cv_tau(fold_preds: list, y: np.ndarray, splits: list) -> float:
    """Mean held-out Kendall tau over the folds."""
    return float(np.mean([qs.kendall_tau(p_te, y[te]) for (_, p_te, _), (_, te) in zip(fold_preds, splits)]))


def standardised_mean(members: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """`qs.EnsemblePredictor`'s combination for rankings: the mean over members of the test predictions
    standardised by the mean and std of that member's train predictions (the affine map back to the target's
    units does not change a ranking)."""
    z = []
    for p_tr, p_te in members:
        sd = float(np.std(p_tr))
        z.append((p_te - np.mean(p_tr)) / (sd if sd > 1e-12 else 1.0))
    return np.mean(z, axis=0)


def ens_cv_tau(member_folds: list[list], y: np.ndarray, splits: list) -> float:
    """CV tau of the standardised mean of members, from the members' own fold predictions (no refit)."""
    taus = []
    for f, (_, te) in enumerate(splits):
        taus.append(qs.kendall_tau(standardised_mean([mf[f][:2] for mf in member_folds]), y[te]))
    return float(np.mean(taus))


def cross_validate(fitter, cfgs: list, y: np.ndarray, k: int, seed: int) -> float:
    """Mean held-out Kendall tau over `k` folds of the fit set (the folds of `folds`)."""
    taus = []
    for tr, te in folds(len(cfgs), k, seed):
        p = fitter([cfgs[i] for i in tr], y[tr]).predict([cfgs[i] for i in te])
        taus.append(qs.kendall_tau(p, y[te]))
    return float(np.mean(taus))


def print_table(out: dict, kinds: list[str]) -> None:
    """One line per kind: its chosen setting's CV tau and (unless --cv-only) its held-out scores; the kind
    chosen by CV marked."""
    print(f"{'kind':<12} {'CV tau':>7} {'held-out tau':>12} {'pairwise':>9} {'RMSE':>8}  setting")
    for kind in kinds:
        r = out["predictors"][kind]
        mark = "  <- chosen by CV" if r.get("chosen_by_cv") else ""
        held = (f"{r['kendall_tau']:>12.3f} {100 * r['pairwise_accuracy']:>8.1f}% {r['rmse']:>8.4f}"
                if "kendall_tau" in r else f"{'-':>12} {'-':>9} {'-':>8}")
        print(f"{kind:<12} {r['cv_tau_best']:>7.3f} {held}  {r['setting']}{mark}")


def load_or_measure_sensitivity(run: str, path: str, calib_batches: int, extra_train: int):
    """The `LayerSensitivity` saved at `path`, else measured on `run` with the collect protocol (2 bits; the
    measurements are cached in `path` + ".jsonl", so an interrupted measurement resumes) and saved; "noise": the
    data-free prior of `run` (`qcompile predictor fit --sensitivity` reads them the same way)."""
    from qcompile.cli.predictor import sensitivity_prior

    if path == "noise" or Path(path).is_file():
        return sensitivity_prior(path, run)
    sens = sensitivity_prior("measured", run, cache=path + ".jsonl",
                             protocol={"calib_batches": calib_batches, "extra_train": extra_train})
    sens.save(path)
    return sens


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("data", help="JSONL from `qcompile predictor collect`")
    ap.add_argument("--n", type=int, default=400, help="configs 0..n-1 were (or are being) collected")
    ap.add_argument("--holdout-every", type=int, default=4, help="config i is held out when i %% this == 0")
    ap.add_argument("--holdout-below", type=int, default=None,
                    help="... and i < this (a held-out set fixed while the collection grows past it)")
    ap.add_argument("--gbt-grid", default="small", choices=("small", "medium", "large", "default"),
                    help="settings the CV chooses the trees' from (large: for thousands of fit subnets; medium: its "
                         "depth 3-4 x 1000 part; default: only the ensemble's default trees, depth 3 x 1000 x lr 0.02)")
    ap.add_argument("--mlp-grid", default="all", choices=("all", *MLP_GRID),
                    help="settings the CV chooses mlp's and mlp-transfer's from (one name: that setting alone)")
    ap.add_argument("--target", default="loss", choices=("loss", "logloss", "accuracy"))
    ap.add_argument("--calib-batches", type=int, default=8)
    ap.add_argument("--calib-seeds", type=int, default=1)
    ap.add_argument("--extra-train", type=int, default=512)
    ap.add_argument("--kinds", default="mlp,mlp-ens,gbt",
                    help="comma-separated: mlp, mlp-ens, mlp-transfer, gbt, gbt-sens, sens-line, ens (gbt + mlp)")
    ap.add_argument("--float-data", default=None, help="JSONL of float subnets (collect --bits 32) for mlp-transfer")
    ap.add_argument(
        "--sensitivity",
        default=None,
        help="LayerSensitivity JSON for sens-line / gbt-sens; measured on RUN (same protocol, 2 bits) if missing; "
        "'noise': the data-free noise-to-signal prior of RUN (search/predictors/noise.py)",
    )
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=1,
                    help="CV fits run in this many processes at once (each on one thread); results do not change")
    ap.add_argument("--choose-by-cv", action="store_true",
                    help="mark the kind with the best CV tau as chosen (before any held-out scoring)")
    ap.add_argument("--cv-only", action="store_true",
                    help="model selection only: no refit, and no held-out value is read or scored")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)

    space = from_dict(read_jsonl(args.data)[0]["space"])
    protocol = {
        "split": ("val", "val"),
        "calib_batches": (args.calib_batches, None),
        "calib_seeds": (args.calib_seeds, 1),
        "extra_train": (args.extra_train, 0),
    }
    by = measurements(args.data, space, protocol, args.target)
    cfgs = collect_configs(space, args.n, 0, (2, 3, 4))
    hashes = [config_hash(space, c) for c in cfgs]
    below = len(cfgs) if args.holdout_below is None else args.holdout_below
    held = {i for i in range(min(below, len(cfgs))) if i % args.holdout_every == 0}
    hold = [i for i in range(len(cfgs)) if i in held and (hashes[i], 1) in by]
    fit = [i for i in range(len(cfgs)) if i not in held and (hashes[i], 1) in by]
    if len(fit) < 20 or (len(hold) < 10 and not args.cv_only):
        raise ConfigError("measurements", f"{len(hold)} held-out, {len(fit)} to fit",
                          ">= 10 and >= 20 (>= 20 to fit with --cv-only)")
    hc, ht = [cfgs[i] for i in hold], np.array([by[(hashes[i], 1)] for i in hold])
    fc, ft = [cfgs[i] for i in fit], np.array([by[(hashes[i], 1)] for i in fit])
    out: dict = {
        "target": args.target,
        "protocol": {k: v for k, (v, _) in protocol.items()},
        "n_fit": len(fit),
        "n_holdout": len(hold),
        "folds": args.folds,
        "predictors": {},
    }
    if not args.cv_only:  # --cv-only looks at no held-out value
        bops = np.array([float(qs.cost.bitops(space, c)) for c in hc])
        out["value_std"] = float(np.concatenate([ht, ft]).std())
        out["bitops_more_is_better"] = scores(bops, ht) | {"rmse": None}
        out["bitops_fewer_is_better"] = scores(-bops, ht) | {"rmse": None}
        # the noise ceiling: the held-out subnets measured again with calibration seed 2
        both = [j for j, i in enumerate(hold) if (hashes[i], 2) in by]
        if len(both) >= 10:
            again = np.array([by[(hashes[hold[j]], 2)] for j in both])
            out["noise_ceiling"] = scores(again, ht[both]) | {"n": len(both)}
    sens = None
    if args.sensitivity:
        sens = load_or_measure_sensitivity(args.run, args.sensitivity, args.calib_batches, args.extra_train)
        out["sensitivity"] = {
            "file": args.sensitivity,
            "base_loss": sens.base_loss,
            "weight_2bit_mean": float(sens.weight.mean()),
            "act_2bit_mean": float(sens.act.mean()),
        }
        # the prior alone: the additive estimate of the loss increase, unfitted
        add = -sens.features(space, hc)[:, -1]
        out["sensitivity_sum_alone"] = scores(add, ht) | {"rmse": None}
    init = None
    if args.float_data:
        fby = measurements(args.float_data, space, protocol, args.target)
        # float subnets measured with the same protocol (calibration seed 1), one per canonical config
        frecs = []
        for r in read_jsonl(args.float_data):
            cfg = SubnetConfig.from_dict(r["config"])
            key = (config_hash(space, cfg), 1)
            if int(r.get("calib_seed", 1)) == 1 and key in fby:
                frecs.append((cfg, fby.pop(key)))
        if len(frecs) < 20:
            raise ConfigError("--float-data", f"{len(frecs)} float subnets of this protocol", ">= 20")
        out["n_float"] = len(frecs)
    kinds = args.kinds.split(",")
    if "ens" in kinds:  # its members' CV (and fits) come first; it is combined from them
        kinds = [k for k in ENS_MEMBERS if k not in kinds] + [k for k in kinds if k != "ens"] + ["ens"]
    grids = {}
    for kind in kinds:
        if kind in ("sens-line", "gbt-sens") and sens is None:
            raise ConfigError("--kinds", kind, "with --sensitivity FILE.json")
        if kind in ("gbt", "gbt-sens"):
            # looked up per call (tests replace the module's grids)
            gbt_grid = {"small": GBT_GRID, "medium": GBT_GRID_MEDIUM, "large": GBT_GRID_LARGE,
                        "default": [DEFAULT_GBT]}[args.gbt_grid]
            grids[kind] = {json.dumps(p): p for p in gbt_grid}
        elif kind == "sens-line":
            grids[kind] = {"line": dict(n_estimators=0)}
        elif kind in ("mlp", "mlp-transfer"):
            grids[kind] = dict(MLP_GRID) if args.mlp_grid == "all" else {args.mlp_grid: MLP_GRID[args.mlp_grid]}
        elif kind == "mlp-ens":  # five seeds of the small MLP (the APQ size costs 5x as much for each setting)
            grids[kind] = {"small": MLP_GRID["small"]}
        elif kind != "ens":
            raise ConfigError("--kinds", kind, "mlp, mlp-ens, mlp-transfer, gbt, gbt-sens, sens-line, ens")
        if kind == "mlp-transfer" and not args.float_data:
            raise ConfigError("--float-data", None, "a collect cache of float subnets for mlp-transfer")

    # 1. model selection: every kind's settings by K-fold CV on the fit set, all kinds on the same folds
    splits = folds(len(fc), args.folds, args.seed)
    cv: dict[str, dict[str, float]] = {}
    best: dict[str, str] = {}
    best_folds: dict[str, list] = {}
    cpu: dict[str, float] = {}
    inits: dict[str, dict] = {}
    with FoldRunner(args.jobs) as runner:
        for kind in kinds:
            t0 = time.process_time()
            if kind == "ens":  # the members' fold predictions at their chosen settings, combined: no refit
                name = "+".join(f"{m}={best[m]}" for m in ENS_MEMBERS)
                cv[kind] = {name: ens_cv_tau([best_folds[m] for m in ENS_MEMBERS], ft, splits)}
                best[kind], cpu[kind] = name, time.process_time() - t0
                log.info("%s %s: CV tau %.3f", kind, name, cv[kind][name])
                continue
            if kind == "mlp-transfer":
                fcf, fval = [c for c, _ in frecs], np.array([v for _, v in frecs])
                inits[kind] = {
                    name: qs.AccuracyPredictor(space, seed=args.seed, options=PredictorOptions(holdout=0.0, **p)).fit(
                        fcf, fval)
                    for name, p in grids[kind].items()
                }
            preds = cv_predictions(runner, space, kind, grids[kind], args.seed, inits.get(kind, {}), sens, fc, ft,
                                   splits)
            cv[kind] = {name: cv_tau(fp, ft, splits) for name, fp in preds.items()}
            for name in grids[kind]:
                log.info("%s %s: CV tau %.3f", kind, name, cv[kind][name])
            best[kind] = max(cv[kind], key=cv[kind].get)
            best_folds[kind] = preds[best[kind]]
            cpu[kind] = time.process_time() - t0 + sum(r[2] for fp in preds.values() for r in fp)
    best_cv = {k: cv[k][best[k]] for k in kinds}
    if args.choose_by_cv:
        # chosen before any held-out subnet is scored: its held-out score is the pre-registered result
        out["chosen_kind"] = max(kinds, key=lambda k: best_cv[k])
        log.info("chosen by CV: %s (CV tau %.3f)", out["chosen_kind"], best_cv[out["chosen_kind"]])

    # 2. each kind's chosen setting refitted on the whole fit set, scored once on the held-out subnets
    fitted = {}
    for kind in kinds:
        t0 = time.process_time()
        row = {"setting": best[kind], "chosen": None if kind == "ens" else grids[kind][best[kind]],
               "cv_tau": cv[kind], "cv_tau_best": best_cv[kind]}
        if args.choose_by_cv:
            row["chosen_by_cv"] = kind == out["chosen_kind"]
        if not args.cv_only:
            if kind == "ens":
                pred = qs.EnsemblePredictor(space, members=[fitted[m] for m in ENS_MEMBERS], seed=args.seed,
                                            holdout=0.0).fit(fc, ft, members_fitted=True)
            else:
                init = inits.get(kind, {}).get(best[kind])
                pred = make_fitter(space, kind, grids[kind][best[kind]], args.seed, init, sens)(fc, ft)
            fitted[kind] = pred
            row |= scores(pred.predict(hc), ht)
        row["cpu_s"] = cpu[kind] + time.process_time() - t0
        out["predictors"][kind] = row
    print_table(out, kinds)
    if not args.cv_only:
        log.info(
            "BitOPs alone (more = better): tau %.3f, pairwise %.1f %%",
            out["bitops_more_is_better"]["kendall_tau"],
            100 * out["bitops_more_is_better"]["pairwise_accuracy"],
        )
    if "noise_ceiling" in out:
        nc = out["noise_ceiling"]
        log.info(
            "noise ceiling (calibration seed 2 vs 1, %d subnets): tau %.3f, pairwise %.1f %%",
            nc["n"],
            nc["kendall_tau"],
            100 * nc["pairwise_accuracy"],
        )
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(out, indent=2))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
