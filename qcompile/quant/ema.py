"""EMA min/max activation quantizer: the conventional QAT baseline of QFA's ablation.

QFA Sec. 3.1 / 3.3: the range `(x_min, x_max)` is an exponential moving average of past batch
extremes (Eq. 7 per batch), turned into a scale and zero point by Eq. 1 (= Eq. 5 with gamma = 1,
beta = 0, no residuals). QFA shows this estimator lags behind the shifting ranges of a supernet;
it is here so that the ablation can be reproduced with the same interface as `BatchQuant`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from qcompile.errors import ConfigError
from qcompile.quant.base import EPS, ActQuantizer
from qcompile.quant.estimators import minmax
from qcompile.quant.functional import FLOAT_BITS, fake_quant_affine, range_qparams, zero_code_value

__all__ = ["EMAQuant"]


class EMAQuant(ActQuantizer):
    """Asymmetric quantizer over an EMA of batch min/max (QFA Eq. 1 with an EMA range).

    Args:
        bits: bit-width choices (no per-choice parameters: the range is shared).
        momentum: EMA weight of the new batch, `ema <- (1 - m) ema + m batch`; the first batch sets it.
        eps: floor on the scale.

    Training updates the EMA and quantizes with it. Eval uses the EMA (batch range if none yet).
    Calibration resets the range and replaces it by the plain mean of the calibration batches'
    min/max (the EMA's fixed point, without its lag). `is_calibrated` is True once a range exists,
    from training or calibration, since the EMA range is itself a static parameter.
    """

    def __init__(self, bits: Iterable[int] | int = (2, 3, 4, 8), momentum: float = 0.1, eps: float = EPS):
        super().__init__(bits)
        if not 0.0 < momentum <= 1.0:
            raise ConfigError("EMAQuant.momentum", momentum, "(0, 1]")
        if not eps > 0:
            raise ConfigError("EMAQuant.eps", eps, "> 0")
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.register_buffer("running_min", torch.zeros(()))
        self.register_buffer("running_max", torch.zeros(()))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, momentum={self.momentum}"

    @property
    def is_calibrated(self) -> bool:
        return bool(self.calibrated) or (not self.calibrating and self._has_statistics())

    def _reset_statistics(self) -> None:
        self.running_min.zero_()
        self.running_max.zero_()
        self.num_batches_tracked.zero_()

    def _has_statistics(self) -> bool:
        return int(self.num_batches_tracked) > 0

    @torch.no_grad()
    def _update(self, x_min: torch.Tensor, x_max: torch.Tensor) -> None:
        first = int(self.num_batches_tracked) == 0
        self.num_batches_tracked += 1
        # Calibration averages with equal weights; training uses the EMA momentum.
        w = 1.0 if first else (1.0 / float(self.num_batches_tracked) if self.calibrating else self.momentum)
        self.running_min += w * (x_min.to(self.running_min) - self.running_min)
        self.running_max += w * (x_max.to(self.running_max) - self.running_max)

    def _range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.calibrating:
            x_min, x_max = minmax(x)
            self._update(x_min, x_max)
            return x_min, x_max
        if self.training:
            self._update(*minmax(x))
            return self.running_min.clone(), self.running_max.clone()
        if self._has_statistics():
            return self.running_min, self.running_max
        return minmax(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize `x` at `active_bits` with the EMA range; 32 bits is a passthrough."""
        b = self.active_bits
        if b == FLOAT_BITS:
            if self.calibrating or self.training:
                self._range(x)
            return x
        x_min, x_max = self._range(x)
        n, p = self.qrange(b)
        delta, z = range_qparams(x_min, x_max, n, p, self.eps)
        self.pad_value = zero_code_value(delta, z, n, p)
        return fake_quant_affine(x, delta, z, n, p)

    def qparams(self, bits: int | None = None) -> tuple[float, float]:
        """`(scale, zero_point) = (delta, z)` from the EMA / calibrated range (Eq. 1)."""
        b = self._choice(bits, "qparams(bits)")
        if not self.is_calibrated:
            raise ConfigError(
                "EMAQuant.is_calibrated", False, True, "train or run `calibration(model)` before lowering"
            )
        n, p = self.qrange(b)
        delta, z = range_qparams(self.running_min, self.running_max, n, p, self.eps)
        return float(delta), float(z)

    def freeze(self, bits: int) -> EMAQuant:
        """Single-choice copy with the same range and calibration state."""
        b = self._choice(bits, "freeze(bits)")
        frozen = EMAQuant((b,), momentum=self.momentum, eps=self.eps).to(self.running_min.device)
        for name in ("running_min", "running_max", "num_batches_tracked", "calibrated"):
            getattr(frozen, name).copy_(getattr(self, name))
        frozen.active_bits = b
        frozen.train(self.training)
        return frozen
