"""EMA min/max and learned-scale (LSQ+) baselines, and the `make_act_quant` factory."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qcompile.errors import ConfigError
from qcompile.quant import (
    ActQuantizer,
    BatchQuant,
    EMAQuant,
    LearnedScaleQuant,
    calibration,
    make_act_quant,
)

BITS = (2, 3, 4, 8)


def _act(rng, shape=(3, 4, 5, 5), scale=1.0):
    return (rng.laplace(size=shape) * scale).astype(np.float32)


def _affine_ref(x, scale, zp, bits):
    """`(clamp(round(x/scale + zp)) - zp) * scale` in float32, plus u, q (QFA Eq. 5 form)."""
    p = 2**bits - 1
    scale, zp = np.float32(scale), np.float32(zp)
    u = (x / scale + zp).astype(np.float32)
    q = np.floor(np.clip(u, 0, p) + np.float32(0.5)).astype(np.float32)
    return ((q - zp) * scale).astype(np.float32), u, q


# -- EMA ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", BITS)
def test_ema_training_tracks_numpy_ema(rng, ref, bits):
    m = 0.2
    q = EMAQuant(BITS, momentum=m).train()
    q.active_bits = bits
    ema = None
    for scale in (1.0, 3.0, 0.5):
        x = _act(rng, scale=scale)
        out = q(torch.from_numpy(x)).detach().numpy()
        lo, hi = ref.estimators["minmax"](x)
        ema = (lo, hi) if ema is None else ((1 - m) * ema[0] + m * lo, (1 - m) * ema[1] + m * hi)
        np.testing.assert_allclose([q.running_min.item(), q.running_max.item()], ema, rtol=1e-6)
        # Forward uses the updated EMA range (Eq. 1 = Eq. 5 with gamma = 1, beta = 0).
        lo32, hi32 = np.float32(q.running_min.item()), np.float32(q.running_max.item())
        np.testing.assert_array_equal(out, ref.bq_forward(x, lo32, hi32, 1.0, 0.0, bits, "floor")[1])
    assert q.is_calibrated  # the EMA range is a static range
    delta, z = ref.range_qparams(lo32, hi32, 0, 2**bits - 1, "floor")  # the EMA baseline keeps the floor
    assert q.qparams() == (pytest.approx(float(delta), rel=1e-7), float(z))


def test_ema_calibration_is_plain_mean_and_freeze(rng, ref):
    q = EMAQuant((4,), momentum=0.01)
    assert not q.is_calibrated
    with pytest.raises(ConfigError, match="is_calibrated"):
        q.qparams()
    xs = [_act(rng, scale=s) for s in (1.0, 2.0, 4.0)]
    with calibration(q):
        for x in xs:
            q(torch.from_numpy(x))
    est = np.array([ref.estimators["minmax"](x) for x in xs]).mean(axis=0)
    np.testing.assert_allclose([q.running_min.item(), q.running_max.item()], est, rtol=1e-6)
    q.eval()
    frozen = q.freeze(4)
    x = torch.from_numpy(xs[0])
    torch.testing.assert_close(frozen(x), q(x), rtol=0, atol=0)
    fresh = EMAQuant((4,), momentum=0.01).eval()
    fresh.load_state_dict(q.state_dict())
    torch.testing.assert_close(fresh(x), q(x), rtol=0, atol=0)
    assert fresh.qparams() == q.qparams()


def test_ema_gradient_is_ste(rng, ref):
    q = EMAQuant((3,)).train()
    x = _act(rng)
    xt = torch.from_numpy(x).requires_grad_(True)
    q(xt).sum().backward()
    lo, hi = np.float32(q.running_min.item()), np.float32(q.running_max.item())
    _, _, u, *_ = ref.bq_forward(x, lo, hi, 1.0, 0.0, 3, "floor")
    np.testing.assert_allclose(xt.grad.numpy(), ((u >= 0) & (u <= 7)).astype(np.float32), rtol=3e-7)


# -- learned scale ------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", BITS)
def test_learned_init_forward_and_gradients(rng, ref, bits):
    p = 2**bits - 1
    x = _act(rng)
    q = LearnedScaleQuant(BITS).train()
    q.active_bits = bits
    assert not q.is_calibrated
    xt = torch.from_numpy(x).requires_grad_(True)
    out = q(xt)
    # Initialisation from the first batch by QFA Eq. 9 (LSQ+ init): delta and z of mu -/+ 3 sigma.
    lo, hi = ref.estimators["mean_std"](x)
    delta, z = ref.range_qparams(lo, hi, 0, p, "floor")
    s, o = q.qparams(bits)
    assert s == pytest.approx(float(delta), rel=1e-5) and o == float(z)
    assert q.is_calibrated
    x_hat, u, qc = _affine_ref(x, q.scale[str(bits)].item(), q.zero_point[str(bits)].item(), bits)
    np.testing.assert_array_equal(out.detach().numpy(), x_hat)
    # LSQ+ gradients with g = 1/sqrt(N p): ds = g sum(gout (q - u)) inside, (q - o) outside; do = -g s.
    gout = rng.standard_normal(x.shape).astype(np.float32)
    out.backward(torch.from_numpy(gout))
    g = 1.0 / math.sqrt(x.size * p)
    u64, q64, go = u.astype(np.float64), qc.astype(np.float64), gout.astype(np.float64)
    inside = (u64 >= 0) & (u64 <= p)
    ds = g * np.sum(go * np.where(inside, q64 - u64, q64 - o))
    do = g * np.sum(go * np.where(inside, 0.0, -s))
    np.testing.assert_allclose(q.scale[str(bits)].grad.item(), ds, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(q.zero_point[str(bits)].grad.item(), do, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(xt.grad.numpy(), go * inside, rtol=3e-7)


def test_learned_freeze_state_dict_and_calibration(rng):
    q = LearnedScaleQuant(BITS)
    x = torch.from_numpy(_act(rng))
    q.active_bits = 2
    with pytest.raises(ConfigError, match="initialized"):
        q.qparams()
    with calibration(q):  # calibration initialises unused choices and keeps the learned ones
        q(x)
    assert q.is_calibrated
    before = q.qparams()
    with calibration(q):
        q(3 * x)
    assert q.qparams() == before
    frozen = q.freeze(2)
    torch.testing.assert_close(frozen(x), q(x), rtol=0, atol=0)
    fresh = LearnedScaleQuant(BITS)
    fresh.load_state_dict(q.state_dict())
    fresh.active_bits = 2
    torch.testing.assert_close(fresh(x), q(x), rtol=0, atol=0)
    q.active_bits = 4
    assert not q.is_calibrated


# -- factory ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "cls", "kw"),
    [
        ("batchquant", BatchQuant, {"estimator": "minmax"}),
        ("ema", EMAQuant, {"momentum": 0.05}),
        ("learned", LearnedScaleQuant, {}),
    ],
)
def test_factory_builds_drop_in_quantizers(rng, ref, kind, cls, kw):
    q = make_act_quant(kind, (2, 4), **kw)
    assert isinstance(q, cls) and isinstance(q, ActQuantizer) and q.bits == (2, 4)
    for key, value in kw.items():
        assert getattr(q, key) == value
    x = _act(rng)
    q.active_bits = 2
    with calibration(q):
        q(torch.from_numpy(x))
    q.eval()
    scale, zp = q.qparams()
    # Every kind obeys the same Eq. 5 contract: forward == affine fake quant with its qparams.
    np.testing.assert_allclose(
        q(torch.from_numpy(x)).detach().numpy(), _affine_ref(x, scale, zp, 2)[0], rtol=1e-6, atol=1e-6
    )
    frozen = q.freeze(4)
    assert frozen.bits == (4,) and type(frozen) is cls


def test_factory_errors():
    with pytest.raises(ConfigError, match="act_quant") as e:
        make_act_quant("pact", (2,))
    assert e.value.value == "pact" and set(e.value.allowed) == {"batchquant", "ema", "learned"}
    with pytest.raises(ConfigError, match="bits") as e:
        make_act_quant("batchquant", (2, 16))
    assert e.value.value == 16
    with pytest.raises(ConfigError, match="option"):
        make_act_quant("ema", (2,), estimator="minmax")
    with pytest.raises(ConfigError, match="momentum"):
        make_act_quant("ema", (2,), momentum=0.0)
    for kind in ("batchquant", "ema", "learned"):
        q = make_act_quant(kind, (2, 3))
        q.active_bits = 32
        with pytest.raises(ConfigError, match="active_bits") as e:
            q.active_bits = 4
        assert e.value.allowed == (2, 3, 32)
