"""APQ transfer and the learning curve of the accuracy predictors on measured subnets of a trained supernet.

    # quantized subnets i = 0..N-1 (space.sample(seed=i, bits=(2,3,4))) and float subnets of other
    # architectures (seeds 100000..; bits 32), both with the less noisy protocol; resumable caches:
    OMP_NUM_THREADS=1 .venv/bin/python -m qcompile.cli predictor collect RUN --n 600 --out acc.jsonl \\
        --calib-batches 8 --extra-train 512 --threads 1
    OMP_NUM_THREADS=1 .venv/bin/python -m qcompile.cli predictor collect RUN --n 300 --seed 100000 --bits 32 \\
        --out float.jsonl --calib-batches 8 --extra-train 512 --threads 1
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.predictor_transfer RUN acc.jsonl --float-data float.jsonl \\
        --sizes 50,100,200,all --seeds 0,1,2 --out transfer.json

Held out: config i when i % `--holdout-every` == 0 and i < `--holdout-below` (100 of the first 300: the
held-out set of `benchmarks/predictor.py --n 300 --holdout-every 3`, fixed while the collection grows);
every other measured config may be fitted. For each size m and seed s, the fit sample is the first m of a
permutation (seed s) of the fit set, and every predictor is scored once on the held-out set:

- `mlp`: APQ's MLP (`qs.AccuracyPredictor`, the 2 x 64 setting `benchmarks/predictor.py` chose by CV),
  fitted from scratch;
- `mlp-transfer`: the same MLP initialised from one fitted on the float subnets (APQ Sec. 3.3: trunk,
  head and target scaling copied, the bit head starting at zero), then fine-tuned on the m samples;
- `float-only`: the float predictor itself, unchanged (what the transfer starts from);
- `gbt`: `qs.BoostedPredictor` (depth 3, learning rate 0.02, the setting chosen by CV at 200 samples).

Settings are fixed in advance (chosen by CV on the fit set in `benchmarks/predictor.py` runs), so the
held-out set is not used for any choice here. The target is the negated mean loss (higher = better).
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
from benchmarks.predictor import MLP_GRID, measurements, scores
from qcompile.cli.predictor import collect_configs
from qcompile.config import SubnetConfig
from qcompile.errors import ConfigError
from qcompile.search.predictors import BoostedOptions, PredictorOptions
from qcompile.search.predictors.measured import config_hash, read_jsonl
from qcompile.spaces import from_dict
from qcompile.utils.io import atomic_write_text

log = logging.getLogger("benchmarks.predictor_transfer")

GBT = dict(n_estimators=300, max_depth=3, learning_rate=0.02)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("data", help="JSONL of quantized subnets from `qcompile predictor collect`")
    ap.add_argument("--float-data", required=True, help="JSONL of float subnets (collect --bits 32)")
    ap.add_argument("--n", type=int, default=600, help="configs 0..n-1 were (or are being) collected")
    ap.add_argument("--holdout-every", type=int, default=3)
    ap.add_argument("--holdout-below", type=int, default=300)
    ap.add_argument("--sizes", default="50,100,200,all", help="fit-sample sizes; 'all' = every fit config")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--kinds", default="mlp,mlp-transfer,float-only,gbt")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)

    space = from_dict(read_jsonl(args.data)[0]["space"])
    protocol = {"split": ("val", "val"), "calib_batches": (8, None), "calib_seeds": (1, 1), "extra_train": (512, 0)}
    by = measurements(args.data, space, protocol, "loss")
    cfgs = collect_configs(space, args.n, 0, (2, 3, 4))
    hashes = [config_hash(space, c) for c in cfgs]
    have = [i for i in range(len(cfgs)) if (hashes[i], 1) in by]
    hold = [i for i in have if i % args.holdout_every == 0 and i < args.holdout_below]
    fit = [i for i in have if i not in set(hold)]
    hc, ht = [cfgs[i] for i in hold], np.array([by[(hashes[i], 1)] for i in hold])
    fby = measurements(args.float_data, space, protocol, "loss")
    fcf, fval = [], []
    for r in read_jsonl(args.float_data):
        cfg = SubnetConfig.from_dict(r["config"])
        key = (config_hash(space, cfg), 1)
        if key in fby:
            fcf.append(cfg)
            fval.append(fby.pop(key))
    if len(fcf) < 20 or len(hold) < 10:
        raise ConfigError("measurements", f"{len(fcf)} float, {len(hold)} held-out", ">= 20 and >= 10")
    opts = PredictorOptions(holdout=0.0, **MLP_GRID["small"])
    sizes = [len(fit) if s == "all" else int(s) for s in args.sizes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    kinds = args.kinds.split(",")
    out: dict = {"n_fit_available": len(fit), "n_holdout": len(hold), "n_float": len(fcf), "mlp": opts.__dict__ | {},
                 "gbt": GBT, "bitops_more_is_better": scores(
                     np.array([float(qs.cost.bitops(space, c)) for c in hc]), ht) | {"rmse": None}, "runs": []}
    floats = {}
    for s in seeds:
        floats[s] = qs.AccuracyPredictor(space, seed=s, options=opts).fit(fcf, np.array(fval))
    for m in sizes:
        if m > len(fit):
            log.warning("size %d > %d fit configs; skipped", m, len(fit))
            continue
        for s in seeds:
            pick = np.random.RandomState(s).permutation(len(fit))[:m]
            fc = [cfgs[fit[j]] for j in pick]
            ft = np.array([by[(hashes[fit[j]], 1)] for j in pick])
            for kind in kinds:
                t0 = time.process_time()
                if kind == "mlp":
                    p = qs.AccuracyPredictor(space, seed=s, options=opts).fit(fc, ft)
                elif kind == "mlp-transfer":
                    p = qs.AccuracyPredictor(space, seed=s, options=opts).fit(fc, ft, init_from=floats[s])
                elif kind == "float-only":
                    p = floats[s]
                elif kind == "gbt":
                    p = qs.BoostedPredictor(space, seed=s, options=BoostedOptions(holdout=0.0, **GBT)).fit(fc, ft)
                else:
                    raise ConfigError("--kinds", kind, "mlp, mlp-transfer, float-only, gbt")
                fit_s = time.process_time() - t0
                t1 = time.perf_counter()
                pred = p.predict(hc)
                row = {"kind": kind, "size": m, "seed": s, **scores(pred, ht), "cpu_s": fit_s,
                       "predict_ms_per_config": 1e3 * (time.perf_counter() - t1) / len(hc)}
                out["runs"].append(row)
                log.info("%-12s m=%3d seed %d: tau %.3f pairwise %.1f %%", kind, m, s, row["kendall_tau"],
                         100 * row["pairwise_accuracy"])
            if args.out:  # partial results survive an interruption
                atomic_write_text(Path(args.out), json.dumps(out, indent=1))
    summary = {}
    for kind in kinds:
        for m in sizes:
            rows = [r for r in out["runs"] if r["kind"] == kind and r["size"] == m]
            if rows:
                t = [r["kendall_tau"] for r in rows]
                pw = [r["pairwise_accuracy"] for r in rows]
                summary[f"{kind}@{m}"] = {"tau_mean": float(np.mean(t)), "tau_std": float(np.std(t)),
                                          "pairwise_mean": float(np.mean(pw)), "n_seeds": len(rows)}
                log.info("%-12s m=%3d: tau %.3f +- %.3f, pairwise %.1f %%", kind, m, np.mean(t), np.std(t),
                         100 * np.mean(pw))
    out["summary"] = summary
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
