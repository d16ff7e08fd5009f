"""Multiplier / shift selection against exact rational arithmetic (docs/integer_semantics.md fixed-point rule)."""

from fractions import Fraction

import numpy as np
import pytest

from qcompile.errors import LoweringError
from qcompile.quant.fixed_point import INT64_SAFE, affine_fixed_point, quantize_multiplier, quantize_multipliers


@pytest.mark.parametrize("r", [1e-9, 3.7e-5, 0.0123, 0.5, 0.999999, 1.0, 3.14159, 1234.5, 2.0**29])
def test_quantize_multiplier_precision(r):
    m, s = quantize_multiplier(r)
    assert 0 <= m < 2**31 and 1 <= s <= 62
    assert m >= 2**30 or s == 62  # normalised unless the shift is capped
    assert abs(Fraction(m, 2**s) - Fraction(r)) <= Fraction(r) * Fraction(1, 2**31)


def test_quantize_multiplier_refuses_bad_factors():
    for bad in (-1.0, float("nan"), float("inf"), 2.0**31):
        with pytest.raises(LoweringError):
            quantize_multiplier(bad, "node x")


def test_quantize_multipliers_per_channel():
    r = np.array([0.25, 0.01, 7.0])
    m, s = quantize_multipliers(r)
    np.testing.assert_allclose(m / 2.0**s, r, rtol=2**-30)


@pytest.mark.parametrize("seed", range(5))
def test_affine_fixed_point_matches_exact_floor(seed):
    rng = np.random.default_rng(seed)
    reals = list(rng.uniform(1e-3, 2.0, size=2))
    const = float(rng.uniform(-300, 300))
    fp = affine_fixed_point(reals, const, [255, 255])
    assert fp.max_intermediate([255, 255]) < INT64_SAFE
    a = rng.integers(0, 256, 5000)
    b = rng.integers(0, 256, 5000)
    got = (a * fp.multipliers[0] + b * fp.multipliers[1] + fp.offset) >> fp.shift
    exact = np.floor(a * reals[0] + b * reals[1] + const)
    # differs only within the documented error (sum of maxima + 1) / 2^(s+1) of an integer boundary
    tol = (255 + 255 + 1) / 2 ** (fp.shift + 1)
    v = a * reals[0] + b * reals[1] + const
    near = np.abs(v - np.round(v)) <= tol + 1e-9
    assert np.all((got == exact) | near)
    assert np.mean(got == exact) > 0.999


def test_affine_fixed_point_keeps_int64_safe_for_tiny_factors():
    fp = affine_fixed_point([2.0**-40], 200.0, [255])
    assert fp.max_intermediate([255]) < INT64_SAFE
    assert fp.shift < 62  # the offset, not the multiplier, limited the shift
