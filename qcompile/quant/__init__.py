"""Elastic quantizers: LSQ weights, BatchQuant activations (+ ablation baselines), fixed point.

Papers: QFA/BatchQuant (Bai et al.) Eq. 2, 5-9; OQA (Shen et al.) Eq. 1; LSQ (Esser et al.).
"""

from qcompile.quant.base import ActQuantizer
from qcompile.quant.batchquant import BatchQuant
from qcompile.quant.calibration import activation_quantizers, calibration
from qcompile.quant.ema import EMAQuant
from qcompile.quant.estimators import ESTIMATORS, channel_mean, mean_std, minmax
from qcompile.quant.factory import ACT_QUANTIZERS, make_act_quant
from qcompile.quant.fixed_point import fixmul_reference, quantize_multiplier
from qcompile.quant.flavour import DEFAULT_FLAVOUR, FLAVOURS, flavour_of, set_flavour
from qcompile.quant.functional import FLOAT_BITS, SUPPORTED_BITS
from qcompile.quant.learned import LearnedScaleQuant
from qcompile.quant.lsq import LSQ

__all__ = [
    "ACT_QUANTIZERS",
    "DEFAULT_FLAVOUR",
    "FLAVOURS",
    "ESTIMATORS",
    "FLOAT_BITS",
    "LSQ",
    "SUPPORTED_BITS",
    "ActQuantizer",
    "BatchQuant",
    "EMAQuant",
    "LearnedScaleQuant",
    "activation_quantizers",
    "calibration",
    "channel_mean",
    "fixmul_reference",
    "flavour_of",
    "make_act_quant",
    "mean_std",
    "minmax",
    "quantize_multiplier",
    "set_flavour",
]
