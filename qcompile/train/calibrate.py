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


def _inputs(batch: object, i: int = 0, expect: tuple[int | None, int | None] = (None, None)) -> torch.Tensor:
    """The image tensor of batch `i`, checked: floating point, NCHW, finite, of the subnet's channels and
    resolution (`expect`, None where unknown). ConfigError naming the batch otherwise."""
    if isinstance(batch, torch.Tensor):
        x = batch
    elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        x = batch[0]
    else:
        raise ConfigError(f"calibrate batches[{i}]", type(batch).__name__, "tensors or (images, labels) tuples")
    if not x.is_floating_point():
        raise ConfigError(f"calibrate batches[{i}].dtype", str(x.dtype), "a floating-point image tensor",
                          "convert with x.float() / 255")
    channels, res = expect
    if x.dim() < 1 or x.shape[0] < 1 or (expect != (None, None) and x.dim() != 4):
        raise ConfigError(f"calibrate batches[{i}].shape", tuple(x.shape), "N x C x H x W with N >= 1")
    if channels is not None and x.shape[1] != channels:
        raise ConfigError(f"calibrate batches[{i}].shape", tuple(x.shape), f"{channels} channels")
    if res is not None and tuple(x.shape[2:]) != (res, res):
        raise ConfigError(f"calibrate batches[{i}].shape", tuple(x.shape), f"H = W = {res} (the subnet's resolution)")
    if not bool(torch.isfinite(x).all()):
        raise ConfigError(f"calibrate batches[{i}]", "non-finite values (NaN or inf)", "finite images")
    return x


def _expected_input(model: nn.Module) -> tuple[int | None, int | None]:
    cfg = getattr(model, "subnet_config", None)
    if cfg is None:  # not one of our subnets (e.g. qcompile.quantize_model): shapes are the model's business
        return None, None
    res = getattr(cfg, "resolution", None)
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return (conv.in_channels if conv is not None else None), (res if isinstance(res, int) else None)


def _snapshot(model: nn.Module) -> list:
    """Everything calibration may change: buffers (cloned), parameters and plain attributes of every module."""
    snap = []
    for m in model.modules():
        attrs = {k: v for k, v in m.__dict__.items() if k not in ("_parameters", "_buffers", "_modules")}
        bufs = {k: (None if b is None else b.detach().clone()) for k, b in m._buffers.items()}
        snap.append((m, attrs, bufs, dict(m._parameters)))
    return snap


def _restore(snap: list) -> None:
    for m, attrs, bufs, params in snap:
        for k in [k for k in m.__dict__ if k not in ("_parameters", "_buffers", "_modules") and k not in attrs]:
            del m.__dict__[k]
        m.__dict__.update(attrs)
        m._buffers.clear()
        m._buffers.update(bufs)
        m._parameters.clear()
        m._parameters.update(params)


#: images of the first calibration batch kept in `model.meta` (export_onnx measures QDQ agreement on them)
CALIBRATION_SAMPLE = 64


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
    in eval mode. A failing call (bad batch, empty iterable, Ctrl-C) raises with the model exactly as it was
    before the call: statistics, quantizer estimates and flags are restored.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError("subnet", type(model).__name__, "an extracted subnet (qcompile.extract)")
    if batches is None or isinstance(batches, (str, bytes, torch.Tensor)) or not hasattr(batches, "__iter__"):
        raise ConfigError("calibrate batches", type(batches).__name__,
                          "an iterable of image tensors or (images, labels) tuples (a DataLoader, a list)")
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise ConfigError("max_batches", max_batches, "a positive integer or None")
    expect = _expected_input(model)
    snap = _snapshot(model)  # a failing call leaves the model as it was
    try:
        return _calibrate(model, batches, max_batches, quantizers, bn, expect)
    except BaseException:
        _restore(snap)
        raise


def _calibrate(model: nn.Module, batches: Iterable[object], max_batches: int | None, quantizers: bool, bn: bool,
               expect: tuple[int | None, int | None]) -> nn.Module:
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
    seen, sample = 0, None
    try:
        with contextlib.ExitStack() as stack:
            if quantizers:
                from qcompile.quant import calibration

                stack.enter_context(calibration(model))
            for i, batch in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                x = _inputs(batch, i, expect)
                if sample is None:
                    sample = x.detach()[:CALIBRATION_SAMPLE].clone()
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
    meta = getattr(model, "meta", None)
    if isinstance(meta, dict):  # a few calibration images: export_onnx measures a QDQ export's agreement on them
        meta["calibration_sample"] = sample
    return model
