"""How noisy is one measured accuracy? The same subnets measured with two calibration seeds, per protocol.

A predictor cannot rank subnets better than a re-measurement ranks them (the noise ceiling). For
configs `space.sample(seed=i, bits=(2, 3, 4))`, i < N, each subnet is extracted from a trained run,
calibrated (`qc.calibrate`, `--calib-batches` shuffled training batches of 64) with calibration
seeds 1 and 2, and evaluated on the val split and on the fixed training subset of
`SupernetEvaluator(extra_train=...)` (`EXTRA_TRAIN_SEED`); the test split is never touched. Reported:
Kendall tau and pairwise accuracy between the two seeds for top-1 and mean cross-entropy on val,
on the training subset and on both together (the `extra_train` protocol), and, from a collect cache
of the same configs, for the 4-batch val top-1. Resumable: one JSONL line per subnet.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/measurement_noise.py RUN --n 40 --calib-batches 16 \\
        --extra-train 512 --out runs/noise16.jsonl [--cache acc.jsonl]
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import torch

import qcompile.search as qs
from qcompile import api as qc
from qcompile.artifacts import load_run
from qcompile.config import SubnetConfig
from qcompile.data import load_dataset
from qcompile.search.predictors.measured import EvalProtocol, append_jsonl, config_hash, read_jsonl

log = logging.getLogger("benchmarks.measurement_noise")


@torch.no_grad()
def measure(qnet, data, cfg, seed: int, calib_batches: int, sets: dict) -> dict[str, float]:
    sub = qc.extract(qnet, cfg)
    qc.calibrate(sub, data.train.loader(64, shuffle=True, seed=seed, resolution=cfg.resolution),
                 max_batches=calib_batches)
    sub.eval()
    out = {}
    for name, ds in sets.items():
        x, y = next(iter(ds.loader(len(ds), resolution=cfg.resolution)))
        logits = sub(x)
        out[f"{name}_top1_s{seed}"] = float((logits.argmax(1) == y).float().mean())
        out[f"{name}_loss_s{seed}"] = float(torch.nn.functional.cross_entropy(logits, y))
    return out


def summary(rows: list[dict], n_val: int, n_train: int, cache_acc: dict | None) -> list[str]:
    def both(r, s, k):
        return (n_val * r[f"val_{k}_s{s}"] + n_train * r[f"train_{k}_s{s}"]) / (n_val + n_train)

    def line(name, a, b):
        a, b = np.array(a), np.array(b)
        return (f"| {name} | {qs.kendall_tau(a, b):.3f} | {100 * qs.pairwise_accuracy(a, b):.1f} % | "
                f"{np.mean(np.abs(a - b)):.4f} | {np.std(a):.4f} |")

    out = [f"{len(rows)} subnets; seed 1 against seed 2", "",
           "| measurement | Kendall tau | pairwise accuracy | mean abs. change | std over subnets |",
           "|---|---:|---:|---:|---:|"]
    if cache_acc:
        pairs = [(cache_acc.get((r["hash"], 1)), cache_acc.get((r["hash"], 2))) for r in rows]
        pairs = [p for p in pairs if None not in p]
        if len(pairs) >= 2:
            out.append(line(f"val top-1, 4 calibration batches (cache, {len(pairs)} subnets)",
                            *zip(*pairs)))
    for k in ("top1", "loss"):
        out.append(line(f"val {k}", [r[f"val_{k}_s1"] for r in rows], [r[f"val_{k}_s2"] for r in rows]))
        out.append(line(f"train subset {k}", [r[f"train_{k}_s1"] for r in rows], [r[f"train_{k}_s2"] for r in rows]))
        out.append(line(f"val + train subset {k}", [both(r, 1, k) for r in rows], [both(r, 2, k) for r in rows]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--calib-batches", type=int, default=16)
    ap.add_argument("--extra-train", type=int, default=512)
    ap.add_argument("--out", required=True, help="JSONL, one line per subnet (resumable)")
    ap.add_argument("--cache", default=None, help="a collect cache with 4-batch seed 1 / 2 measurements")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    space, qnet, _ = load_run(args.run)
    qnet.eval()
    data = load_dataset("digits", resolution=max(space.resolutions), in_channels=space.in_channels)
    train_sub = EvalProtocol(extra_train=args.extra_train).eval_set(data)
    train_sub = train_sub.subset(np.arange(len(data.val), len(train_sub)))
    sets = {"val": data.val, "train": train_sub}
    done = {r["i"]: r for r in read_jsonl(args.out)}
    from tqdm import tqdm

    for i in tqdm(range(args.n), desc="noise"):
        if i in done:
            continue
        cfg = space.canonical(space.sample(seed=i, bits=(2, 3, 4)))
        row = {"i": i, "hash": config_hash(space, cfg)}
        for seed in (1, 2):
            row.update(measure(qnet, data, cfg, seed, args.calib_batches, sets))
        append_jsonl(args.out, row)
        done[i] = row
    cache_acc = None
    if args.cache:
        cache_acc = {(config_hash(space, SubnetConfig.from_dict(r["config"])), r["calib_seed"]): r["accuracy"]
                     for r in read_jsonl(args.cache) if r.get("calib_batches") == 4 and r.get("split") == "val"}
    rows = [done[i] for i in sorted(done) if i < args.n]
    print("\n".join(summary(rows, len(data.val), len(train_sub), cache_acc)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
