"""`qcompile predictor collect|fit`: measure subnets of a trained supernet, fit the accuracy predictor.

    qcompile predictor collect RUN --n 500 --out acc.jsonl [--bits 2,3,4] [--seed 0]
                                   [--rank R --world-size W]     # or torchrun's RANK / WORLD_SIZE
    qcompile predictor fit acc.jsonl --out pred/ [--kind mlp|mlp-ens|gbt|ensemble] [--target accuracy|loss]
                                                 [--holdout 0.2] [--init-from float_pred/]
    qcompile predictor fit acc.jsonl --out pred/ --kind gbt-sens|sens-line --sensitivity noise|measured|SENS.json
                                                 [--run RUN]

`collect` draws `--n` configs (`space.sample(seed=seed+i, bits=...)`, canonical, deduplicated), keeps
this rank's shard (every `world_size`-th), skips configs already in the JSONL cache and measures the
rest on the `--split` split (default val), appending each result under a file lock. Run it again
to resume; run it under `torchrun --nproc-per-node K` (or with `--rank/--world-size` on several
machines sharing the file) to shard. `fit` prints the held-out Kendall tau, pairwise accuracy and
RMSE next to the ranking by BitOPs alone; `--target loss` fits the negated mean loss (higher = better,
as search maximises it).

`--kind sens-line` / `gbt-sens` add the per-layer sensitivity prior (`search/predictors/sensitivity.py`,
`noise.py`) to the boosted predictor: `sens-line` is the least-squares line on log BitOPs and the summed
sensitivities alone (no trees), `gbt-sens` boosted trees over that line. `--sensitivity noise` computes the
data-free prior from the run's weights and quantizers (milliseconds); `measured` measures it on the run
(2 * layer slots + 1 supernet evaluations at 2 bits, with the cache's own protocol, cached and resumable in
DATA.sensitivity.jsonl); a path loads a saved `LayerSensitivity` JSON. The run is the one the cache's records
name, or `--run`. The prior is saved with the predictor (predictor.json), so `load_predictor` needs no run.

`--kind ensemble` fits `qs.EnsemblePredictor`: boosted trees (`--n-estimators/--max-depth/--learning-rate`,
default the setting CV chose on 2,300 subnets: 1000 trees of depth 3, shrinkage 0.02) and APQ's MLP (`--hidden`,
`--epochs`), each standardised on the fit set, averaged; saved as one directory with a member per subdirectory.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

log = logging.getLogger("qcompile")

# the gbt defaults of `predictor fit` (BoostedOptions' own; kept here so that --help does not import torch)
BOOSTED_DEFAULTS = {"n_estimators": 300, "max_depth": 2, "learning_rate": 0.05}
#: the trees of `--kind ensemble` (`qcompile.search.predictors.ensemble.DEFAULT_GBT`; a test keeps them equal)
ENSEMBLE_GBT_DEFAULTS = {"n_estimators": 1000, "max_depth": 3, "learning_rate": 0.02}
#: predictor kinds of `predictor fit`; the last two need --sensitivity
KINDS = ("mlp", "mlp-ens", "gbt", "sens-line", "gbt-sens", "ensemble")
SENS_KINDS = ("sens-line", "gbt-sens")
SENS_SOURCES = ("noise", "measured")


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


def sensitivity_prior(spec: str, run: str | os.PathLike, *, cache: str | os.PathLike | None = None,
                      protocol: dict | None = None, model: str | None = None, space=None, why: str = ""):
    """The `LayerSensitivity` named by `spec`: "noise" (the data-free prior of `run`'s supernet,
    `noise_sensitivity`), "measured" (`measure_sensitivities` on `run` at 2 bits against 4, with the
    `SupernetEvaluator` keyword `protocol`, measurements cached in `cache`: resumable) or the path of a saved
    one. With `model` / `space`, refuse (ConfigError) a run whose weights / space are not those."""
    from qcompile.errors import ConfigError
    from qcompile.search.predictors.sensitivity import LayerSensitivity

    if spec not in SENS_SOURCES:
        if not Path(spec).is_file():
            raise ConfigError("--sensitivity", spec, f"{', '.join(SENS_SOURCES)} or an existing LayerSensitivity JSON")
        return LayerSensitivity.load(spec)
    if run is None:
        raise ConfigError("--run", None, f"the run directory of the supernet (--sensitivity {spec} reads it)",
                          why or "the cache's records do not name one")
    from qcompile.artifacts import load_run
    from qcompile.search.predictors.measured import model_fingerprint

    run_space, qnet, _ = load_run(run)
    if space is not None and run_space.to_dict() != space.to_dict():
        raise ConfigError("--run", str(run), "a run of the cache's space", "its space differs from the records'")
    if model is not None and model_fingerprint(qnet) != model:
        raise ConfigError("--run", str(run), f"the run the cache was measured on (model {model})",
                          "its weights differ; pass the right run with --run")
    if spec == "noise":
        from qcompile.search.predictors.noise import noise_sensitivity

        return noise_sensitivity(qnet, run_space)
    from qcompile.search.predictors import SupernetEvaluator, measure_sensitivities

    ev = SupernetEvaluator(run, cache=cache, progress=True, **(protocol or {}))
    return measure_sensitivities(ev, low_bits=(2,))


def _fit_sensitivity(args, space, recs):
    """The sensitivity prior of `--kind sens-line|gbt-sens` (None for the other kinds), after checking the
    options that go with it."""
    from qcompile.errors import ConfigError
    from qcompile.search.predictors.measured import EvalProtocol

    if args.kind not in SENS_KINDS:
        if args.sensitivity is not None or args.run is not None:
            flag = "--sensitivity" if args.sensitivity is not None else "--run"
            raise ConfigError(flag, args.sensitivity or args.run, f"only with --kind {' or '.join(SENS_KINDS)}")
        return None
    if args.sensitivity is None:
        raise ConfigError("--sensitivity", None, f"{', '.join(SENS_SOURCES)} or a LayerSensitivity JSON",
                          f"--kind {args.kind} needs a sensitivity prior")
    runs = sorted({r.get("run") for r in recs} - {None})
    run = args.run if args.run is not None else (runs[0] if len(runs) == 1 else None)
    fields = [f for f in EvalProtocol.__dataclass_fields__ if f in recs[0]]
    data = Path(args.data)
    cache = data.with_name(data.stem + ".sensitivity.jsonl")
    return sensitivity_prior(args.sensitivity, run, cache=cache, protocol={f: recs[0][f] for f in fields},
                             model=recs[0].get("model"), space=space,
                             why=f"the records name {len(runs)} runs" if len(runs) > 1 else "")


def cmd_fit(args) -> int:
    from qcompile.errors import ConfigError
    from qcompile.search.predictors import (
        AccuracyPredictor,
        BoostedOptions,
        BoostedPredictor,
        EnsemblePredictor,
        MLPEnsemble,
        PredictorOptions,
    )
    from qcompile.search.predictors.measured import load_records

    if args.init_from is not None and args.kind != "mlp":
        raise ConfigError("--init-from", args.init_from, "only with --kind mlp (APQ transfer of an MLP)")
    if args.kind == "sens-line" and args.n_estimators not in (None, 0):
        raise ConfigError("--n-estimators", args.n_estimators, "0 or unset with --kind sens-line (the line alone)",
                          "use --kind gbt-sens for trees over the sensitivity line")
    space, cfgs, _, recs = load_records(args.data)
    values = fit_values(recs, args.target)
    sens = _fit_sensitivity(args, space, recs)
    gbt = {k: v if v is not None else (ENSEMBLE_GBT_DEFAULTS if args.kind == "ensemble" else BOOSTED_DEFAULTS)[k]
           for k, v in (("n_estimators", args.n_estimators), ("max_depth", args.max_depth),
                        ("learning_rate", args.learning_rate))}
    if args.kind == "sens-line":
        gbt["n_estimators"] = 0
    if args.kind in ("gbt", *SENS_KINDS):
        bopts = BoostedOptions(**gbt, holdout=args.holdout)
        pred = BoostedPredictor(space, seed=args.seed, options=bopts, sensitivity=sens).fit(cfgs, values)
    else:
        holdout = 0.0 if args.kind == "ensemble" else args.holdout  # the ensemble holds out for its members
        opts = PredictorOptions(epochs=args.epochs, holdout=holdout,
                                hidden=args.hidden if args.hidden else PredictorOptions.hidden)
        if args.kind == "ensemble":
            members = [BoostedPredictor(space, seed=args.seed, options=BoostedOptions(**gbt, holdout=0.0)),
                       AccuracyPredictor(space, seed=args.seed, options=opts)]
            pred = EnsemblePredictor(space, members=members, seed=args.seed, holdout=args.holdout).fit(cfgs, values)
        elif args.kind == "mlp-ens":
            pred = MLPEnsemble(space, seed=args.seed, members=args.members, options=opts).fit(cfgs, values)
        else:
            init = AccuracyPredictor.load(args.init_from, space=space) if args.init_from else None
            pred = AccuracyPredictor(space, seed=args.seed, options=opts).fit(cfgs, values, init_from=init)
    pred.report["target"] = "top-1" if args.target == "accuracy" else "negated mean loss"
    if sens is not None:
        pred.report["sensitivity"] = args.sensitivity
    pred.save(args.out)
    r = pred.report
    prior = f", sensitivity {args.sensitivity}" if sens is not None else ""
    print(f"predictor ({args.kind}{prior}, target {r['target']}): {len(cfgs)} measured subnets, {r['n_train']} to fit, "
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

    s = ps.add_parser("fit", help="fit an accuracy predictor (MLP, boosted trees, sensitivity prior) on a JSONL cache")
    s.add_argument("data", help="JSONL cache from `qcompile predictor collect`")
    s.add_argument("--out", required=True, help="predictor directory (safetensors + JSON)")
    s.add_argument("--kind", default="mlp", choices=KINDS,
                   help="mlp: APQ's MLP on the encoding; mlp-ens: the mean of --members MLP seeds; "
                        "gbt: boosted trees over a log-BitOPs line; sens-line: a line on log BitOPs and the "
                        "summed per-layer sensitivities (no trees); gbt-sens: boosted trees over that line; "
                        "ensemble: the standardised mean of gbt and mlp")
    s.add_argument("--sensitivity", default=None, metavar="noise|measured|SENS.json",
                   help="sens-line / gbt-sens: the per-layer prior, data-free from the run's quantizers (noise), "
                        "measured on the run (2 bits; cached in DATA.sensitivity.jsonl, resumable) or a saved "
                        "LayerSensitivity")
    s.add_argument("--run", default=None,
                   help="--sensitivity noise|measured: the trained run (default: the run the records name)")
    s.add_argument("--members", type=int, default=5, help="mlp-ens: number of MLPs")
    s.add_argument("--target", default="accuracy", choices=("accuracy", "loss"),
                   help="fit top-1, or the negated mean loss (less noisy, docs/search.md)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--holdout", type=float, default=0.2)
    s.add_argument("--n-estimators", type=int, default=None,
                   help=f"gbt, gbt-sens, ensemble: trees (default {BOOSTED_DEFAULTS['n_estimators']}; "
                        f"ensemble {ENSEMBLE_GBT_DEFAULTS['n_estimators']})")
    s.add_argument("--max-depth", type=int, default=None,
                   help=f"gbt, gbt-sens, ensemble: tree depth (default {BOOSTED_DEFAULTS['max_depth']}; "
                        f"ensemble {ENSEMBLE_GBT_DEFAULTS['max_depth']})")
    s.add_argument("--learning-rate", type=float, default=None,
                   help=f"gbt, gbt-sens, ensemble: shrinkage (default {BOOSTED_DEFAULTS['learning_rate']}; "
                        f"ensemble {ENSEMBLE_GBT_DEFAULTS['learning_rate']})")
    s.add_argument("--epochs", type=int, default=300, help="mlp, mlp-ens, ensemble: MLP training epochs")
    s.add_argument("--hidden", type=_ints, default=None, help="mlp, mlp-ens, ensemble: hidden widths (default "
                                                              "400,400,400)")
    s.add_argument("--init-from", default=None, help="mlp: predictor fitted on float subnets (APQ transfer)")
    s.set_defaults(fn=cmd_fit)
