"""After short training on digits, w8a8 post-training quantization is within 1 point of float.

torchvision's MobileNetV3-small (width 0.5, 32x32) trained 4 epochs, `quantize_model` with max-abs weight
steps, `calibrate(bn=False)` on 8 batches; top-1 of the integer program (the exact reference) vs float.
The full table (three models, two policies, three step rules) is benchmarks/ptq_digits.py, docs/quantize_model.md.
"""

from __future__ import annotations

import pytest

from benchmarks.ptq_digits import run

pytestmark = pytest.mark.slow


def test_w8a8_ptq_within_one_point_of_float():
    (row,) = run(["mobilenet_v3_small"], epochs=4, out=None, policies=("w8a8",), inits=("maxabs",))
    assert row["float"] > 85.0  # the model learned digits (10 classes: chance is 10 %)
    assert abs(row["integer"] - row["float"]) <= 1.0, row
    assert abs(row["fake_quant"] - row["integer"]) <= 0.5, row
