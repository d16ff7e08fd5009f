"""Accuracy predictor on measured subnets of a trained digits supernet: held-out ranking vs BitOPs and noise.

    # measure configs i = 0..399 (space.sample(seed=i, bits=(2,3,4))), val split, 4 calibration batches
    # of 64 with calibration seed 1; then configs 0..99 again with calibration seed 2 (the noise ceiling).
    # Each in two processes (R = 0, 1) sharing one resumable JSONL file:
    OMP_NUM_THREADS=1 .venv/bin/qcompile predictor collect RUN --n 400 --out acc.jsonl --calib-batches 4 \\
        --threads 1 --rank R --world-size 2
    OMP_NUM_THREADS=1 .venv/bin/qcompile predictor collect RUN --n 100 --out acc.jsonl --calib-batches 4 \\
        --calib-seed 2 --threads 1 --rank R --world-size 2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/predictor.py RUN acc.jsonl --out pred.json

The held-out set is configs 0..`holdout_n`-1 (never seen by the fit); the predictor is fitted on
the others (`AccuracyPredictor(space, seed)`, default options). Held-out Kendall tau, pairwise
accuracy and RMSE are reported for the predictor, for ranking by BitOPs alone (fewer = better), and
for the calibration-seed-2 measurement of the same subnets against the seed-1 one (the noise
ceiling: no predictor of the seed-1 numbers can be expected to rank better than a re-measurement).
"""

from __future__ import annotations

import argparse
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
from qcompile.search.predictors import PredictorOptions, rmse
from qcompile.search.predictors.measured import config_hash, read_jsonl
from qcompile.spaces import from_dict
from qcompile.utils.io import atomic_write_text

log = logging.getLogger("benchmarks.predictor")


def scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    return {"kendall_tau": qs.kendall_tau(pred, true), "pairwise_accuracy": qs.pairwise_accuracy(pred, true),
            "rmse": rmse(pred, true)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("data", help="JSONL from `qcompile predictor collect`")
    ap.add_argument("--n", type=int, default=400, help="configs 0..n-1 were collected")
    ap.add_argument("--holdout-n", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="predictor seeds")
    ap.add_argument("--calib-batches", type=int, default=4)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)

    recs = read_jsonl(args.data)
    space = from_dict(recs[0]["space"])
    by = {}
    for r in recs:
        if r["split"] == "val" and r["calib_batches"] == args.calib_batches:
            # hash of the stored config under today's canonical form (a cache may predate a change of it)
            h = config_hash(space, SubnetConfig.from_dict(r["config"]))
            by.setdefault((h, r["calib_seed"]), float(r["accuracy"]))
    cfgs = collect_configs(space, args.n, 0, (2, 3, 4))
    hashes = [config_hash(space, c) for c in cfgs]
    hold = [i for i in range(args.holdout_n) if (hashes[i], 1) in by]
    train = [i for i in range(args.holdout_n, len(cfgs)) if (hashes[i], 1) in by]
    if len(hold) < 2 or len(train) < 10:
        raise ConfigError("measurements", f"{len(hold)} held-out, {len(train)} to fit", ">= 2 and >= 10")
    hc, ht = [cfgs[i] for i in hold], np.array([by[(hashes[i], 1)] for i in hold])
    tc, tt = [cfgs[i] for i in train], np.array([by[(hashes[i], 1)] for i in train])
    allacc = np.concatenate([ht, tt])
    bops = np.array([float(qs.cost.bitops(space, c)) for c in hc])
    out: dict = {
        "n_fit": len(train), "n_holdout": len(hold), "accuracy_min_max": [float(allacc.min()), float(allacc.max())],
        "accuracy_std": float(allacc.std()), "bitops_only": scores(-bops, ht) | {"rmse": None}, "predictor": {},
    }
    both = [j for j, i in enumerate(hold) if (hashes[i], 2) in by]
    if len(both) >= 2:
        again = np.array([by[(hashes[hold[j]], 2)] for j in both])
        out["noise_ceiling"] = scores(again, ht[both]) | {"n": len(both)}
        mean2 = (ht[both] + again) / 2
        out["bitops_only_vs_mean_of_2_seeds"] = scores(-bops[both], mean2) | {"rmse": None}
    for seed in args.seeds:
        t0 = time.process_time()
        pred = qs.AccuracyPredictor(space, seed=seed, options=PredictorOptions(holdout=0.1)).fit(tc, tt)
        p = pred.predict(hc)
        row = scores(p, ht) | {"fit_cpu_s": time.process_time() - t0, "internal_report": pred.report}
        if len(both) >= 2:
            row["vs_seed2"] = scores(p[both], again)
            row["vs_mean_of_2_seeds"] = scores(p[both], mean2)
        out["predictor"][seed] = row
        log.info("predictor seed %d: tau %.3f, pairwise %.1f %%, RMSE %.4f", seed, row["kendall_tau"],
                 100 * row["pairwise_accuracy"], row["rmse"])
    log.info("BitOPs alone: tau %.3f, pairwise %.1f %%", out["bitops_only"]["kendall_tau"],
             100 * out["bitops_only"]["pairwise_accuracy"])
    if "noise_ceiling" in out:
        nc = out["noise_ceiling"]
        log.info("noise ceiling (calibration seed 2 vs 1, %d subnets): tau %.3f, pairwise %.1f %%, RMSE %.4f",
                 nc["n"], nc["kendall_tau"], 100 * nc["pairwise_accuracy"], nc["rmse"])
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(out, indent=2))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
