"""All quantizers round-trip through safetensors (the project's checkpoint format) bit-exactly."""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load, save

from qcompile.quant import LSQ, BatchQuant, EMAQuant, LearnedScaleQuant, calibration


def _build() -> torch.nn.ModuleDict:
    return torch.nn.ModuleDict(
        {
            "act": BatchQuant((2, 4)),
            "ema": EMAQuant((2, 4)),
            "learned": LearnedScaleQuant((2, 4)),
            "weight": LSQ((2, 4), per_channel=True),
        }
    )


def test_safetensors_round_trip(rng):
    model = _build()
    x = torch.from_numpy(rng.laplace(size=(2, 3, 4, 4)).astype(np.float32))
    w = torch.from_numpy(rng.standard_normal((5, 3, 3, 3)).astype(np.float32))
    model["weight"](w)
    with calibration(model):
        for name in ("act", "ema", "learned"):
            model[name](x)
    with torch.no_grad():
        model["act"].gamma["4"].fill_(0.7)
        model["act"].beta["4"].fill_(0.2)
    fresh = _build()
    fresh.load_state_dict(load(save(model.state_dict())))
    model.eval()
    fresh.eval()
    assert fresh["weight"].num_channels == 5
    for name in ("act", "ema", "learned"):
        assert fresh[name].is_calibrated
        assert fresh[name].qparams() == model[name].qparams()
        torch.testing.assert_close(fresh[name](2 * x), model[name](2 * x), rtol=0, atol=0)
    torch.testing.assert_close(fresh["weight"](w), model["weight"](w), rtol=0, atol=0)
    # The loaded BatchQuant really uses the stored statistics, not this batch's.
    _, hi = model["act"].batch_estimates(2 * x)
    assert float(hi) != model["act"].running_max.item()
