"""Fixed-point multipliers (gemmlowp style) and the Python-int fixmul vs `qcompile.ops.fixmul`."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from qcompile.errors import LoweringError
from qcompile.ops import fixmul
from qcompile.quant import fixmul_reference, quantize_multiplier


def test_quantize_multiplier_accuracy(rng):
    ms = np.exp2(rng.uniform(-32, 30, size=4000))
    ms = np.concatenate([ms, [2.0**-32, 0.5, 1.0, 1 - 2**-40, 0.1, 1 / 3, 2.0**30 - 1.0]])
    mult, shift = quantize_multiplier(ms)
    assert mult.dtype == np.int64 and mult.shape == ms.shape
    assert np.all((mult >= 2**30) & (mult < 2**31)) and np.all((shift >= 1) & (shift <= 62))
    for m, mm, s in zip(ms.tolist(), mult.tolist(), shift.tolist()):
        rel = abs(Fraction(mm, 2**s) - Fraction(m)) / Fraction(m)  # exact rational error
        assert rel <= Fraction(1, 2**31), (m, mm, s)
    # Scalars give Python ints equal to the array path.
    m0, s0 = quantize_multiplier(float(ms[0]))
    assert isinstance(m0, int) and (m0, s0) == (int(mult[0]), int(shift[0]))
    # Near-1 values that round up to 2^31 are renormalised.
    assert quantize_multiplier(1 - 2**-40) == (2**30, 30)


@pytest.mark.parametrize("bad", [-0.5, 2.0**30, 2.0**31, float("nan"), float("inf")])
def test_quantize_multiplier_rejects(bad):
    with pytest.raises(LoweringError, match="node x: rescaling factor") as e:
        quantize_multiplier(bad, "node x")
    assert e.value.where == "node x"
    with pytest.raises(LoweringError, match=r"node y\[channel 1\]"):
        quantize_multiplier(np.array([0.5, bad]), "node y")


def test_quantize_multiplier_zero_and_tiny_factors():
    # r = 0 is exact as M = 0 (the lowering then refuses a zero multiplier with its own message);
    # below 2^-32 the shift caps at 62 and M loses precision but stays the nearest representable value
    assert quantize_multiplier(0.0) == (0, 62)
    m, s = quantize_multiplier(1e-12)
    assert s == 62 and m == int(Fraction(1e-12) * 2**62 + Fraction(1, 2))


def test_fixmul_reference_matches_ops_fixmul(rng):
    v = rng.integers(-(2**31), 2**31, size=5000, dtype=np.int64)
    mult = rng.integers(0, 2**31, size=5000, dtype=np.int64)
    shift = rng.integers(1, 63, size=5000, dtype=np.int64)
    ours = fixmul_reference(v, mult, shift)
    theirs = fixmul(torch.from_numpy(v), torch.from_numpy(mult), torch.from_numpy(shift)).numpy()
    np.testing.assert_array_equal(ours, theirs)
    # Independent check of the rule floor(v M / 2^s + 1/2) with exact rationals.
    for a, b, c, r in zip(v[:300].tolist(), mult[:300].tolist(), shift[:300].tolist(), ours[:300].tolist()):
        exact = Fraction(a * b, 2**c) + Fraction(1, 2)
        assert r == exact.numerator // exact.denominator


def test_fixmul_reference_ties_and_scalars():
    # v M / 2^s = k + 1/2 exactly: round half up (towards +inf), also for negatives.
    assert fixmul_reference(3, 1, 1) == 2  # 1.5 -> 2
    assert fixmul_reference(-3, 1, 1) == -1  # -1.5 -> -1
    assert fixmul_reference(-5, 1, 2) == -1  # -1.25 -> -1
    np.testing.assert_array_equal(fixmul_reference(np.array([3, -3]), 1, 1), [2, -1])


def test_multiplier_then_fixmul_approximates_real_product(rng):
    ms = np.exp2(rng.uniform(-20, 0, size=200))
    v = rng.integers(-(2**24), 2**24, size=200)
    mult, shift = quantize_multiplier(ms)
    got = fixmul_reference(v, mult, shift)
    want = np.floor(v * ms + 0.5)
    # |v m| < 2^24 and relative error 2^-31: at most one code from the exact product.
    assert np.max(np.abs(got - want)) <= 1
    assert np.mean(got == want) > 0.99
