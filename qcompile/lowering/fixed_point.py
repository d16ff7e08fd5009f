"""The fixed-point helpers of the lowering passes; they live in `qcompile.quant.fixed_point` (one copy)."""

from qcompile.quant.fixed_point import (
    INT64_SAFE,
    MAX_MULTIPLIER,
    MAX_SHIFT,
    FixedPointAffine,
    affine_fixed_point,
    quantize_multiplier,
    quantize_multipliers,
    round_half_up,
)

__all__ = [
    "MAX_MULTIPLIER",
    "MAX_SHIFT",
    "INT64_SAFE",
    "FixedPointAffine",
    "affine_fixed_point",
    "quantize_multiplier",
    "quantize_multipliers",
    "round_half_up",
]
