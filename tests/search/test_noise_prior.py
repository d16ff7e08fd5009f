"""The data-free noise-to-signal prior (`search/predictors/noise.py`) against hand computations."""

import numpy as np
import pytest
import torch

from qcompile import ConfigError
from qcompile.search.predictors.noise import activation_nsr, noise_sensitivity, weight_nsr


def test_weight_nsr_by_hand():
    # step 0.25, 2-bit codes [-2, 1], round half up:
    # 0.1 -> 0 (err 0.1), -0.5 -> -2 (exact), 0.9 -> clamped to 1 (0.25, err 0.65), 0.26 -> 1 (0.25, err 0.01)
    w = torch.tensor([[0.1, -0.5], [0.9, 0.26]])
    expected = (0.1**2 + 0.0 + 0.65**2 + 0.01**2) / (0.1**2 + 0.5**2 + 0.9**2 + 0.26**2)
    assert weight_nsr(w, 0.25, 2) == pytest.approx(expected, rel=1e-6)  # float32 input
    # per output channel steps: row 0 at 0.1 (codes -2..1: 0.1 -> 1 exact, -0.5 -> -2 = -0.2, err 0.3)
    expected_pc = (0.0 + 0.3**2 + 0.65**2 + 0.01**2) / (0.1**2 + 0.5**2 + 0.9**2 + 0.26**2)
    assert weight_nsr(w, torch.tensor([0.1, 0.25]), 2) == pytest.approx(expected_pc, rel=1e-6)
    with pytest.raises(ConfigError, match="weight"):
        weight_nsr(torch.zeros(2, 2), 0.25, 2)


def test_activation_nsr_by_hand():
    assert activation_nsr(1.0, 2) == pytest.approx(1 / 9 / 12)
    assert activation_nsr(-0.5, 3) == pytest.approx(0.25 / 49 / 12)


def _numpy_nsr(w: np.ndarray, s: float, b: int) -> float:
    q = np.floor(np.clip(w / s, -(2 ** (b - 1)), 2 ** (b - 1) - 1) + 0.5) * s
    return float(((q - w) ** 2).sum() / (w**2).sum())


def test_noise_sensitivity_matches_one_layer_by_hand(tspace, tqnet):
    sens = noise_sensitivity(tqnet, tspace, low_bits=(2, 3), top=4)
    n = tspace.num_layer_slots
    assert sens.weight.shape == sens.act.shape == (n, 2) and sens.base_loss == 0.0
    mods = dict(tqnet.named_modules())
    for slot in (0, n - 1):
        # slot name "stages.S.blocks.B.convJ" -> the conv module "stages.S.blocks.B.units.J.conv"
        head, _, conv = tspace.layer_slots()[slot].rpartition(".")
        m = mods[f"{head}.units.{conv[len('conv'):]}.conv"]
        w = m.weight.detach().double().numpy()
        step = {b: float(m.weight_quant.steps[str(b)].detach().abs()) for b in (2, 3, 4)}
        ref = _numpy_nsr(w, step[4], 4)
        assert sens.weight[slot, 0] == pytest.approx(_numpy_nsr(w, step[2], 2) - ref, rel=1e-9)
        assert sens.weight[slot, 1] == pytest.approx(_numpy_nsr(w, step[3], 3) - ref, rel=1e-9)
    # an untrained supernet's BatchQuant residuals are gamma = 1: (1/(2^b-1)^2 - 1/15^2) / 12
    np.testing.assert_allclose(sens.act[:, 0], (1 / 9 - 1 / 225) / 12)
    np.testing.assert_allclose(sens.act[:, 1], (1 / 49 - 1 / 225) / 12)
    # more bits, less noise, on every slot
    assert np.all(sens.weight[:, 0] > sens.weight[:, 1]) and np.all(sens.weight[:, 1] > 0)


def test_noise_sensitivity_rejects_bad_bits(tspace, tqnet):
    with pytest.raises(ConfigError, match="low_bits"):
        noise_sensitivity(tqnet, tspace, low_bits=(4,), top=4)
    with pytest.raises(ConfigError, match="low_bits"):
        noise_sensitivity(tqnet, tspace, low_bits=(5,), top=8)
