"""Short QAT finetune of a `qc.quantize_model` result through the supernet `Trainer`.

A fixed network is a one-point search space: `OnePointSpace` answers `largest`, `smallest`
and `sample` with the model's own `SubnetConfig`, the subnet selector is a no-op, and one phase with
the "largest" sampler and no teacher is plain quantization-aware training (LSQ steps and BatchQuant
residuals learn, QFA Eq. 2 and 5; the straight-through estimator of OQA Eq. 1). BN trains as usual; the
activation quantizers are recalibrated at the end (`calibrate(..., bn=False)`).
"""

from __future__ import annotations

import logging
from typing import Any

from torch import fx

from qcompile.config import SubnetConfig
from qcompile.errors import ConfigError

__all__ = ["OnePointSpace", "finetune"]

log = logging.getLogger(__name__)


class OnePointSpace:
    """The search space of one fixed network: every query returns `config`."""

    name = "fixed"

    def __init__(self, config: SubnetConfig):
        self.config = config

    def largest(self, bits: int | None = None) -> SubnetConfig:
        return self.config

    def smallest(self, bits: int | None = None) -> SubnetConfig:
        return self.config

    def sample(self, seed: int = 0, bits: Any = None) -> SubnetConfig:
        return self.config

    def validate(self, cfg: SubnetConfig) -> SubnetConfig:
        if cfg != self.config:
            raise ConfigError("config", cfg.to_dict(), self.config.to_dict(), "a fixed model has one configuration")
        return cfg


def finetune(
    gm: fx.GraphModule,
    data: Any,
    epochs: int = 1,
    lr: float = 0.005,
    batch_size: int = 64,
    seed: int = 0,
    calib_batches: int = 8,
) -> fx.GraphModule:
    """QAT-finetune `gm` (from `quantize_model`, calibrated or not) on `data` for `epochs`; returns `gm` in eval.

    `data` is a `DatasetSplits` or an `ArrayDataset` at the model's resolution (`qcompile.data.load_dataset`).
    The learning rate follows the Trainer's warm-up + cosine schedule from `lr` (small: the model is trained).
    """
    from qcompile.train import TrainConfig, Trainer
    from qcompile.train.calibrate import calibrate
    from qcompile.train.config import Phase

    cfg = getattr(gm, "subnet_config", None)
    if not isinstance(cfg, SubnetConfig) or getattr(gm, "qc_layers", None) is None:
        raise ConfigError("finetune model", type(gm).__name__, "a qc.quantize_model result")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError("finetune epochs", epochs, ">= 1")
    tcfg = TrainConfig(lr=lr, batch_size=batch_size, seed=seed, evaluate=False, progress=False,
                       warmup_epochs=0.0, label_smoothing=0.0)
    phase = Phase("qat", epochs, bits=None, sampler="largest", teacher="none")
    trainer = Trainer(gm, OnePointSpace(cfg), data, tcfg, [phase], activate=lambda _model, _cfg: None)
    trainer.fit()
    train = getattr(data, "train", data)
    calibrate(gm, train.loader(batch_size, shuffle=True, seed=seed + 1), max_batches=calib_batches, bn=False)
    log.info("finetune: %d epochs, final loss %.4f", epochs, trainer.history[-1]["loss"] if trainer.history else 0)
    return gm.eval()
