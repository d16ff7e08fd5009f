"""`greedy_bits` (retraining-free Eq. 9) on a trained digits supernet, against uniform and random policies.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/greedy_bits.py RUN --seed 0 [--out greedy-seed0.json]

On the largest architecture at the top resolution, the budget is the BitOPs of uniform 3/3 bits.
`greedy_bits` searches with the loss on the *val* split (all of it, one batch), plus with
`--extra-train N` a fixed subset of N training images (the `SupernetEvaluator` one, seeded by
`EXTRA_TRAIN_SEED`: a larger, less noisy loss set the search may see), and recalibrates on
`--calib-batches` shuffled training batches (seeded by `--seed`); `--exact` re-measures every
candidate at every step (`lazy=False`). Then every policy -- greedy,
uniform 3/3 and 10 random per-layer {2,3,4} policies of no more BitOPs (seeded rejection sampling,
bounded) -- is measured the same way on the *test* split (extract + calibrate on 8 training batches
seeded by `--seed` + evaluate), which the search never saw. Writes a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import qcompile.search as qs
from qcompile.artifacts import load_run
from qcompile.config import QuantPolicy
from qcompile.data import load_dataset
from qcompile.errors import ConfigError
from qcompile.search.predictors.measured import EvalProtocol
from qcompile.train.evaluate import evaluate_subnets
from qcompile.utils.io import atomic_write_text

log = logging.getLogger("benchmarks.greedy_bits")


def random_policies(space, arch, budget, bits, n, seed, cost, max_tries=20_000):
    rng = random.Random(seed)
    out = []
    for _ in range(max_tries):
        p = QuantPolicy(tuple((rng.choice(bits), rng.choice(bits)) for _ in range(space.num_layer_slots)))
        cfg = arch.with_policy(p)
        if float(cost([cfg])[0]) <= budget:
            out.append(cfg)
            if len(out) == n:
                return out
    raise ConfigError("random policies", f"{len(out)} of {n} within budget after {max_tries} tries", "a looser budget")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calib-batches", type=int, default=4, help="training batches of 64 per greedy calibration")
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--random", type=int, default=10)
    ap.add_argument("--max-reevals", type=int, default=4)
    ap.add_argument("--recalibrate-every", type=int, default=5)
    ap.add_argument("--extra-train", type=int, default=0, help="training images added to the val loss set")
    ap.add_argument("--exact", action="store_true", help="lazy=False: re-measure every candidate each step")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)

    space, qnet, doc = load_run(args.run)
    qnet.eval()
    data = load_dataset("digits", resolution=max(space.resolutions), in_channels=space.in_channels)
    bits = (2, 3, 4)
    arch = space.largest()
    bops = qs.Objective("bitops", lambda cfgs: np.array([qs.cost.bitops(space, c) for c in cfgs]), direction="min")
    uniform3 = arch.with_policy(space.uniform_policy(3))
    budget = float(bops([uniform3])[0])
    r = arch.resolution
    loss_set = EvalProtocol(extra_train=args.extra_train).eval_set(data)
    val = [next(iter(loss_set.loader(len(loss_set), resolution=r)))]
    calib = [x for _, (x, _) in zip(range(args.calib_batches), data.train.loader(64, shuffle=True, seed=args.seed,
                                                                                   resolution=r))]
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    greedy, hist = qs.greedy_bits(qnet, arch, val, budget=budget, cost=bops, bits=bits, calib_batches=calib,
                                  lam=args.lam, max_reevals=args.max_reevals,
                                  recalibrate_every=args.recalibrate_every, lazy=not args.exact,
                                  return_history=True)
    t_greedy, cpu_greedy = time.perf_counter() - t0, time.process_time() - cpu0
    rand = random_policies(space, arch, budget, bits, args.random, 1000 + args.seed, bops)
    cfgs = [greedy, uniform3, *rand]
    test = evaluate_subnets(qnet, space, data, cfgs, calib_batches=8, split="test", seed=args.seed)
    res = {
        "seed": args.seed, "lam": args.lam, "extra_train": args.extra_train, "lazy": not args.exact,
        "loss_set_size": len(loss_set), "budget_bitops": budget, "greedy_bitops": float(bops([greedy])[0]),
        "greedy_steps": len(hist), "greedy_wall_s": t_greedy, "greedy_cpu_s": cpu_greedy,
        "test": {"greedy": test[0], "uniform_3_3": test[1], "random_median": statistics.median(test[2:]),
                 "random": test[2:]},
        "random_bitops": [float(b) for b in bops(rand)],
        "greedy_policy": [list(p) for p in greedy.policy.bits],
        "weight_bits_hist": {b: sum(1 for w, _ in greedy.policy.bits if w == b) for b in bits},
        "act_bits_hist": {b: sum(1 for _, a in greedy.policy.bits if a == b) for b in bits},
        "command": f"benchmarks/greedy_bits.py {args.run} --seed {args.seed} --calib-batches {args.calib_batches} "
                   f"--max-reevals {args.max_reevals} --recalibrate-every {args.recalibrate_every} --lam {args.lam} "
                   f"--extra-train {args.extra_train}{' --exact' if args.exact else ''}",
    }
    log.info("seed %d: test greedy %.2f %% | uniform 3/3 %.2f %% | median of %d random %.2f %% "
             "(BitOPs %.4g <= %.4g; %d steps, %.0f s wall, %.0f s CPU)", args.seed, 100 * test[0], 100 * test[1],
             len(rand), 100 * res["test"]["random_median"], res["greedy_bitops"], budget, len(hist), t_greedy,
             cpu_greedy)
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k not in ("greedy_policy",)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
