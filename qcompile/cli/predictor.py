"""`qcompile predictor collect|fit`: measure subnets of a trained supernet, fit the accuracy predictor.

    qcompile predictor collect RUN --n 500 --out acc.jsonl [--bits 2,3,4] [--seed 0]
                                   [--rank R --world-size W]     # or torchrun's RANK / WORLD_SIZE
    qcompile predictor fit acc.jsonl --out pred/ [--kind mlp|mlp-ens|gbt] [--target accuracy|loss] [--holdout 0.2]
                                                 [--init-from float_pred/]

`collect` draws `--n` configs (`space.sample(seed=seed+i, bits=...)`, canonical, deduplicated), keeps
this rank's shard (every `world_size`-th), skips configs already in the JSONL cache and measures the
rest on the `--split` split (default val), appending each result under a file lock. Run it again
to resume; run it under `torchrun --nproc-per-node K` (or with `--rank/--world-size` on several
machines sharing the file) to shard. `fit` prints the held-out Kendall tau, pairwise accuracy and
RMSE next to the ranking by BitOPs alone; `--target loss` fits the negated mean loss (higher = better,
as search maximises it).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

log = logging.getLogger("qcompile")

# the gbt defaults of `predictor fit` (BoostedOptions' own; kept here so that --help does not import torch)
BOOSTED_DEFAULTS = {"n_estimators": 300, "max_depth": 2, "learning_rate": 0.05}


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.replace(",", " ").split())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected integers like 2,3,4, got {text!r}") from e


def shard_of(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size) from the arguments, else torchrun's RANK / WORLD_SIZE, else (0, 1)."""
    from qcompile.errors import ConfigError

    env_r, env_w = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    try:
        r = rank if rank is not None else int(env_r) if env_r is not None else 0
        w = world_size if world_size is not None else int(env_w) if env_w is not None else 1
    except ValueError as e:
        raise ConfigError("RANK/WORLD_SIZE", (env_r, env_w), "integers (as torchrun sets them)") from e
    if w < 1:
        raise ConfigError("--world-size", w, ">= 1")
    if not 0 <= r < w:
        raise ConfigError("--rank", r, f"0..{w - 1} (world size {w})")
    return r, w


def collect_configs(space, n: int, seed: int, bits: tuple[int, ...] | None) -> list:
    """`n` sampled configs (canonical, first occurrence kept), the same list on every rank."""
    from qcompile.search.predictors.measured import canonical, config_hash

    out, seen = [], set()
    for i in range(n):
        cfg = canonical(space, space.sample(seed=seed + i, bits=bits))
        h = config_hash(space, cfg)
        if h not in seen:
            seen.add(h)
            out.append(cfg)
    return out


