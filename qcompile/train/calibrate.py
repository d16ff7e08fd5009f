"""Calibration of one extracted subnet: BatchNorm statistics and BatchQuant running estimates.

BN recalibration follows OFA's `set_running_statistics` (used by OQA 3.4 and QFA Sec. 3.4):
reset the running statistics, set `momentum=None` (cumulative average over all batches), forward
the batches with BN in train mode, restore the momentum. BatchQuant estimates are accumulated at
the same time by `qcompile.quant.calibration(model)` ("forwarding a few batches of data and
accumulate a running mean of the estimations", QFA 3.4). Parameters are never changed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

import torch
from torch import nn

from qcompile.errors import ConfigError

logger = logging.getLogger(__name__)


def batchnorm_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """BatchNorm-like modules: `running_mean`, `running_var`, `num_batches_tracked` and `momentum`.

    Covers `torch.nn.BatchNorm*d` and the elastic BN of `qcompile.nn` (which is not a `_BatchNorm`).
    """
    out = []
    for name, m in model.named_modules():
        bufs = dict(m.named_buffers(recurse=False))
        if {"running_mean", "running_var", "num_batches_tracked"} <= bufs.keys() and hasattr(m, "momentum"):
            out.append((name, m))
    return out


def _inputs(batch: object) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise ConfigError("calibrate batches", type(batch).__name__, "tensors or (images, labels) tuples")


@torch.no_grad()
def calibrate(
    model: nn.Module,
    batches: Iterable[object],
    max_batches: int | None = None,
    quantizers: bool = True,
    bn: bool = True,
) -> nn.Module:
    """Recompute BN statistics and (with `quantizers`) BatchQuant running estimates of `model`.

    `bn=False` keeps the BN running statistics (a trained model's, e.g. from `qc.quantize_model`) and runs
    BN in eval mode: post-training calibration of the activation quantizers only.

    `batches` yields image tensors or `(images, labels)` at the subnet's resolution. Returns `model`
    (for chaining); the number of images used is in `model.calibrated_images`. The model is left
    in eval mode; on an exception the BN momenta are
    restored and the quantizers stay uncalibrated.
    """
    bns = batchnorm_modules(model) if bn else []
    momenta = [m.momentum for _, m in bns]
    for _, m in bns:
        m.running_mean.zero_()
        m.running_var.fill_(1.0)
        m.num_batches_tracked.zero_()
        m.momentum = None
    # Only BN runs in train mode: dropout and anything else stay deterministic.
    model.eval()
    for _, m in bns:
        m.train()
    seen = 0
    try:
        with contextlib.ExitStack() as stack:
            if quantizers:
                from qcompile.quant import calibration

                stack.enter_context(calibration(model))
            for i, batch in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                x = _inputs(batch)
                model(x)
                seen += int(x.shape[0])
            if seen == 0:
                raise ConfigError("calibrate batches", 0, ">= 1 batch", "pass a non-empty iterable of images")
    finally:
        for (_, m), mom in zip(bns, momenta):
            m.momentum = mom
        model.eval()
    logger.debug("calibrate: %d images, %d BN modules", seen, len(bns))
    model.calibrated_images = seen
    return model
