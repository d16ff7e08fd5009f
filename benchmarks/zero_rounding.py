"""BatchQuant zero point: round half up (QFA Eq. 1/5, the default) vs floor (earlier versions), on digits.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.zero_rounding --seed S [--epochs 1] [--subnets 6]

Per seed: the float supernet of `benchmarks/ablations.py` (shared by both modes), then its BatchQuant
two-stage arm ({2,3,4,32} -> {2,3,4}, e + e epochs, our default recipe) trained once with each zero point
rounding, evaluated retraining-free (extract + calibrate 8 batches; test split top-1). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import torch

from benchmarks import ablations as A
from qcompile.data import load_dataset
from qcompile.quant import BatchQuant


def _quantize_with(mode: str):
    real = A.qc.quantize  # the function train_arm calls

    def quantize(*args, **kwargs):
        qnet = real(*args, **kwargs)
        for m in qnet.modules():
            if isinstance(m, BatchQuant):
                m.zero_round.fill_(mode == "round")
        return qnet

    return real, quantize


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=1, help="epochs per quantized stage")
    p.add_argument("--float-epochs", type=int, default=3)
    p.add_argument("--subnets", type=int, default=6)
    p.add_argument("--out", default="runs/zero_rounding")
    args = p.parse_args(argv)
    ns = argparse.Namespace(
        space="mobilenet_v3",
        width=0.35,
        resolution=32,
        float_epochs=args.float_epochs,
        epochs=args.epochs,
        idm_weight=0.1,
        recipe="default",
        subnets=args.subnets,
        seed=args.seed,
        threads=1,
        out=args.out,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("qcompile.quant.calibration").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    from pathlib import Path

    Path(args.out).mkdir(parents=True, exist_ok=True)
    space = A._space(ns)
    data = load_dataset("digits", resolution=ns.resolution, in_channels=space.in_channels)
    fgraph = A.float_supernet(ns, space, data)
    result = {"seed": args.seed, "epochs": args.epochs, "subnets": args.subnets}
    for mode in ("round", "floor"):
        real, patched = _quantize_with(mode)
        A.qc.quantize = patched
        try:
            t = time.process_time()
            qnet = A.train_arm("two-stage", ns, space, data, fgraph)
            assert {m.zero_rounding for m in qnet.modules() if isinstance(m, BatchQuant)} == {mode}
            res = A.evaluate_arm("two-stage", ns, space, data, qnet)
            res["cpu_s"] = round(time.process_time() - t, 1)
        finally:
            A.qc.quantize = real
        result[mode] = res
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
