"""BatchQuant: asymmetric activation quantizer with batch range estimates and learned residuals.

QFA (Bai et al., "BatchQuant") Sec. 3.4, Eq. 5:
    delta = (x_max - x_min) / (p - n),   z = clamp(round(-x_min / delta), n, p)   (round half up)
    q     = clamp(round(x / (delta gamma) + z + beta), n, p)       (round half up)
    x_hat = (q - z - beta) delta gamma
with `[n, p] = [0, 2^b - 1]`, `(x_min, x_max)` from one of the estimators of Eq. 7-9, and one
residual pair (gamma, beta) per bit-width. Calibration ("BatchQuant calibration during test time")
replaces the batch estimates by the running mean of per-batch estimates over a few batches.

The estimates are detached (no gradient flows into x_min / x_max): the paper treats them as
statistics and leaves learning to the residuals ("we learn a multiplicative residual gamma on delta
and an additive residual beta on z"), and apple/ml-batchquant's batch observer computes them on
`x.detach()`. It also keeps the training graph identical to inference, where they are constants.

QFA writes the zero point with the bracket of Eq. 1, which "indicates the round function"; earlier
versions of this quantizer floored it instead. The mode is state (buffer `zero_round`), so a checkpoint
written by them keeps its floor, and its numerics, when loaded.

Flavour (`qcompile.quant.flavour`): in the ``"qdq"`` flavour the zero point `z + beta` is made an integer
by the same zero-point rule (straight-through, so beta keeps learning) and the forward is ONNX's
QuantizeLinear/DequantizeLinear (float32, ties to even); the flavour is a buffer (`qdq`), so checkpoints
keep it, and a state dict written before flavours existed loads as ``"fixed-point"``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

from qcompile.errors import ConfigError
from qcompile.quant.base import EPS, ActQuantizer
from qcompile.quant.estimators import get_estimator
from qcompile.quant.flavour import DEFAULT_FLAVOUR, check_flavour, fake_quant_qdq
from qcompile.quant.functional import (
    FLOAT_BITS,
    ZERO_ROUNDING,
    fake_quant_affine,
    range_qparams,
    zero_code_value,
)

__all__ = ["BatchQuant"]

logger = logging.getLogger(__name__)


class BatchQuant(ActQuantizer):
    """Elastic BatchQuant activation quantizer (QFA Eq. 5 with estimators Eq. 7, 8 or 9).

    Args:
        bits: bit-width choices; one `(gamma, beta)` pair per choice.
        estimator: `"channel_mean"` (Eq. 8, default, the stable one in QFA Sec. 5), `"minmax"`
            (Eq. 7) or `"mean_std"` (Eq. 9).
        eps: floor on delta, for constant inputs.
        zero_rounding: `"round"` (QFA Eq. 1/5, half up; the default) or `"floor"` (quantizers trained before,
            which a state dict without `zero_round` restores).
        flavour: `"fixed-point"` (Eq. 5 as written, fractional zero point) or `"qdq"` (integer zero point,
            ONNX QuantizeLinear arithmetic); see `qcompile.quant.flavour`.

    Modes: training uses this batch's estimates; inside `calibration(model)` each forward also adds
    them to a running mean; in eval the running estimates are used once calibrated (before that, the
    batch estimates, and `is_calibrated` is False so lowering can refuse).
    """

    def __init__(
        self,
        bits: Iterable[int] | int = (2, 3, 4, 8),
        estimator: str = "channel_mean",
        eps: float = EPS,
        zero_rounding: str = "round",
        flavour: str = DEFAULT_FLAVOUR,
    ):
        super().__init__(bits)
        self._estimate = get_estimator(estimator)
        self.estimator = estimator
        if not eps > 0:
            raise ConfigError("BatchQuant.eps", eps, "> 0")
        self.eps = float(eps)
        self.gamma = nn.ParameterDict({str(b): nn.Parameter(torch.ones(())) for b in self.bits})
        self.beta = nn.ParameterDict({str(b): nn.Parameter(torch.zeros(())) for b in self.bits})
        self.register_buffer("running_min", torch.zeros(()))
        self.register_buffer("running_max", torch.zeros(()))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        if zero_rounding not in ZERO_ROUNDING:
            raise ConfigError("BatchQuant.zero_rounding", zero_rounding, list(ZERO_ROUNDING))
        self.register_buffer("zero_round", torch.tensor(zero_rounding == "round"))
        self.register_buffer("qdq", torch.tensor(check_flavour(flavour, "BatchQuant.flavour") == "qdq"))
        self._warned_uncalibrated = False

    @property
    def zero_rounding(self) -> str:
        """How the zero point is made an integer: "round" (QFA Eq. 1/5) or "floor" (older checkpoints)."""
        return "round" if bool(self.zero_round) else "floor"

    @property
    def flavour(self) -> str:
        """`"qdq"` (integer zero point, QuantizeLinear arithmetic) or `"fixed-point"` (QFA Eq. 5 as written)."""
        return "qdq" if bool(self.qdq) else "fixed-point"

    @flavour.setter
    def flavour(self, flavour: str) -> None:
        self.qdq.fill_(check_flavour(flavour, "BatchQuant.flavour") == "qdq")

    def _zero_point(self, z: torch.Tensor, beta: torch.Tensor, n: int, p: int) -> torch.Tensor:
        """`z + beta` (fixed-point), or in the qdq flavour made an integer by the zero-point rule (STE)."""
        zp = z + beta
        if not bool(self.qdq):
            return zp
        t = torch.floor(zp + 0.5) if self.zero_rounding == "round" else torch.floor(zp)
        return torch.clamp(zp + (t - zp).detach(), n, p)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a state written before the rounding mode was recorded floored the zero point: keep its numerics
        state_dict.setdefault(prefix + "zero_round", torch.tensor(False))
        # and one written before flavours existed is the fixed-point flavour
        state_dict.setdefault(prefix + "qdq", torch.tensor(False))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, estimator={self.estimator!r}, zero_rounding={self.zero_rounding!r}, "
                f"flavour={self.flavour!r}")

    # -- parameters ----------------------------------------------------------------------------
    def residuals(self, bits: int | None = None) -> tuple[nn.Parameter, nn.Parameter]:
        """The learned residuals `(gamma, beta)` of choice `bits` (default `active_bits`)."""
        b = self._choice(bits, "residuals(bits)")
        return self.gamma[str(b)], self.beta[str(b)]

    def batch_estimates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(x_min, x_max)` of this batch by the configured estimator (detached)."""
        return self._estimate(x)

    # -- statistics ----------------------------------------------------------------------------
    def _reset_statistics(self) -> None:
        self.running_min.zero_()
        self.running_max.zero_()
        self.num_batches_tracked.zero_()

    def _has_statistics(self) -> bool:
        return int(self.num_batches_tracked) > 0

    @torch.no_grad()
    def _accumulate(self, x_min: torch.Tensor, x_max: torch.Tensor) -> None:
        """Cumulative (equal-weight) running mean of the per-batch estimates."""
        self.num_batches_tracked += 1
        k = float(self.num_batches_tracked)
        self.running_min += (x_min.to(self.running_min) - self.running_min) / k
        self.running_max += (x_max.to(self.running_max) - self.running_max) / k

    def _estimates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.calibrating:
            x_min, x_max = self.batch_estimates(x)
            self._accumulate(x_min, x_max)
            return x_min, x_max
        if self.training:
            return self.batch_estimates(x)
        if self.is_calibrated:
            return self.running_min, self.running_max
        if not self._warned_uncalibrated:
            logger.warning("BatchQuant in eval mode without calibration: using batch estimates")
            self._warned_uncalibrated = True
        return self.batch_estimates(x)

    # -- quantization --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize `x` at `active_bits` (QFA Eq. 5); 32 bits is a passthrough."""
        b = self.active_bits
        if b == FLOAT_BITS:
            if self.calibrating:
                self._accumulate(*self.batch_estimates(x))
            return x
        x_min, x_max = self._estimates(x)
        n, p = self.qrange(b)
        delta, z = range_qparams(x_min, x_max, n, p, self.eps, self.zero_rounding)
        gamma, beta = self.gamma[str(b)], self.beta[str(b)]
        zp = self._zero_point(z, beta, n, p)
        self.pad_value = zero_code_value(delta * gamma, zp, n, p)
        #: the scale of this forward (batch estimates in training): the qdq bias grid's `x_scale` (BiasGrid)
        self.last_scale = (delta * gamma).detach()
        if bool(self.qdq):
            return fake_quant_qdq(x, delta * gamma, zp, n, p)
        return fake_quant_affine(x, delta * gamma, zp, n, p)

    def qparams(self, bits: int | None = None) -> tuple[float, float]:
        """`(scale, zero_point) = (delta gamma, z + beta)` from the running estimates (Eq. 5, 6); in the qdq
        flavour the zero point is the integer of `_zero_point` and the scale the float32 `delta gamma`."""
        b = self._choice(bits, "qparams(bits)")
        if not self.is_calibrated:
            raise ConfigError(
                "BatchQuant.is_calibrated",
                False,
                True,
                "run `with qcompile.quant.calibration(model):` over a few batches before lowering",
            )
        n, p = self.qrange(b)
        delta, z = range_qparams(self.running_min, self.running_max, n, p, self.eps, self.zero_rounding)
        gamma, beta = self.gamma[str(b)].detach(), self.beta[str(b)].detach()
        return float(delta * gamma), float(self._zero_point(z, beta, n, p))

    def freeze(self, bits: int) -> BatchQuant:
        """Single-choice copy: residuals of `bits`, running estimates and calibration state."""
        b = self._choice(bits, "freeze(bits)")
        frozen = BatchQuant((b,), estimator=self.estimator, eps=self.eps, zero_rounding=self.zero_rounding,
                            flavour=self.flavour)
        gamma, beta = self.residuals(b)
        frozen.gamma[str(b)] = nn.Parameter(gamma.detach().clone(), requires_grad=gamma.requires_grad)
        frozen.beta[str(b)] = nn.Parameter(beta.detach().clone(), requires_grad=beta.requires_grad)
        frozen = frozen.to(self.running_min.device)
        for name in ("running_min", "running_max", "num_batches_tracked", "calibrated"):
            getattr(frozen, name).copy_(getattr(self, name))
        frozen.active_bits = b
        frozen.train(self.training)
        return frozen
