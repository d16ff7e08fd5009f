"""Learned-scale activation quantizer (LSQ+-style): the "learnable scale" baseline of QFA Sec. 3.3.

One learnable scale `s` and offset `o` per bit-width, `q = clamp(round(x / |s| + o), n, p)`,
`x_hat = (q - o) |s|` (the form of QFA Eq. 5 with the estimated range replaced by parameters, as in
LSQ+, Bhalgat et al. 2020). Both are initialised on the first batch seen at that bit-width from
QFA Eq. 9 (`mu -/+ 3 sigma`), which the QFA paper notes is LSQ+'s initialisation, and both gradients
are scaled by LSQ's `g = 1 / sqrt(N * Qp)` with N the number of activation elements.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from qcompile.errors import ConfigError
from qcompile.quant.base import EPS, ActQuantizer
from qcompile.quant.estimators import mean_std
from qcompile.quant.functional import FLOAT_BITS, fake_quant_affine, grad_scale, range_qparams, zero_code_value

__all__ = ["LearnedScaleQuant"]


class LearnedScaleQuant(ActQuantizer):
    """Asymmetric activation quantizer with a learned scale and offset per bit-width (LSQ+).

    There are no statistics: calibration only initialises choices that were never used, and
    `is_calibrated` means "the active choice is initialised".
    """

    def __init__(self, bits: Iterable[int] | int = (2, 3, 4, 8), eps: float = EPS):
        super().__init__(bits)
        if not eps > 0:
            raise ConfigError("LearnedScaleQuant.eps", eps, "> 0")
        self.eps = float(eps)
        self.scale = nn.ParameterDict({str(b): nn.Parameter(torch.ones(())) for b in self.bits})
        self.zero_point = nn.ParameterDict({str(b): nn.Parameter(torch.zeros(())) for b in self.bits})
        self.register_buffer("initialized", torch.zeros(len(self.bits), dtype=torch.bool))

    @property
    def is_calibrated(self) -> bool:
        if self.active_bits == FLOAT_BITS:
            return bool(self.initialized.any())
        return bool(self.initialized[self.bits.index(self.active_bits)])

    def _reset_statistics(self) -> None:
        """Learned parameters are kept across calibration."""

    def _has_statistics(self) -> bool:
        return bool(self.initialized.any())

    @torch.no_grad()
    def _ensure_init(self, bits: int, x: torch.Tensor) -> None:
        i = self.bits.index(bits)
        if bool(self.initialized[i]):
            return
        n, p = self.qrange(bits)
        delta, z = range_qparams(*mean_std(x), n, p, self.eps)
        self.scale[str(bits)].copy_(delta)
        self.zero_point[str(bits)].copy_(z)
        self.initialized[i] = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize `x` with the learned `(|s|, o)` of `active_bits`; 32 bits is a passthrough."""
        b = self.active_bits
        if b == FLOAT_BITS:
            return x
        self._ensure_init(b, x)
        n, p = self.qrange(b)
        g = 1.0 / math.sqrt(x.numel() * p)
        s = grad_scale(self.scale[str(b)], g).abs().clamp_min(self.eps)
        o = grad_scale(self.zero_point[str(b)], g)
        self.pad_value = zero_code_value(s, o, n, p)
        return fake_quant_affine(x, s, o, n, p)

    def qparams(self, bits: int | None = None) -> tuple[float, float]:
        """`(scale, zero_point) = (|s|, o)` of choice `bits`."""
        b = self._choice(bits, "qparams(bits)")
        if not bool(self.initialized[self.bits.index(b)]):
            raise ConfigError(
                "LearnedScaleQuant.initialized", False, True, f"no batch was seen at {b} bits; calibrate first"
            )
        s = float(self.scale[str(b)].detach().abs().clamp_min(self.eps))
        return s, float(self.zero_point[str(b)].detach())

    def freeze(self, bits: int) -> LearnedScaleQuant:
        """Single-choice copy of the scale, offset and initialisation flag of `bits`."""
        b = self._choice(bits, "freeze(bits)")
        frozen = LearnedScaleQuant((b,), eps=self.eps)
        for name in ("scale", "zero_point"):
            src = getattr(self, name)[str(b)]
            getattr(frozen, name)[str(b)] = nn.Parameter(src.detach().clone(), requires_grad=src.requires_grad)
        frozen = frozen.to(self.initialized.device)
        frozen.initialized[0] = bool(self.initialized[self.bits.index(b)])
        frozen.calibrated.copy_(self.calibrated)
        frozen.active_bits = b
        frozen.train(self.training)
        return frozen
