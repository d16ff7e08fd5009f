"""NumPy references for the quantizer tests, written from the paper formulas (independent of torch).

Float32 forward references replay the same elementwise IEEE operations as the modules, so codes can
be compared exactly; gradient references are the analytic STE / LSQ formulas in float64.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

F32 = np.float32


def signed_range(b: int) -> tuple[int, int]:
    return -(2 ** (b - 1)), 2 ** (b - 1) - 1


def unsigned_range(b: int) -> tuple[int, int]:
    return 0, 2**b - 1


def bcast(v: np.ndarray, ndim: int) -> np.ndarray:
    """Per-output-channel vector [O] against a weight of `ndim` dims."""
    return np.asarray(v).reshape((-1,) + (1,) * (ndim - 1))


def lsq_init(w: np.ndarray, b: int, per_channel: bool) -> np.ndarray:
    """OQA Sec. 3.2: s = 2 / sqrt(Qp) * mean|w| (per output channel if per_channel)."""
    _, qp = signed_range(b)
    a = np.abs(w.astype(np.float64))
    m = a.reshape(a.shape[0], -1).mean(axis=1) if per_channel else a.mean()
    return 2.0 / np.sqrt(qp) * m


def lsq_forward(w: np.ndarray, s: np.ndarray, b: int, per_channel: bool):
    """QFA Eq. 2 with round half up, float32: returns (codes, w_hat, u = w/s)."""
    n, p = signed_range(b)
    s = F32(s) if not per_channel else bcast(s.astype(F32), w.ndim)
    u = (w.astype(F32) / s).astype(F32)
    q = np.floor(np.clip(u, n, p) + F32(0.5)).astype(F32)
    return q, (q * s).astype(F32), u


def lsq_grads(w, s, b, per_channel, gout):
    """STE gradient for w and LSQ's gradient for s, times g = 1/sqrt(N Qp) (Esser et al. Eq. 3-5)."""
    n, p = signed_range(b)
    q, _, u = lsq_forward(w, s, b, per_channel)
    u, q, gout = u.astype(np.float64), q.astype(np.float64), gout.astype(np.float64)
    inside = (u >= n) & (u <= p)
    gw = gout * inside
    dstep = np.where(u < n, n, np.where(u > p, p, q - u))
    numel = w.size // w.shape[0] if per_channel else w.size
    g = 1.0 / np.sqrt(numel * p)
    contrib = gout * dstep
    gs = g * (contrib.reshape(w.shape[0], -1).sum(axis=1) if per_channel else contrib.sum())
    return gw, gs


def est_minmax(x):
    x = x.astype(np.float64)
    return x.min(), x.max()


def est_channel_mean(x):
    x = x.astype(np.float64)
    c = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
    return c.min(axis=1).mean(), c.max(axis=1).mean()


def est_mean_std(x):
    x = x.astype(np.float64)
    return x.mean() - 3 * x.std(), x.mean() + 3 * x.std()


ESTIMATORS = {"minmax": est_minmax, "channel_mean": est_channel_mean, "mean_std": est_mean_std}
EPS = F32(np.finfo(np.float32).eps)


def range_qparams(x_min, x_max, n, p, rounding="round"):
    """QFA Eq. 5 first line in float32: delta (floored at eps) and z = clamp([-x_min/delta]), the bracket
    "the round function" (QFA after Eq. 1), half up; `rounding="floor"`: z = clamp(-floor(x_min/delta))."""
    delta = np.maximum(F32((F32(x_max) - F32(x_min)) / F32(p - n)), EPS)
    if rounding == "round":
        z = np.floor(F32(-F32(x_min) / delta) + F32(0.5))
    else:
        z = -np.floor(F32(F32(x_min) / delta))
    return F32(delta), F32(np.clip(z, n, p))


def bq_forward(x, x_min, x_max, gamma, beta, b, rounding="round"):
    """QFA Eq. 5 in float32: returns (codes, x_hat, u, delta, zp, scale)."""
    n, p = unsigned_range(b)
    delta, z = range_qparams(x_min, x_max, n, p, rounding)
    scale = F32(delta * F32(gamma))
    zp = F32(z + F32(beta))
    u = (x.astype(F32) / scale + zp).astype(F32)
    q = np.floor(np.clip(u, n, p) + F32(0.5)).astype(F32)
    return q, ((q - zp) * scale).astype(F32), u, delta, zp, scale


def bq_grads(x, x_min, x_max, gamma, beta, b, gout, rounding="round"):
    """Analytic gradients of Eq. 5 with STE and detached estimates: (dx, dgamma, dbeta)."""
    n, p = unsigned_range(b)
    q, _, u, delta, zp, scale = bq_forward(x, x_min, x_max, gamma, beta, b, rounding)
    q, u, gout = q.astype(np.float64), u.astype(np.float64), gout.astype(np.float64)
    delta, zp, scale = float(delta), float(zp), float(scale)
    inside = (u >= n) & (u <= p)
    dx = gout * inside
    dgamma = np.sum(gout * np.where(inside, delta * (q - u), delta * (q - zp)))
    dbeta = np.sum(gout * np.where(inside, 0.0, -scale))
    return dx, dgamma, dbeta


@pytest.fixture(scope="session")
def ref() -> types.SimpleNamespace:
    """The NumPy reference formulas."""
    return types.SimpleNamespace(
        signed_range=signed_range,
        unsigned_range=unsigned_range,
        lsq_init=lsq_init,
        lsq_forward=lsq_forward,
        lsq_grads=lsq_grads,
        estimators=ESTIMATORS,
        range_qparams=range_qparams,
        bq_forward=bq_forward,
        bq_grads=bq_grads,
        EPS=EPS,
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
