"""Factory for the `act_quant=` option: BatchQuant (QFA Eq. 5) and its ablation baselines."""

from __future__ import annotations

import inspect
from collections.abc import Iterable

from qcompile.errors import ConfigError
from qcompile.quant.base import ActQuantizer
from qcompile.quant.batchquant import BatchQuant
from qcompile.quant.ema import EMAQuant
from qcompile.quant.learned import LearnedScaleQuant

__all__ = ["ACT_QUANTIZERS", "make_act_quant"]

ACT_QUANTIZERS: dict[str, type[ActQuantizer]] = {
    "batchquant": BatchQuant,
    "ema": EMAQuant,
    "learned": LearnedScaleQuant,
}


def make_act_quant(kind: str, bits: Iterable[int] | int = (2, 3, 4, 8), **kw: object) -> ActQuantizer:
    """Build the activation quantizer `kind` with bit-width choices `bits` and its options `kw`.

    `kind` in {"batchquant", "ema", "learned"}; e.g. `make_act_quant("batchquant", (2, 3, 4),
    estimator="minmax")`, `make_act_quant("ema", 8, momentum=0.01)`. Unknown kinds, options or
    bit-widths raise `ConfigError`.
    """
    if kind not in ACT_QUANTIZERS:
        raise ConfigError("act_quant", kind, tuple(ACT_QUANTIZERS))
    cls = ACT_QUANTIZERS[kind]
    options = tuple(p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "bits"))
    for key in kw:
        if key not in options:
            raise ConfigError(f"act_quant={kind!r} option", key, options)
    return cls(bits, **kw)
