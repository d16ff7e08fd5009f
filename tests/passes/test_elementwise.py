"""Lookup tables and clamp codes against NumPy formulas of the activations and of BatchQuant Eq. 5."""

import math

import numpy as np
import pytest
import torch

from qcompile.passes.elementwise import build_lut, clamp_interval, code_of


def _np_quant(y, scale, zp, qmax):
    y = y.astype(np.float32)
    v = np.clip(y / np.float32(scale) + np.float32(zp), 0, qmax)
    return np.floor(v + np.float32(0.5))


def _np_hswish(x):
    return x * np.clip(x + 3, 0, 6) / 6


def _np_silu(x):
    return x / (1 + np.exp(-x))


def _np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _np_hsigmoid(x):
    return np.clip(x + 3, 0, 6) / 6


@pytest.mark.parametrize("name,fn", [("hardswish", _np_hswish), ("silu", _np_silu), ("sigmoid", _np_sigmoid),
                                     ("hardsigmoid", _np_hsigmoid)])
@pytest.mark.parametrize("out_bits", [2, 4, 8])
def test_lut_matches_numpy(name, fn, out_bits):
    s_in, zp_in, s_out, zp_out = 0.05, 130.3, 0.031, 9.7
    table = build_lut([name], s_in, zp_in, s_out, zp_out, out_bits).numpy().astype(np.int64)
    x = (np.arange(256, dtype=np.float64) - zp_in) * s_in
    want = _np_quant(fn(x), s_out, zp_out, 2**out_bits - 1)
    assert table.shape == (256,)
    # float32 (table) vs float64 (NumPy activation) may disagree only at exact rounding ties
    assert np.abs(table - want).max() <= 1
    assert np.mean(table == want) >= 0.99
    assert table.max() <= 2**out_bits - 1


def test_lut_chain_applies_in_order():
    t = build_lut(["relu", "hardswish"], 0.1, 100.0, 0.05, 3.0, 8).numpy()
    x = (np.arange(256) - 100.0) * 0.1
    want = _np_quant(_np_hswish(np.maximum(x, 0)), 0.05, 3.0, 255)
    assert np.array_equal(t, want)


def test_clamp_interval_and_codes():
    assert clamp_interval(["relu"]) == (0.0, math.inf)
    assert clamp_interval(["relu", "relu6"]) == (0.0, 6.0)
    assert clamp_interval(["hardswish"]) is None
    assert code_of(0.0, 0.1, 3.4, 255) == math.floor(3.4 + 0.5)
    assert code_of(6.0, 0.1, 3.4, 255) == 63
    assert code_of(math.inf, 0.1, 3.4, 15) == 15
    assert code_of(float(torch.tensor(-1.0)), 0.1, 3.4, 255) == 0
