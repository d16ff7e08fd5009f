"""Post-training quantization of torchvision models on digits (target: w8a8 within 1 point of float).

    .venv/bin/python benchmarks/ptq_digits.py --out runs/ptq_digits            # all three models
    .venv/bin/python benchmarks/ptq_digits.py --models resnet18 --epochs 4

Each model (torchvision's definition, `tests/models/torchvision_models.py`, small widths) is trained in
float on digits (32x32, 3 channels) with Adam, then `qc.quantize_model` + `qc.calibrate(bn=False)` on
8 training batches, per weight-step rule (max-abs, MSE, LSQ's rule) at w8a8 and at a mixed 4/8 policy;
top-1 on the digits test split of the float model, the fake-quant model and the integer program
(`qc.to_integer`, the exact reference every backend reproduces). The table goes to OUT/ptq_digits.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import qcompile as qc
from qcompile.data import load_dataset
from qcompile.utils.io import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.test_torchvision_models import WIDTHS, mixed_policy  # noqa: E402
from tests.models.torchvision_models import MODELS  # noqa: E402

log = logging.getLogger("ptq_digits")


def train_float(name: str, data, epochs: int, seed: int = 0) -> torch.nn.Module:
    """Adam (3e-3, cosine) on the digits train split, then BN statistics re-estimated; returns the model in eval."""
    torch.manual_seed(seed)
    model = MODELS[name](num_classes=10, **WIDTHS[name])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = epochs * (len(data.train) // 64)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    model.train()
    for ep in range(epochs):
        for x, y in data.train.loader(64, shuffle=True, seed=seed + ep, drop_last=True):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    # BN statistics re-estimated over the training set (OFA/OQA's BN calibration; torchvision's MobileNetV3
    # BN momentum 0.01 leaves running statistics far from the final weights' after a few hundred steps)
    qc.calibrate(model, data.train.loader(256, shuffle=False), quantizers=False)
    return model.eval()


@torch.no_grad()
def top1(f, data) -> float:
    return 100.0 * float((f(data.test.images).argmax(1) == data.test.labels).float().mean())


def ptq(model, data, policy, weight_init: str, calib_batches: int = 8):
    gm = qc.quantize_model(model, policy, (data.train.images[:8],), weight_init=weight_init)
    qc.calibrate(gm, data.train.loader(64, shuffle=True, seed=1), max_batches=calib_batches, bn=False)
    return gm


def run(names, epochs: int, out: Path | None, policies=("w8a8", "mixed"),
        inits=("maxabs", "mse", "lsq")) -> list[dict]:
    """Train each model, PTQ it per policy and weight-step rule; rows of top-1 (%) (module doc)."""
    data = load_dataset("digits", resolution=32)
    rows = []
    for name in names:
        t0 = time.time()
        model = train_float(name, data, epochs)
        fl = top1(model, data)
        log.info("%s: float %.2f %% (%.0f s training)", name, fl, time.time() - t0)
        for pname in policies:
            policy = (8, 8) if pname == "w8a8" else mixed_policy(qc.layer_names(model))
            for init in inits:
                gm = ptq(model, data, policy, init)
                ig = qc.to_integer(gm)
                row = {"model": name, "policy": pname, "weight_init": init, "epochs": epochs, "float": fl,
                       "fake_quant": top1(gm, data), "integer": top1(lambda x, ig=ig: ig(x), data)}
                rows.append(row)
                log.info("%s", row)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        lines = ["| model | policy | weight steps | float | fake-quant | integer | integer - float |",
                 "|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['model']} | {r['policy']} | {r['weight_init']} | {r['float']:.2f} | "
                         f"{r['fake_quant']:.2f} | {r['integer']:.2f} | {r['integer'] - r['float']:+.2f} |")
        atomic_write_text(out / "ptq_digits.md", "\n".join(lines) + "\n")
        atomic_write_text(out / "ptq_digits.json", json.dumps(rows, indent=1))
        print("\n".join(lines))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("runs/ptq_digits"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    run(args.models, args.epochs, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
