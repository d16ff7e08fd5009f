"""Retraining-free evaluation of subnets of a trained quantized supernet: extract, calibrate, test.

QFA Sec. 3.4 / OQA Sec. 3.4: a subnet is sliced out of the supernet with no retraining; only its
BatchNorm statistics and BatchQuant range estimates are recomputed on a few training batches
("BatchQuant calibration during test time"), then it is evaluated. This is what `qcompile train`
reports and what the acceptance figures of docs/training.md use.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from qcompile.config import SubnetConfig
from qcompile.data.base import DatasetSplits
from qcompile.errors import ConfigError

logger = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_subnets(
    qnet: nn.Module,
    space: Any,
    data: DatasetSplits,
    configs: Sequence[SubnetConfig],
    calib_batches: int = 8,
    *,
    split: str = "test",
    batch_size: int = 64,
    seed: int = 1,
) -> list[float]:
    """Top-1 accuracy (0..1) on `data.<split>` of each config, after `qc.extract` + `qc.calibrate`.

    Calibration uses `calib_batches` shuffled training batches of `batch_size` at the config's
    resolution (seeded by `seed`, the same for every config). `qnet` is not modified.
    """
    from qcompile import api as qc

    if calib_batches < 1:
        raise ConfigError("calib_batches", calib_batches, ">= 1")
    if split not in ("train", "val", "test"):
        raise ConfigError("split", split, ("train", "val", "test"))
    evalset = getattr(data, split)
    out: list[float] = []
    for cfg in configs:
        space.validate(cfg)
        sub = qc.extract(qnet, cfg)
        calib = data.train.loader(batch_size, shuffle=True, seed=seed, resolution=cfg.resolution)
        qc.calibrate(sub, calib, max_batches=calib_batches)
        sub.eval()
        correct = seen = 0
        for xb, yb in evalset.loader(256, resolution=cfg.resolution):
            correct += int((sub(xb).argmax(1) == yb).sum())
            seen += len(yb)
        acc = correct / max(seen, 1)
        logger.debug("evaluate_subnets: %s -> %.4f", cfg, acc)
        out.append(acc)
    return out
