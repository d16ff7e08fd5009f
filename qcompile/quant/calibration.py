"""Scoped BatchQuant calibration (QFA Sec. 3.4, "BatchQuant calibration during test time").

`with calibration(model): for x in batches: model(x)` puts every activation quantizer in `model`
into calibrating mode (statistics reset, then each forward adds this batch's estimates to a running
mean) and on a clean exit marks those that saw a batch as calibrated. It touches neither
`model.training` nor autograd: wrap the loop in `torch.no_grad()` and set BN modes as needed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from torch import nn

from qcompile.quant.base import ActQuantizer

__all__ = ["activation_quantizers", "calibration"]

logger = logging.getLogger(__name__)


def activation_quantizers(model: nn.Module) -> list[tuple[str, ActQuantizer]]:
    """All activation quantizers of `model` (itself included) with their qualified names."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, ActQuantizer)]


@contextlib.contextmanager
def calibration(model: nn.Module) -> Iterator[list[ActQuantizer]]:
    """Calibrate every activation quantizer of `model` over the forwards run inside the block.

    Yields the quantizers. On an exception inside the block none is marked calibrated.
    Quantizers that saw no batch (e.g. in blocks the active subnet skips) stay uncalibrated.
    """
    named = activation_quantizers(model)
    if not named:
        logger.warning("calibration: %s contains no activation quantizer", type(model).__name__)
    for _, q in named:
        q.start_calibration()
    success = False
    try:
        yield [q for _, q in named]
        success = True
    finally:
        for _, q in named:
            q.finish_calibration(success)
        missed = [name or "<model>" for name, q in named if success and not q.is_calibrated]
        if missed:
            logger.info("calibration: %d quantizer(s) saw no batch: %s", len(missed), ", ".join(missed))
