"""Common interface of the elastic activation quantizers (BatchQuant and its ablation baselines).

Every activation quantizer has bit-width `choices`, an `active_bits` (32 = passthrough), a scoped
calibration mode driven by `qcompile.quant.calibration`, `is_calibrated`, `qparams(bits)` for integer
lowering and `freeze(bits)` for static subnets, so they are drop-in choices of an `act_quant=` option.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable

import torch
from torch import nn

from qcompile.errors import ConfigError
from qcompile.quant.functional import FLOAT_BITS, check_bits, check_choice, unsigned_range

__all__ = ["ActQuantizer"]

#: Floor on the scale: float32 machine epsilon, as PyTorch's observers use.
EPS = float(torch.finfo(torch.float32).eps)


class ActQuantizer(nn.Module, abc.ABC):
    """Base class: unsigned activation codes `[0, 2^b - 1]` (QFA Sec. 3.1) with elastic bits."""

    def __init__(self, bits: Iterable[int] | int):
        super().__init__()
        self.bits = check_bits(f"{type(self).__name__}.bits", bits)
        self._active_bits = max(self.bits)
        #: True inside `calibration(model)`: forwards accumulate statistics.
        self.calibrating = False
        # A buffer so the calibration state travels with the state_dict.
        self.register_buffer("calibrated", torch.tensor(False))
        #: value a padded conv after this quantizer pads with (see functional.zero_code_value); set by forward
        self.pad_value = 0.0

    @property
    def active_bits(self) -> int:
        """Bit-width used by `forward`; 32 means float passthrough."""
        return self._active_bits

    @active_bits.setter
    def active_bits(self, bits: int) -> None:
        self._active_bits = check_choice(f"{type(self).__name__}.active_bits", bits, self.bits, True)

    def _choice(self, bits: int | None, field: str) -> int:
        """Resolve `bits` (default `active_bits`) to a quantized choice; 32 has no qparams."""
        b = self.active_bits if bits is None else bits
        name = f"{type(self).__name__}.{field}"
        if b == FLOAT_BITS:
            raise ConfigError(name, b, self.bits, "a 32-bit activation stays float")
        return check_choice(name, b, self.bits)

    @staticmethod
    def qrange(bits: int) -> tuple[int, int]:
        """Unsigned code range `[n, p]` of `bits`."""
        return unsigned_range(bits)

    @property
    def is_calibrated(self) -> bool:
        """Whether static quantization parameters exist (integer lowering refuses otherwise)."""
        return bool(self.calibrated)

    def start_calibration(self) -> None:
        """Enter calibration: forget statistics, then accumulate them on each forward."""
        self._reset_statistics()
        self.calibrated.fill_(False)
        self.calibrating = True

    def finish_calibration(self, success: bool = True) -> None:
        """Leave calibration; mark calibrated when it succeeded and saw at least one batch."""
        self.calibrating = False
        if success and self._has_statistics():
            self.calibrated.fill_(True)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, active_bits={self.active_bits}, calibrated={self.is_calibrated}"

    @abc.abstractmethod
    def _reset_statistics(self) -> None:
        """Drop accumulated statistics (called when calibration starts)."""

    @abc.abstractmethod
    def _has_statistics(self) -> bool:
        """Whether calibration gathered anything."""

    @abc.abstractmethod
    def qparams(self, bits: int | None = None) -> tuple[float, float]:
        """`(scale, zero_point)` of choice `bits` for integer lowering; `ConfigError` if uncalibrated."""

    @abc.abstractmethod
    def freeze(self, bits: int) -> ActQuantizer:
        """A new quantizer with the single choice `(bits,)` and the same state."""
