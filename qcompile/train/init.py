"""Supernet initialisation for training: zero-init of the last BatchNorm scale in residual blocks.

Goyal et al. 2017 ("Accurate, Large Minibatch SGD", Sec. 5.1) and BigNAS (Yu et al. 2020, Sec. 3.1
"zero-initialise the last BN gamma of each residual block") start every residual block as the
identity, so a deep weight-sharing supernet trains like a shallow one at first. Without it the
digits supernet (20+ MBConv blocks at 32x32) needs several times more steps to leave chance
(measured in docs/training.md, "Diagnosis").
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


@torch.no_grad()
def zero_init_residual_bn(model: nn.Module) -> int:
    """Set gamma = 0 of the last BN of every residual `ElasticBlock` in `model`; returns how many.

    Call it on the eager supernet (before `qcompile.trace`: the traced graph no longer has blocks).
    """
    from qcompile.nn.blocks import ElasticBlock

    n = 0
    for m in model.modules():
        if isinstance(m, ElasticBlock) and m.residual:
            bn = getattr(m.units[-1], "bn", None)
            if bn is not None:
                bn.weight.zero_()
                n += 1
    logger.debug("zero-initialised the last BN scale of %d residual blocks", n)
    return n
