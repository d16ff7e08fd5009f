"""BatchQuant vs NumPy formulas: QFA Eq. 5 forward and gradients, estimators Eq. 7-9, calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qcompile.errors import ConfigError
from qcompile.quant import BatchQuant, calibration

BITS = (2, 3, 4, 8)
ESTIMATORS = ("minmax", "channel_mean", "mean_std")
SHAPES = ((4, 6, 5, 5), (16, 12))


def _act(rng, shape, shift=0.3):
    """Laplace-like activations with a per-channel offset, so the estimators differ."""
    x = rng.laplace(size=shape).astype(np.float32)
    offs = rng.standard_normal(shape[1]).astype(np.float32) * shift
    return x + offs.reshape((1, -1) + (1,) * (len(shape) - 2))


def _set_residuals(q, bits, gamma, beta):
    with torch.no_grad():
        q.gamma[str(bits)].fill_(gamma)
        q.beta[str(bits)].fill_(beta)


@pytest.mark.parametrize("shape", SHAPES, ids=["nchw", "nc"])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_estimators_match_numpy(rng, ref, estimator, shape):
    x = _act(rng, shape)
    q = BatchQuant(BITS, estimator=estimator)
    lo, hi = q.batch_estimates(torch.from_numpy(x))
    np.testing.assert_allclose([float(lo), float(hi)], ref.estimators[estimator](x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES, ids=["nchw", "nc"])
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("bits", BITS)
def test_forward_matches_numpy_exactly(rng, ref, bits, estimator, shape):
    """Eq. 5 with given estimates (eval mode over calibrated buffers): bit-exact codes."""
    x = _act(rng, shape)
    lo, hi = (np.float32(v) for v in ref.estimators[estimator](x))
    q = BatchQuant(BITS, estimator=estimator).eval()
    q.active_bits = bits
    _set_residuals(q, bits, 0.9, 0.3)
    q.running_min.fill_(float(lo))
    q.running_max.fill_(float(hi))
    q.calibrated.fill_(True)
    out = q(torch.from_numpy(x)).detach().numpy()
    codes, x_hat, *_ = ref.bq_forward(x, lo, hi, 0.9, 0.3, bits)
    np.testing.assert_array_equal(out, x_hat)
    n, p = ref.unsigned_range(bits)
    assert codes.min() >= n and codes.max() <= p
    assert codes.min() == n or codes.max() == p  # the clamp is exercised


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("bits", BITS)
def test_training_forward_uses_batch_estimates(rng, ref, bits, estimator):
    x = _act(rng, (4, 6, 5, 5))
    q = BatchQuant(BITS, estimator=estimator).train()
    q.active_bits = bits
    out = q(torch.from_numpy(x)).detach().numpy()
    lo, hi = ref.estimators[estimator](x)  # float64 estimates: codes may differ only at exact ties
    _, x_hat, _, delta, _, _ = ref.bq_forward(x, lo, hi, 1.0, 0.0, bits)
    mismatch = out != x_hat
    assert mismatch.mean() < 1e-3
    assert np.all(np.abs(out - x_hat) <= delta * 1.0001)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("bits", BITS)
def test_gradients_match_analytic(rng, ref, bits, estimator):
    """STE for x (estimates detached: no gradient through x_min / x_max), true grads for gamma, beta."""
    x = _act(rng, (4, 6, 5, 5))
    q = BatchQuant(BITS, estimator=estimator).train()
    q.active_bits = bits
    _set_residuals(q, bits, 0.8, 0.4)  # gamma < 1 clips the tails so both branches appear
    xt = torch.from_numpy(x).requires_grad_(True)
    gout = rng.standard_normal(x.shape).astype(np.float32)
    q(xt).backward(torch.from_numpy(gout))
    lo, hi = (float(v) for v in q.batch_estimates(xt))
    dx, dgamma, dbeta = ref.bq_grads(x, lo, hi, 0.8, 0.4, bits, gout)
    np.testing.assert_allclose(xt.grad.numpy(), dx, rtol=3e-7, atol=0)
    gamma, beta = q.residuals(bits)
    np.testing.assert_allclose(float(gamma.grad), dgamma, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(float(beta.grad), dbeta, rtol=1e-4, atol=1e-4)
    assert abs(dbeta) > 0 and abs(dgamma) > 0
    assert all(q.gamma[str(b)].grad is None for b in BITS if b != bits)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_calibration_running_mean(rng, ref, estimator):
    batches = [_act(rng, (3, 6, 4, 4), shift=s) for s in (0.1, 0.5, 1.0, 2.0)]
    q = BatchQuant(BITS, estimator=estimator)
    q.eval()
    assert not q.is_calibrated
    with pytest.raises(ConfigError, match="is_calibrated"):
        q.qparams()
    q(torch.from_numpy(batches[0]))  # uncalibrated eval forward: batch estimates, nothing recorded
    assert int(q.num_batches_tracked) == 0
    with torch.no_grad(), calibration(q) as found:
        assert found == [q] and q.calibrating
        for x in batches:
            q(torch.from_numpy(x))
    assert q.is_calibrated and not q.calibrating
    est = np.array([ref.estimators[estimator](x) for x in batches])
    np.testing.assert_allclose([float(q.running_min), float(q.running_max)], est.mean(axis=0), rtol=1e-5)
    # Eval now uses the running estimates: same output for any batch statistics.
    x = batches[0]
    lo, hi = np.float32(q.running_min.item()), np.float32(q.running_max.item())
    _set_residuals(q, 4, 0.9, -0.2)
    q.active_bits = 4
    np.testing.assert_array_equal(
        q(torch.from_numpy(x)).detach().numpy(), ref.bq_forward(x, lo, hi, 0.9, -0.2, 4)[1]
    )
    # qparams: (delta gamma, z + beta) from the running estimates.
    _, _, _, delta, zp, scale = ref.bq_forward(x, lo, hi, 0.9, -0.2, 4)
    s, z = q.qparams(4)
    assert s == pytest.approx(float(scale), rel=1e-7) and z == pytest.approx(float(zp), rel=1e-7)
    # A second calibration starts from scratch.
    with calibration(q):
        q(torch.from_numpy(batches[3]))
    np.testing.assert_allclose(
        [float(q.running_min), float(q.running_max)], ref.estimators[estimator](batches[3]), rtol=1e-5
    )


def test_calibration_scope_and_failures(rng):
    model = torch.nn.Sequential(BatchQuant((4,)), torch.nn.ReLU(), BatchQuant((4,)))
    x = torch.from_numpy(_act(rng, (2, 3, 4, 4)))
    with calibration(model):
        model[0](x)  # the second quantizer sees no batch (a skipped block)
    assert model[0].is_calibrated and not model[2].is_calibrated
    with pytest.raises(RuntimeError), calibration(model):
        model(x)
        raise RuntimeError("interrupted")
    assert not model[0].is_calibrated and not model[0].calibrating


def test_float_passthrough_still_calibrates(rng):
    q = BatchQuant((2, 4))
    q.active_bits = 32
    x = torch.from_numpy(_act(rng, (2, 3, 4, 4)))
    assert q(x) is x
    with calibration(q):
        q(x)
    assert q.is_calibrated
    with pytest.raises(ConfigError, match="32"):
        q.qparams()
    assert q.qparams(2)[0] > 0


def test_constant_input_is_finite(ref):
    q = BatchQuant((4,))
    x = torch.full((2, 3, 4, 4), 0.5)
    out = q(x)
    assert torch.isfinite(out).all()
    lo, hi = np.float32(0.5), np.float32(0.5)
    np.testing.assert_array_equal(out.detach().numpy(), ref.bq_forward(x.numpy(), lo, hi, 1.0, 0.0, 4)[1])


@pytest.mark.parametrize("calibrated", [False, True])
def test_freeze_identical(rng, calibrated):
    q = BatchQuant(BITS)
    q.active_bits = 3
    _set_residuals(q, 3, 1.2, 0.1)
    x = torch.from_numpy(_act(rng, (2, 6, 4, 4)))
    if calibrated:
        with calibration(q):
            q(x)
    for mode in (True, False):
        q.train(mode)
        frozen = q.freeze(3)
        assert frozen.bits == (3,) and frozen.active_bits == 3 and frozen.is_calibrated == calibrated
        assert frozen.training == mode
        torch.testing.assert_close(frozen(x * 1.5), q(x * 1.5), rtol=0, atol=0)
    assert frozen.qparams() == q.qparams(3) if calibrated else True
    with torch.no_grad():
        frozen.gamma["3"].fill_(2.0)
    assert q.gamma["3"].item() == pytest.approx(1.2)


def test_state_dict_round_trip(rng):
    q = BatchQuant(BITS, estimator="minmax")
    for b in BITS:
        _set_residuals(q, b, 1 + b / 10, b / 20)
    x = torch.from_numpy(_act(rng, (2, 6, 4, 4)))
    with calibration(q):
        q(x)
        q(2 * x)
    sd = q.state_dict()
    assert {"running_min", "running_max", "num_batches_tracked", "calibrated", "gamma.8", "beta.2"} <= set(sd)
    fresh = BatchQuant(BITS, estimator="minmax")
    fresh.load_state_dict(sd)
    assert fresh.is_calibrated
    q.eval()
    fresh.eval()
    for b in BITS:
        q.active_bits = fresh.active_bits = b
        torch.testing.assert_close(fresh(x), q(x), rtol=0, atol=0)
        assert fresh.qparams() == q.qparams()


def test_config_errors():
    with pytest.raises(ConfigError, match="estimator"):
        BatchQuant((2,), estimator="median")
    with pytest.raises(ConfigError, match="BatchQuant.bits"):
        BatchQuant((1, 2))
    q = BatchQuant((2, 4))
    with pytest.raises(ConfigError, match="active_bits"):
        q.active_bits = 8
    with pytest.raises(ConfigError, match="residuals"):
        q.residuals(3)
    with pytest.raises(ConfigError, match="freeze"):
        q.freeze(8)
    with pytest.raises(ConfigError, match="dim"):
        q(torch.randn(5))


def test_round_half_up_ties():
    """Delta = 0.25, z = 0: x / delta lands exactly on k + 1/2, which must round up."""
    q = BatchQuant((4,), estimator="minmax").eval()
    q.running_min.fill_(0.0)
    q.running_max.fill_(15 * 0.25)
    q.calibrated.fill_(True)
    x = torch.tensor([[0.125, 0.375, 0.625, 3.875, -0.125, -0.375]])
    # codes 0.5 -> 1, 1.5 -> 2, 2.5 -> 3, 15.5 -> 15 (clamp), -0.5 -> 0, -1.5 -> 0 (clamp)
    np.testing.assert_array_equal(q(x).detach().numpy(), np.array([[1, 2, 3, 15, 0, 0]]) * 0.25)
    assert q.qparams() == (0.25, 0.0)


@pytest.mark.parametrize("bits", BITS)
def test_qparams_drive_integer_quantize(rng, bits):
    """Lowering contract: ops.quantize / dequantize with qparams reproduce the fake-quant output."""
    from qcompile.ops import dequantize, quantize

    x = torch.from_numpy(_act(rng, (4, 6, 5, 5)))
    q = BatchQuant(BITS)
    q.active_bits = bits
    _set_residuals(q, bits, 0.95, 0.25)  # fractional zero point
    with calibration(q):
        q(x)
    q.eval()
    scale, zp = q.qparams()
    codes = quantize(x, 1.0 / scale, zp + 0.5, 2**bits - 1)
    deq = dequantize(codes, scale, zp).float()
    fake = q(x).detach()
    # float64 x * (1/scale) vs float32 x / scale: codes may only differ at exact ties.
    diff = (deq - fake).abs()
    assert float(diff.max()) <= scale * 1.001
    assert float((diff > 1e-5).float().mean()) < 1e-3
