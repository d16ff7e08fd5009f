"""NSGA-II against random search at the same number of evaluations: hypervolume of (accuracy, BitOPs).

What it checks: NSGA-II beats random search in hypervolume (predicted accuracy x BitOPs) on
>= 9 of 10 seeds, and the same seed gives the same result. Predictor-only: each search takes seconds.

Predictors (`--predictor`):
- `synthetic` (default): deterministic stand-in of tests/search/synthetic.py (accuracy saturating
  in log BitOPs plus a fixed random linear term on the one-hot encoding); no training.
- `fit:RUN`: measures `--n-measured` random subnets of a trained run on the digits test split
  (extract + calibrate, as the demo does) and fits a ridge regressor on the one-hot encoding plus
  log BitOPs; held-out Kendall tau is printed.
- `mlp:FILE.jsonl[:SEED]`: `qs.AccuracyPredictor` (APQ's 3 x 400 MLP) fitted on every measurement of
  a `qcompile predictor collect` cache with calibration seed SEED (default 1); the space is the cache's.
  The fitted predictor is kept beside the cache (`FILE.jsonl.mlp/`) and reused by later runs.

Cost axis: BitOPs, or with `--latency-table T` the latency predicted by `qs.LatencyTable.load(T)`
(`qs.objectives.latency`); `--build-table T` builds that table first (resumable: an interrupted
build continues where it stopped) for the predictor's space on this host, x86, 1 thread.

The reference point is fixed per space and predictor, independent of both searches: accuracy of
the smallest subnet at 2 bits minus 0.05, 1.1 x the cost (BitOPs or predicted latency) of the
largest subnet at 4 bits.

    .venv/bin/python benchmarks/search_hv.py --seeds 10 --evals 2000 [--predictor fit:RUN] [--md docs/x.md]
    .venv/bin/python benchmarks/search_hv.py --seeds 10 --evals 2000 --predictor mlp:acc.jsonl \
        --latency-table runs/latency_x86.json [--build-table]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import qcompile as qc  # noqa: E402
import qcompile.search as qs  # noqa: E402
from qcompile.search.cost import bitops  # noqa: E402
from qcompile.search.encoding import encode  # noqa: E402

log = logging.getLogger("search_hv")


class RidgePredictor:
    """Ridge regression on [one-hot encoding, log BitOPs] (a stand-in for APQ's MLP predictor)."""

    def __init__(self, space, alpha: float = 1.0) -> None:
        self.space, self.alpha = space, alpha

    def _x(self, configs):
        return np.array([np.concatenate([encode(self.space, c), [np.log(max(bitops(self.space, c), 1))]])
                         for c in configs])

    def fit(self, configs, acc):
        from sklearn.linear_model import Ridge

        self.model = Ridge(alpha=self.alpha).fit(self._x(configs), np.asarray(acc))
        return self

    def predict(self, configs) -> np.ndarray:
        return self.model.predict(self._x(configs))


def fit_predictor(run: str, n: int, seed: int = 0):
    """Measure `n` random subnets of `run` (digits test split) and fit `RidgePredictor` on 3/4 of them."""
    from scipy.stats import kendalltau

    from qcompile.artifacts import load_run
    from qcompile.cli.demo import evaluate_config
    from qcompile.data import load_dataset

    space, qnet, _ = load_run(run)
    data = load_dataset("digits", resolution=max(space.resolutions), in_channels=space.in_channels)
    cfgs = [space.sample(seed=10_000 + seed * 1000 + i, bits=(2, 3, 4)) for i in range(n)]
    t0 = time.perf_counter()
    acc = []
    for c in cfgs:
        acc.append(evaluate_config(qnet, c, data, calib_batches=4)[0])
    log.info("measured %d subnets in %.0f s: accuracy %.3f..%.3f", n, time.perf_counter() - t0, min(acc), max(acc))
    k = (3 * n) // 4
    pred = RidgePredictor(space).fit(cfgs[:k], acc[:k])
    tau = kendalltau(pred.predict(cfgs[k:]), acc[k:]).statistic
    tau_bops = kendalltau([-bitops(space, c) for c in cfgs[k:]], acc[k:]).statistic
    log.info("held-out Kendall tau: predictor %.3f, ranking by BitOPs alone %.3f (%d subnets)", tau, -tau_bops, n - k)
    return space, RidgePredictor(space).fit(cfgs, acc), {"n": n, "tau": tau, "tau_bitops": -tau_bops}


def latency_table(space, path: str, build: bool):
    """The table at `path` (checked against this host and `space`); `build`: build or finish it first."""
    p = Path(path)
    if build:
        old = qs.LatencyTable.load(p) if p.is_file() else None
        t0 = time.perf_counter()
        table = qs.LatencyTable.build(space, target="x86", num_threads=1, table=old, path=p)
        log.info("latency table built in %.0f s (wall)", time.perf_counter() - t0)
        return table
    table = qs.LatencyTable.load(p)
    table.check("x86", 1, space)
    warm_blocks(table, p)
    return table


def warm_blocks(table, path: Path) -> None:
    """Plan every block of the space once (the covering subnets at every choice) and keep the block memo in
    the table file: a block the table has not seen needs the lowering plan of a whole subnet (seconds), which
    thousands of searched configs would otherwise repeat. Kernels the build did not time are predicted by the
    table's kernel model, as in any `LatencyTable.predict`."""
    from qcompile.search.latency.table import covering_configs

    n = len(table.blocks)
    cover = covering_configs(table.space, 10**6, 0, (2, 3, 4))
    t0 = time.process_time()
    table.predict_many(cover)
    if len(table.blocks) > n:
        table.save(path)
        log.info("latency table: %d new blocks planned in %.0f CPU-s (kept in %s)", len(table.blocks) - n,
                 time.process_time() - t0, path)


def mlp_predictor(spec: str):
    """`qs.AccuracyPredictor` fitted on the calibration-seed measurements of a collect cache (kept for reuse)."""
    from qcompile.search.predictors.measured import load_records

    path, _, cseed = spec.partition(":")
    space, cfgs, acc, recs = load_records(path)
    keep = [i for i, r in enumerate(recs) if r.get("calib_seed") == int(cseed or 1)]
    saved = Path(f"{path}.mlp")
    if (saved / "predictor.json").is_file():
        pred = qs.AccuracyPredictor.load(saved, space=space)
        if pred.report.get("n_train", 0) + pred.report.get("n_holdout", 0) == len(keep):
            log.info("predictor: reusing %s", saved)
            return space, pred, {"n": len(keep), **{k: round(v, 3) for k, v in pred.report.items()
                                                     if k in ("kendall_tau", "pairwise_accuracy")}}
    t0 = time.process_time()
    pred = qs.AccuracyPredictor(space, seed=0).fit([cfgs[i] for i in keep], acc[keep])
    log.info("predictor: fitted on %d measurements in %.0f CPU-s: %s", len(keep), time.process_time() - t0,
             pred.report)
    pred.save(saved)
    return space, pred, {"n": len(keep), **{k: round(v, 3) for k, v in pred.report.items()
                                            if k in ("kendall_tau", "pairwise_accuracy")}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    p.add_argument("--evals", type=int, default=2000)
    p.add_argument("--predictor", default="synthetic", help="synthetic | fit:RUN | mlp:FILE.jsonl[:CALIB_SEED]")
    p.add_argument("--n-measured", type=int, default=40)
    p.add_argument("--latency-table", default=None,
                   help="cost axis: predicted latency from this LatencyTable JSON instead of BitOPs")
    p.add_argument("--build-table", action="store_true",
                   help="build (or finish building) --latency-table for the space first (x86, 1 thread)")
    p.add_argument("--md", default=None, help="also write the table to this markdown file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    info = {}
    if args.predictor == "synthetic":
        from tests.search.synthetic import SyntheticPredictor

        space = qc.spaces.mobilenet_v3(num_classes=10, width_mult=0.35, resolutions=(24, 32))
        pred = SyntheticPredictor(space)
    elif args.predictor.startswith("fit:"):
        space, pred, info = fit_predictor(args.predictor[4:], args.n_measured)
    elif args.predictor.startswith("mlp:"):
        space, pred, info = mlp_predictor(args.predictor[4:])
    else:
        raise SystemExit(f"--predictor: {args.predictor!r}; allowed: synthetic, fit:RUN, mlp:FILE.jsonl")
    acc, bops = qs.objectives.accuracy(pred), qs.objectives.bitops(space)
    if args.latency_table:  # the "x predicted latency" variant
        table = latency_table(space, args.latency_table, args.build_table)
        info = {**info, "latency_table": f"{len(table.kernels)} kernels, {len(table.networks)} networks, "
                                         f"built in {table.keys.get('build_seconds')} s"}
        bops = qs.objectives.latency(table)
    ref = [float(acc([space.smallest(bits=2)])[0]) - 0.05, 1.1 * float(bops([space.largest(bits=4)])[0])]
    rows, wins = [], 0
    t_n = t_r = 0.0
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        t0 = time.process_time()
        n = qs.nsga2(space, [acc, bops], n_evals=args.evals, seed=seed)
        t1 = time.process_time()
        r = qs.random_search(space, [acc, bops], n_evals=args.evals, seed=seed)
        t2 = time.process_time()
        t_n, t_r = t_n + t1 - t0, t_r + t2 - t1
        hn, hr = n.hypervolume(ref), r.hypervolume(ref)
        wins += hn > hr
        best_n, best_r = n.F[:, 0].max(), r.F[:, 0].max()
        rows.append((seed, n.n_evals, r.n_evals, hn, hr, len(n.pareto), len(r.pareto), best_n, best_r))
        log.info("seed %d: HV nsga2 %.4g random %.4g (%s)", seed, hn, hr, "win" if hn > hr else "LOSS")
    again = qs.nsga2(space, [acc, bops], n_evals=args.evals, seed=args.first_seed)
    same = again.configs == qs.nsga2(space, [acc, bops], n_evals=args.evals, seed=args.first_seed).configs
    lines = [
        f"predictor `{args.predictor}`{' ' + str(info) if info else ''}; space {space!r}; "
        f"{args.evals} evaluations per search; reference point (accuracy {ref[0]:.4f}, {bops.name} {ref[1]:.4g}"
        f"{' ' + bops.unit if bops.unit else ''})",
        "",
        "| seed | evals NSGA-II / random | HV NSGA-II | HV random | HV ratio | Pareto size N / R | best acc N / R |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s, en, er, hn, hr, pn, pr, an, ar in rows:
        lines.append(f"| {s} | {en} / {er} | {hn:.4g} | {hr:.4g} | {hn / hr:.3f} | {pn} / {pr} | {an:.4f} / {ar:.4f} |")
    lines += ["", f"NSGA-II wins on {wins} of {args.seeds} seeds; same seed, same configs: {same}; "
              f"CPU time {t_n:.1f} s NSGA-II, {t_r:.1f} s random (all seeds)"]
    text = "\n".join(lines)
    print(text)
    if args.md:
        Path(args.md).write_text(text + "\n")
    return 0 if wins >= (9 * args.seeds + 9) // 10 and same else 1


if __name__ == "__main__":
    sys.exit(main())