def cmd_collect(args) -> int:
    import torch

    from qcompile.errors import ConfigError
    from qcompile.search.predictors import SupernetEvaluator

    if args.n < 1:
        raise ConfigError("--n", args.n, ">= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rank, world = shard_of(args.rank, args.world_size)
    ev = SupernetEvaluator(args.run, split=args.split, calib_batches=args.calib_batches, calib_seed=args.calib_seed,
                           calib_seeds=args.calib_seeds, extra_train=args.extra_train, cache=args.out, progress=True)
    bits = None if args.bits == (32,) else args.bits
    cfgs = collect_configs(ev.space, args.n, args.seed, bits)
    mine = cfgs[rank::world]
    todo = [c for c in mine if ev.cached(c) is None]
    log.info("rank %d/%d: %d configs in this shard, %d cached, %d to measure -> %s", rank, world, len(mine),
             len(mine) - len(todo), len(todo), args.out)
    ev.predict(mine)
    log.info("rank %d/%d: done (%d measured now)", rank, world, ev.n_measured)
    return 0


def fit_values(records: list[dict], target: str):
    """The values a predictor is fitted to, higher = better: top-1, or the negated mean loss."""
    import numpy as np

    from qcompile.errors import ConfigError

    if target == "accuracy":
        return np.array([float(r["accuracy"]) for r in records])
    missing = sum(r.get("loss") is None for r in records)
    if missing:
        raise ConfigError("--target", target, "accuracy (this cache has records without a loss)",
                          f"{missing} of {len(records)} records were written before the loss was recorded")
    return -np.array([float(r["loss"]) for r in records])


def cmd_fit(args) -> int:
    from qcompile.search.predictors import (
        AccuracyPredictor,
        BoostedOptions,
        BoostedPredictor,
        MLPEnsemble,
        PredictorOptions,
    )
    from qcompile.search.predictors.measured import load_records

    space, cfgs, _, recs = load_records(args.data)
    values = fit_values(recs, args.target)
    if args.kind == "gbt":
        bopts = BoostedOptions(n_estimators=args.n_estimators, max_depth=args.max_depth,
                               learning_rate=args.learning_rate, holdout=args.holdout)
        pred = BoostedPredictor(space, seed=args.seed, options=bopts).fit(cfgs, values)
    else:
        opts = PredictorOptions(epochs=args.epochs, holdout=args.holdout,
                                hidden=args.hidden if args.hidden else PredictorOptions.hidden)
        if args.kind == "mlp-ens":
            pred = MLPEnsemble(space, seed=args.seed, members=args.members, options=opts).fit(cfgs, values)
        else:
            init = AccuracyPredictor.load(args.init_from, space=space) if args.init_from else None
            pred = AccuracyPredictor(space, seed=args.seed, options=opts).fit(cfgs, values, init_from=init)
    pred.report["target"] = "top-1" if args.target == "accuracy" else "negated mean loss"
    pred.save(args.out)
    r = pred.report
    print(f"predictor ({args.kind}, target {r['target']}): {len(cfgs)} measured subnets, {r['n_train']} to fit, "
          f"{r['n_holdout']} held out")
    if "kendall_tau" in r:
        bt = r.get("bitops_kendall_tau", float("nan"))
        print(f"  held-out Kendall tau      {r['kendall_tau']:.3f}   (fewer BitOPs = better: {bt:.3f})")
        print(f"  held-out pairwise acc.    {100 * r['pairwise_accuracy']:.1f} %  "
              f"(fewer BitOPs = better: {100 * r.get('bitops_pairwise_accuracy', float('nan')):.1f} %)")
        print(f"  held-out RMSE             {r['rmse']:.4f}")
    print(f"saved: {Path(args.out)}")
    return 0


def add_parser(sub) -> None:
    """Register `qcompile predictor collect|fit` on the main parser's subcommands."""
    p = sub.add_parser("predictor", help="measure subnets (collect) and fit the accuracy predictor (fit)")
    ps = p.add_subparsers(dest="predictor_command", required=True, metavar="ACTION")

    s = ps.add_parser("collect", help="measure sampled subnets of a trained run into a JSONL cache (resumable)")
    s.add_argument("run", help="run directory from `qcompile train`")
    s.add_argument("--n", type=int, required=True, help="number of sampled configs (all ranks together)")
    s.add_argument("--out", required=True, help="JSONL cache (appended; shared by ranks and runs)")
    s.add_argument("--bits", type=_ints, default=(2, 3, 4), help="per-layer bit choices; 32 = float subnets")
    s.add_argument("--seed", type=int, default=0, help="config i is space.sample(seed=SEED+i)")
    s.add_argument("--split", default="val", choices=("train", "val", "test"))
    s.add_argument("--calib-batches", type=int, default=8)
    s.add_argument("--calib-seed", type=int, default=1)
    s.add_argument("--calib-seeds", type=int, default=1,
                   help="average each measurement over this many calibration seeds (less noise)")
    s.add_argument("--extra-train", type=int, default=0,
                   help="add a fixed subset of this many training images to the evaluation set (less noise)")
    s.add_argument("--rank", type=int, default=None, help="this process's shard (default: $RANK or 0)")
    s.add_argument("--world-size", type=int, default=None, help="number of shards (default: $WORLD_SIZE or 1)")
    s.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest on a shared machine)")
    s.set_defaults(fn=cmd_collect)

    s = ps.add_parser("fit", help="fit an accuracy predictor (MLP or boosted trees) on a JSONL cache")
    s.add_argument("data", help="JSONL cache from `qcompile predictor collect`")
    s.add_argument("--out", required=True, help="predictor directory (safetensors + JSON)")
    s.add_argument("--kind", default="mlp", choices=("mlp", "mlp-ens", "gbt"),
                   help="mlp: APQ's MLP on the encoding; mlp-ens: the mean of --members MLP seeds; "
                        "gbt: boosted trees over a log-BitOPs line")
    s.add_argument("--members", type=int, default=5, help="mlp-ens: number of MLPs")
    s.add_argument("--target", default="accuracy", choices=("accuracy", "loss"),
                   help="fit top-1, or the negated mean loss (less noisy, docs/search.md)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--holdout", type=float, default=0.2)
    s.add_argument("--n-estimators", type=int, default=BOOSTED_DEFAULTS["n_estimators"], help="gbt: trees")
    s.add_argument("--max-depth", type=int, default=BOOSTED_DEFAULTS["max_depth"], help="gbt: tree depth")
    s.add_argument("--learning-rate", type=float, default=BOOSTED_DEFAULTS["learning_rate"], help="gbt: shrinkage")
    s.add_argument("--epochs", type=int, default=300)
    s.add_argument("--hidden", type=_ints, default=None, help="hidden widths (default 400,400,400)")
    s.add_argument("--init-from", default=None, help="predictor fitted on float subnets (APQ transfer)")
    s.set_defaults(fn=cmd_fit)
