"""LSQ weight quantizer vs NumPy formulas (QFA Eq. 2, OQA Eq. 1 + init, LSQ gradient scaling)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qcompile.errors import ConfigError
from qcompile.quant import LSQ

BITS = (2, 3, 4, 8)


def _weight(rng, shape=(6, 4, 3, 3)):
    return rng.standard_normal(shape).astype(np.float32) * 0.1


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bits", BITS)
def test_forward_matches_numpy(rng, ref, bits, per_channel):
    w = _weight(rng)
    q = LSQ(BITS, per_channel=per_channel)
    q.active_bits = bits
    out = q(torch.from_numpy(w)).detach().numpy()
    # Initialisation: OQA's 2/sqrt(Qp) * mean|w|.
    step = q.step(bits).detach().numpy()
    np.testing.assert_allclose(step, ref.lsq_init(w, bits, per_channel), rtol=1e-5)
    codes, w_hat, _ = ref.lsq_forward(w, step, bits, per_channel)
    np.testing.assert_array_equal(out, w_hat)
    n, p = ref.signed_range(bits)
    assert codes.min() >= n and codes.max() <= p
    # The module's codes() gives the same codes and scale.
    c, s = q.codes(torch.from_numpy(w))
    assert c.dtype == torch.int8
    np.testing.assert_array_equal(c.numpy(), codes)
    assert s.shape == ((w.shape[0],) if per_channel else ())
    np.testing.assert_array_equal(s.numpy(), step)


def test_round_half_up_ties(ref):
    q = LSQ((4,), per_channel=False)
    q(torch.ones(4))  # initialise
    with torch.no_grad():
        q.steps["4"].fill_(0.5)
    w = torch.tensor([0.25, -0.25, 0.75, -0.75, 3.75, -4.25, 100.0, -100.0])
    # w/s = 0.5, -0.5, 1.5, -1.5, 7.5, -8.5, 200, -200 -> floor(t + 0.5), clamped to [-8, 7]
    np.testing.assert_array_equal(q.codes(w)[0].numpy(), [1, 0, 2, -1, 7, -8, 7, -8])


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bits", BITS)
def test_gradients_match_analytic(rng, ref, bits, per_channel):
    w = _weight(rng)
    q = LSQ(BITS, per_channel=per_channel)
    q.active_bits = bits
    wt = torch.from_numpy(w).requires_grad_(True)
    q(wt)  # initialise, then shrink the steps so that the largest weights are clipped
    _, p = ref.signed_range(bits)
    amax = np.abs(w).reshape(w.shape[0], -1).max(axis=1) if per_channel else np.abs(w).max()
    with torch.no_grad():
        q.steps[str(bits)].copy_(torch.as_tensor(amax / (1.5 * p), dtype=torch.float32))
    gout = rng.standard_normal(w.shape).astype(np.float32)
    q(wt).backward(torch.from_numpy(gout))
    gw, gs = ref.lsq_grads(w, q.steps[str(bits)].detach().numpy(), bits, per_channel, gout)
    _, _, u = ref.lsq_forward(w, q.steps[str(bits)].detach().numpy(), bits, per_channel)
    n = ref.signed_range(bits)[0]
    assert ((u < n) | (u > p)).any(), "test should exercise clipped weights"
    # Autograd forms gout * s * (1/s): equal to the STE mask up to one float32 ulp.
    np.testing.assert_allclose(wt.grad.numpy(), gw, rtol=3e-7, atol=0)
    np.testing.assert_allclose(q.steps[str(bits)].grad.numpy(), gs, rtol=1e-4, atol=1e-7)
    # Other choices' steps receive no gradient.
    assert all(q.steps[str(b)].grad is None for b in BITS if b != bits)


def test_per_channel_slicing_uses_first_steps(rng, ref):
    w = _weight(rng, (8, 3, 3, 3))
    q = LSQ((3,), per_channel=True, num_channels=8)
    full = q(torch.from_numpy(w)).detach()
    wt = torch.from_numpy(w[:5].copy()).requires_grad_(True)
    part = q(wt)
    np.testing.assert_array_equal(part.detach().numpy(), full[:5].numpy())
    part.sum().backward()
    g = q.steps["3"].grad.numpy()
    assert np.all(g[5:] == 0) and np.any(g[:5] != 0)
    c, s = q.codes(torch.from_numpy(w[:5]))
    assert s.shape == (5,)
    np.testing.assert_array_equal(s.numpy(), q.step(3).detach().numpy()[:5])
    with pytest.raises(ConfigError, match="shape"):
        q(torch.zeros(9, 3, 3, 3))


def test_partial_first_use_initialises_remaining_channels(rng, ref):
    w = _weight(rng, (4, 10))
    q = LSQ((4,), per_channel=True, num_channels=6)
    q(torch.from_numpy(w))
    s = q.step(4).detach().numpy()
    np.testing.assert_allclose(s[:4], ref.lsq_init(w, 4, True), rtol=1e-5)
    np.testing.assert_allclose(s[4:], ref.lsq_init(w, 4, False), rtol=1e-5)


def test_lazy_init_happens_once_per_bits(rng, ref):
    w1, w2 = _weight(rng), _weight(rng) * 3
    q = LSQ(BITS)
    q.active_bits = 4
    q(torch.from_numpy(w1))
    q(torch.from_numpy(w2))
    np.testing.assert_allclose(float(q.step(4).detach()), ref.lsq_init(w1, 4, False), rtol=1e-5)
    assert not q.is_initialized(2)
    with pytest.raises(ConfigError, match="not initialised"):
        q.step(2)
    q.active_bits = 2
    q(torch.from_numpy(w2))
    np.testing.assert_allclose(float(q.step(2).detach()), ref.lsq_init(w2, 2, False), rtol=1e-5)


def test_float_passthrough_and_zero_weight():
    q = LSQ((2, 4))
    q.active_bits = 32
    w = torch.randn(3, 5)
    assert q(w) is w
    with pytest.raises(ConfigError, match="active_bits"):
        q.codes(w)
    q.active_bits = 2
    out = q(torch.zeros(3, 5))  # all-zero weight: the step floor keeps it finite
    assert torch.isfinite(out).all() and float(out.detach().abs().max()) == 0.0


@pytest.mark.parametrize("per_channel", [False, True])
def test_freeze_identical(rng, per_channel):
    w = torch.from_numpy(_weight(rng))
    q = LSQ(BITS, per_channel=per_channel)
    q.active_bits = 3
    q(w)
    frozen = q.freeze(3)
    assert frozen.bits == (3,) and frozen.active_bits == 3
    torch.testing.assert_close(frozen(w), q(w), rtol=0, atol=0)
    # Deep copy: training the frozen step does not move the supernet's.
    with torch.no_grad():
        frozen.steps["3"].mul_(2)
    assert not torch.equal(frozen.step(3), q.step(3))
    with pytest.raises(ConfigError):
        q.freeze(5)
    with pytest.raises(ConfigError):
        q.freeze(32)


@pytest.mark.parametrize("num_channels", [None, 6])
def test_state_dict_round_trip(rng, num_channels):
    w = torch.from_numpy(_weight(rng))
    q = LSQ(BITS, per_channel=True, num_channels=num_channels)
    for b in (2, 8):
        q.active_bits = b
        q(w)
    with torch.no_grad():
        q.steps["2"].mul_(1.3)
    sd = q.state_dict()
    fresh = LSQ(BITS, per_channel=True, num_channels=num_channels)
    fresh.load_state_dict(sd)
    for b in (2, 8):
        q.active_bits = fresh.active_bits = b
        torch.testing.assert_close(fresh(w), q(w), rtol=0, atol=0)
    assert fresh.is_initialized(8) and not fresh.is_initialized(4)


def test_config_errors():
    with pytest.raises(ConfigError, match="LSQ.bits"):
        LSQ((2, 9))
    with pytest.raises(ConfigError):
        LSQ(())
    with pytest.raises(ConfigError, match="num_channels"):
        LSQ((2,), per_channel=True, num_channels=0)
    q = LSQ((2, 4))
    with pytest.raises(ConfigError, match="active_bits") as e:
        q.active_bits = 3
    assert e.value.value == 3 and e.value.allowed == (2, 4, 32)


@pytest.mark.parametrize("per_channel", [False, True])
def test_quantize_then_slice_equals_frozen_on_slice(rng, per_channel):
    """QFA Sec. 3.3: the supernet quantizes the whole weight, then slices; the extracted static layer
    (frozen quantizer on the sliced weight) must give the same fake-quant weight and codes."""
    w = torch.from_numpy(_weight(rng, (8, 6, 5, 5)))
    q = LSQ(BITS, per_channel=per_channel, num_channels=8 if per_channel else None)
    q.active_bits = 3
    sliced_after = q(w)[:5, :4, 1:4, 1:4]
    frozen = q.freeze(3)
    sub = w[:5, :4, 1:4, 1:4].contiguous()
    torch.testing.assert_close(frozen(sub), sliced_after, rtol=0, atol=0)
    codes, scale = frozen.codes(sub)
    full_codes, full_scale = q.codes(w)
    np.testing.assert_array_equal(codes.numpy(), full_codes[:5, :4, 1:4, 1:4].numpy())
    np.testing.assert_array_equal(scale.numpy(), full_scale[:5].numpy() if per_channel else full_scale.numpy())
