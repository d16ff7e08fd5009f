"""BatchQuant's zero point rounding (QFA Eq. 1/5: round half up; earlier checkpoints: floor): the integer program
stays exact with the fake-quant model, and bit-exact on TVM, in the floor mode too (the round mode is the default,
which test_to_integer.py and the TVM/ONNX suites check)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from qcompile.debug.compare import compare_codes, logit_bound
from qcompile.passes.to_integer import to_integer
from qcompile.quant import BatchQuant, calibration
from tests.passes.fq_nets import digits16, trained

SHAPE = (1, 1, 16, 16)


def _with_rounding(gm, mode: str):
    """A copy of `gm` whose BatchQuant zero points use `mode`, recalibrated (the estimates do not depend on it)."""
    gm = copy.deepcopy(gm)
    bqs = [m for m in gm.modules() if isinstance(m, BatchQuant)]
    for m in bqs:
        m.zero_round.fill_(mode == "round")
    assert {m.zero_rounding for m in bqs} == {mode}
    x = digits16()["xtr"]
    with torch.no_grad(), calibration(gm):
        for i in range(0, 512, 128):
            gm(x[i : i + 128])
    return gm.eval()


def test_integer_program_exact_with_floored_zero_points():
    gm = _with_rounding(trained("mbv3", 0), "floor")
    x = digits16()["xte"][:128]
    ig = to_integer(gm, input_shape=SHAPE, float_epilogue=True)
    for d in compare_codes(gm, ig, x):
        assert d.mismatch <= 2e-3, d
    ig = to_integer(gm, input_shape=SHAPE)
    with torch.no_grad():
        ref, out = gm(x).double(), ig(x).to(torch.float64)
    assert torch.all((out - ref).abs() <= logit_bound(gm, ig, x, ref))
    assert float((ref.argmax(1) == out.argmax(1)).double().mean()) >= 0.99


def test_tvm_bit_exact_with_floored_zero_points():
    pytest.importorskip("tvm")
    from qcompile.backends.tvm import lower_integer_graph

    gm = _with_rounding(trained("convbnrelu", 0), "floor")
    ig = to_integer(gm, input_shape=SHAPE)
    low = lower_integer_graph(ig, "x86")
    for x in digits16()["xte"][:8]:
        xin = x[None].numpy()
        np.testing.assert_array_equal(low(xin), ig(torch.from_numpy(xin)).numpy())
