"""SpaceEvo on digits: search the search space, then check the Q-T score against trained supernets.

    .venv/bin/python benchmarks/spaceevo.py search --out runs/spaceevo        # evolution vs random, 20 seeds
    .venv/bin/python benchmarks/spaceevo.py qt --out runs/spaceevo --spaces 8 # Q-T effectiveness (Kendall tau)
    .venv/bin/python benchmarks/spaceevo.py all --out runs/spaceevo           # both (about an hour on 2 cores)
    .venv/bin/python benchmarks/spaceevo.py all --tiny --out /tmp/se          # CI: seconds to minutes

Both parts share the block-wise lookup table OUT/table.json (built once by distillation, ~8 CPU-min,
reused while its key matches) and the latency model `qcompile.search.space_evolution.latency_model`.

`search`: for each seed, aging evolution (Algorithm 1, P = N/10, S = P/4) and random search evaluate
the same number N of distinct spaces; the better best Q-T score wins the seed (acceptance: evolution
on >= 15 of 20 seeds). Writes OUT/search.json and OUT/search.png.

`qt`: K random candidate spaces (the paper samples 30), each trained as a small supernet (float
epochs, then INT8 epochs with LSQ + BatchQuant, sandwich rule), then searched: M random INT8
subnets, each calibrated and evaluated on the validation split, latency from the same model; a
space's *Pareto accuracy* is the mean over the constraints of the best accuracy under each
(0 for none). Kendall tau between Q-T scores and Pareto accuracies, with a 95 % bootstrap interval
over spaces. Results are appended per space to OUT/qt_spaces.json (a rerun continues), summary in
OUT/qt.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("benchmarks.spaceevo")


def _table(out: Path, tiny: bool):
    from qcompile.spaces.hyperspace import digits_hyperspace
    from qcompile.train.blockwise import BKDSettings, build_or_load_table

    settings = (BKDSettings(teacher_epochs=2, float_epochs=0, int8_epochs=1, archs_per_stage=4, train_subset=128)
                if tiny else None)
    return build_or_load_table(out / "table.json", digits_hyperspace(), "digits", seed=0, settings=settings,
                               progress=True)


def _latency(out: Path, kind: str, timing: tuple[int, int] = (2, 1)):
    """The Q-T latency model: our INT8 kernels timed here (cached in OUT/latency/, built once; `timing`: covering
    and random subnets timed per block type) or the MAC stand-in."""
    from qcompile.search.space_evolution import latency_model
    from qcompile.search.space_latency import TimingSettings
    from qcompile.spaces.hyperspace import digits_hyperspace

    return latency_model("x86", kind, cache_dir=out / "latency", hyper=digits_hyperspace(), progress=True,
                         timing=TimingSettings(max_cover=timing[0], n_fit=timing[1]))


def quantile_constraints(scorer, quantiles, n_spaces: int = 40, seed: int = 0) -> tuple[float, ...]:
    """Constraints (ms) at `quantiles` of the latency of subnets of `n_spaces` random spaces (so that they bind)."""
    rng = random.Random(seed)
    lats = np.concatenate([scorer.sample(scorer.hyper.random(rng))[2] for _ in range(n_spaces)])
    return tuple(round(float(np.quantile(lats, q)), 4) for q in quantiles)


def _constraints(out: Path, table, latency, constraints, quantiles, input_widths: str = "all"):
    from qcompile.search.space_evolution import QTScorer

    if quantiles:
        probe = QTScorer(table, (1.0,), latency, n_samples=200, input_widths=input_widths)
        constraints = quantile_constraints(probe, quantiles)
        log.info("constraints at latency quantiles %s of random spaces' subnets: %s ms", quantiles, constraints)
    return tuple(constraints)


def run_search(out: Path, seeds: int, n_spaces: int, constraints, tiny: bool, kind: str = "kernels",
               quantiles=None, input_widths: str = "all", timing: tuple[int, int] = (2, 1)) -> dict:
    from qcompile.search.space_evolution import (
        EvolutionSettings,
        QTScorer,
        aging_evolution,
        plot_best_scores,
        random_search_spaces,
    )
    from qcompile.utils.io import atomic_write_text

    table = _table(out, tiny)
    latency = _latency(out, kind, timing)
    constraints = _constraints(out, table, latency, constraints, quantiles, input_widths)
    scorer = QTScorer(table, constraints, latency, input_widths=input_widths)
    pop = max(4, n_spaces // 10)
    evo_runs, rnd_runs, rows = [], [], []
    t0 = time.process_time()
    for h in scorer.hyper.blocks:  # the per-stage latency precompute (cached kernel lists), outside the timing
        scorer._stage_data(1, h)
    getattr(latency, "flush", lambda: None)()
    t_pre = time.process_time() - t0
    t0 = time.process_time()
    for seed in range(seeds):
        e = aging_evolution(scorer, EvolutionSettings(n_spaces=n_spaces, population=pop, sample=max(2, pop // 4),
                                                      seed=seed))
        r = random_search_spaces(scorer, n_spaces, seed=seed)
        evo_runs.append(e)
        rnd_runs.append(r)
        rows.append({"seed": seed, "evolution": e.best["score"], "random": r.best["score"],
                     "evolution_best": e.best["encoding"], "random_best": r.best["encoding"]})
    wins = sum(r["evolution"] > r["random"] for r in rows)
    ties = sum(r["evolution"] == r["random"] for r in rows)
    doc = {
        "constraints_ms": list(constraints), "quantiles": list(quantiles or []), "n_spaces": n_spaces,
        "population": pop, "sample": max(2, pop // 4), "seeds": seeds, "evolution_wins": wins, "ties": ties,
        "cpu_seconds": time.process_time() - t0, "precompute_cpu_seconds": t_pre,
        "latency_model": latency.describe(), "input_widths": input_widths,
        "table_key_sha": table.key.get("teacher_sha256"),
        "rows": rows,
    }
    atomic_write_text(out / f"search_{kind}.json", json.dumps(doc, indent=1))
    plot_best_scores({"aging evolution": evo_runs, "random search": rnd_runs}, out / f"search_{kind}.png",
                     title=f"SpaceEvo digits ({kind} latency): best Q-T vs evaluated spaces; evolution wins "
                           f"{wins}/{seeds} seeds")
    print(f"[{kind} latency, constraints {list(constraints)} ms] evolution beats random search on {wins}/{seeds} "
          f"seeds ({ties} ties) at {n_spaces} spaces each; mean best Q-T "
          f"{np.mean([r['evolution'] for r in rows]):.4f} vs {np.mean([r['random'] for r in rows]):.4f}")
    return doc


def train_small_supernet(space, data, epochs: tuple[int, int], seed: int):
    """Float epochs then INT8 epochs (weights LSQ, activations BatchQuant), sandwich rule; returns qnet."""
    import torch

    import qcompile as qc
    from qcompile.train import Phase, TrainConfig, Trainer
    from qcompile.train.init import zero_init_residual_bn

    torch.manual_seed(seed)
    net = space.build_supernet()
    zero_init_residual_bn(net)
    qnet = qc.quantize(qc.trace(net), weight_bits=(8, 32), act_bits=(8, 32))
    phases = [Phase("float", epochs[0], bits=None), Phase("int8", epochs[1], bits=(8,))]
    Trainer(qnet, space, data, TrainConfig(batch_size=64, seed=seed), [p for p in phases if p.epochs]).fit()
    return qnet


def subnet_accuracies(qnet, space, data, n_subnets: int, seed: int, calib_seeds: int = 1,
                      extra_train: int = 0) -> tuple[list, list[float]]:
    """`n_subnets` INT8 subnets (largest, smallest, random), each calibrated and evaluated on the validation split
    plus `extra_train` fixed training images, averaged over `calib_seeds` calibration seeds (`EvalProtocol`: both
    lower the measurement noise of a 179-image val split)."""
    from qcompile.search.predictors import SupernetEvaluator

    configs = [space.sample(seed=seed * 1000 + i, bits=(8,)) for i in range(n_subnets)]
    configs[0] = space.largest(bits=8)
    configs[1] = space.smallest(bits=8)
    ev = SupernetEvaluator(qnet, data, space=space, split="val", calib_batches=4, calib_seeds=calib_seeds,
                           extra_train=extra_train, progress=False)
    return configs, [float(a) for a in ev.predict(configs)]


def pareto_accuracy(accs, lats, constraints) -> dict:
    """Mean over the constraints of the best accuracy under each (0 where no subnet meets it)."""
    per = [max([a for a, t in zip(accs, lats) if t < T], default=0.0) for T in constraints]
    return {"per_constraint": per, "pareto_accuracy": float(np.mean(per))}


def kendall_with_ci(a, b, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    from scipy.stats import kendalltau

    a, b = np.asarray(a), np.asarray(b)
    tau = float(kendalltau(a, b).statistic)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(len(a), size=len(a))
        if len(set(idx)) < 3:
            continue
        t = kendalltau(a[idx], b[idx]).statistic
        if np.isfinite(t):
            boots.append(t)
    lo, hi = np.percentile(boots, [2.5, 97.5]) if boots else (float("nan"), float("nan"))
    return tau, float(lo), float(hi)


def _candidates(hyper, n_spaces: int):
    rng = random.Random(2026)
    cands = []
    while len(cands) < n_spaces:  # bounded: the hyperspace has ~2.4e8 spaces
        c = hyper.random(rng)
        if c.encoding not in {x.encoding for x in cands}:
            cands.append(c)
    return cands


def train_spaces(out: Path, n_spaces: int, epochs: tuple[int, int], n_subnets: int, tiny: bool,
                 train: bool = True, calib_seeds: int = 1, extra_train: int = 0) -> list[dict]:
    """Train K random candidate spaces and evaluate `n_subnets` subnets of each (no latency: that is `run_qt`).
    Appends per space to OUT/qt_spaces.json (a rerun continues). `train=False`: only those trained so far."""
    import torch

    from qcompile.data import load_dataset
    from qcompile.spaces.hyperspace import digits_hyperspace
    from qcompile.utils.io import atomic_write_text

    torch.set_num_threads(1)
    hyper = digits_hyperspace()
    data = load_dataset("digits", resolution=hyper.resolutions[0], in_channels=hyper.in_channels)
    path = out / "qt_spaces.json"
    done = json.loads(path.read_text()) if path.is_file() else []

    def same(d, cand) -> bool:
        return (d["encoding"] == cand.encoding and d["epochs"] == list(epochs) and d["subnets"] == n_subnets
                and d.get("calib_seeds", 1) == calib_seeds and d.get("extra_train", 0) == extra_train)

    cands = _candidates(hyper, n_spaces)
    for k, cand in enumerate(cands):
        if any(same(d, cand) for d in done) or not train:
            continue
        t0 = time.process_time()
        space = cand.build()
        qnet = train_small_supernet(space, data, epochs, seed=k)
        configs, accs = subnet_accuracies(qnet, space, data, n_subnets, k, calib_seeds, extra_train)
        done.append({"encoding": cand.encoding, "epochs": list(epochs), "subnets": n_subnets,
                     "calib_seeds": calib_seeds, "extra_train": extra_train,
                     "configs": [c.to_json() for c in configs], "accuracies": accs,
                     "cpu_seconds": time.process_time() - t0})
        atomic_write_text(path, json.dumps(done, indent=1))
        print(f"[{k + 1}/{n_spaces}] {cand.encoding}: trained, {n_subnets} subnets, accuracy "
              f"{min(accs):.3f}-{max(accs):.3f} ({done[-1]['cpu_seconds']:.0f} CPU-s)", flush=True)
    return [d for c in cands for d in done if same(d, c)]


def run_qt(out: Path, n_spaces: int, constraints, epochs: tuple[int, int], n_subnets: int, tiny: bool,
           kind: str = "kernels", quantiles=None, input_widths: str = "all", train: bool = True,
           timing: tuple[int, int] = (2, 1), calib_seeds: int = 1, extra_train: int = 0) -> dict:
    """Q-T scores of the trained spaces against their Pareto accuracies (Kendall tau, 95 % bootstrap interval).
    With `quantiles`, the constraints sit at those quantiles of the latency of the trained spaces' searched
    subnets (so every constraint binds somewhere)."""
    from qcompile.config import SubnetConfig
    from qcompile.search.space_evolution import QTScorer
    from qcompile.utils.io import atomic_write_text

    trained = train_spaces(out, n_spaces, epochs, n_subnets, tiny, train, calib_seeds, extra_train)
    table = _table(out, tiny)
    latency = _latency(out, kind, timing)
    t0 = time.process_time()
    for d in trained:
        space = table.hyper.from_encoding(d["encoding"]).build()
        d["latency_ms"] = [latency.predict(space, SubnetConfig.from_json(c)) for c in d["configs"]]
    if quantiles:
        pooled = np.concatenate([d["latency_ms"] for d in trained])
        constraints = tuple(round(float(np.quantile(pooled, q)), 4) for q in quantiles)
    scorer = QTScorer(table, constraints, latency, input_widths=input_widths)
    rows = []
    for d in trained:
        cand = table.hyper.from_encoding(d["encoding"])
        rows.append({"encoding": d["encoding"], "qt_score": scorer.score(cand), "per_constraint_qt":
                     scorer.per_constraint(cand), **pareto_accuracy(d["accuracies"], d["latency_ms"], constraints),
                     "latency_range_ms": [min(d["latency_ms"]), max(d["latency_ms"])],
                     "max_accuracy": max(d["accuracies"]), "cpu_seconds": d["cpu_seconds"]})
    getattr(latency, "flush", lambda: None)()
    tau, lo, hi = kendall_with_ci([r["qt_score"] for r in rows], [r["pareto_accuracy"] for r in rows])
    doc = {"constraints_ms": list(constraints), "quantiles": list(quantiles or []), "epochs": list(epochs),
           "subnets_per_space": n_subnets, "calib_seeds": calib_seeds, "extra_train": extra_train,
           "kendall_tau": tau, "ci95": [lo, hi], "spaces": rows,
           "latency_model": latency.describe(), "input_widths": input_widths,
           "pricing_cpu_seconds": time.process_time() - t0}
    atomic_write_text(out / f"qt_{kind}.json", json.dumps(doc, indent=1))
    print(f"[{kind} latency, constraints {list(constraints)} ms] Kendall tau(Q-T, Pareto accuracy) over {len(rows)} "
          f"spaces: {tau:.3f} (95% bootstrap CI {lo:.3f}..{hi:.3f})")
    return doc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=("search", "qt", "train", "all"))
    p.add_argument("--out", default="runs/spaceevo")
    p.add_argument("--constraints", default="0.2,0.3,0.5", help="latency constraints (ms)")
    p.add_argument("--quantiles", default=None,
                   help="constraints at these latency quantiles instead (search: random spaces' subnets; qt: the "
                        "trained spaces' searched subnets), e.g. 0.1,0.3,0.6")
    p.add_argument("--input-widths", choices=("all", "ends"), default="all",
                   help="stage latency at every input width or at the ends, interpolated (QTScorer.input_widths)")
    p.add_argument("--latency", choices=("kernels", "mac"), default=None,
                   help="kernels (default; --tiny: mac): our INT8 kernels timed here (OUT/latency/, built once, "
                        "minutes); mac: MAC-count stand-in")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--n-spaces", type=int, default=300)
    p.add_argument("--spaces", type=int, default=8, help="candidate spaces trained for the Q-T check")
    p.add_argument("--epochs", default="2,1", help="float,int8 supernet epochs for the Q-T check")
    p.add_argument("--subnets", type=int, default=16, help="subnets searched per trained space")
    p.add_argument("--calib-seeds", type=int, default=1,
                   help="qt/train: each subnet's accuracy averaged over this many calibration seeds")
    p.add_argument("--extra-train", type=int, default=0,
                   help="qt/train: fixed training images added to the val split for the subnets' accuracies")
    p.add_argument("--timing", default="2,1", help="kernels: covering,random subnets timed per block type")
    p.add_argument("--score-only", action="store_true", help="qt: score the spaces trained so far, train none")
    p.add_argument("--tiny", action="store_true", help="CI size: tiny table, 3 seeds, 3 spaces, 1 INT8 epoch")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cons = tuple(float(x) for x in args.constraints.split(","))
    if args.tiny:
        args.seeds, args.n_spaces, args.spaces, args.epochs, args.subnets = 3, 40, 3, "0,1", 4
    args.latency = args.latency or ("mac" if args.tiny else "kernels")
    timing = tuple(int(x) for x in args.timing.split(","))
    epochs = tuple(int(x) for x in args.epochs.split(","))
    quant = tuple(float(x) for x in args.quantiles.split(",")) if args.quantiles else None
    if args.part == "train":
        train_spaces(out, args.spaces, epochs, args.subnets, args.tiny, calib_seeds=args.calib_seeds,
                     extra_train=args.extra_train)
    if args.part in ("search", "all"):
        run_search(out, args.seeds, args.n_spaces, cons, args.tiny, args.latency, quant, args.input_widths, timing)
    if args.part in ("qt", "all"):
        run_qt(out, args.spaces, cons, epochs, args.subnets, args.tiny, args.latency, quant, args.input_widths,
               not args.score_only, timing, args.calib_seeds, args.extra_train)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
