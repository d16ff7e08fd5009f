"""`parallel_if_worth`: small kernels get no parallel region, large ones keep it, and the result is the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm")

from qcompile.backends.tvm.schedules import parallel as par  # noqa: E402
from qcompile.backends.tvm.schedules.conv import DwConv  # noqa: E402
from qcompile.backends.tvm.schedules.requant import bias_term  # noqa: E402
from qcompile.backends.tvm.schedules.x86.depthwise import depthwise_conv_x86  # noqa: E402
from qcompile.errors import ConfigError  # noqa: E402
from qcompile.ops import reference as R  # noqa: E402


def _has_parallel(func) -> bool:
    return "T.parallel(" in func.script()


def _dw(c: int, h: int, k: int = 3) -> DwConv:
    p = (k - 1) // 2
    return DwConv(c, h, h, k, k, (1, 1), (p, p), (1, 1), 0, lo=0, hi=255, shift_min=34)


def test_threshold_from_environment(monkeypatch):
    monkeypatch.delenv(par.ENV_MIN_WORK, raising=False)
    assert par.min_parallel_work() == par.DEFAULT_MIN_WORK
    monkeypatch.setenv(par.ENV_MIN_WORK, "0")
    assert par.min_parallel_work() == 0
    for bad in ("-1", "many", "1e6"):
        monkeypatch.setenv(par.ENV_MIN_WORK, bad)
        with pytest.raises(ConfigError, match=rf"{par.ENV_MIN_WORK}=.*{bad}.*integer >= 0"):
            par.min_parallel_work()


def test_small_kernels_serial_large_parallel(monkeypatch):
    """The demo's 8x8 depthwise layers (8 ch: 4.6 kMAC) run serially, a MobileNetV2 112x112 one (32 ch, 3.6 MMAC)
    keeps its parallel region; threshold 0 (the old behaviour) parallelises both."""
    monkeypatch.delenv(par.ENV_MIN_WORK, raising=False)
    small, large = _dw(8, 8), _dw(32, 112)
    assert 8 * 8 * 8 * 9 < par.DEFAULT_MIN_WORK <= 32 * 112 * 112 * 9
    assert not _has_parallel(depthwise_conv_x86(small))
    assert _has_parallel(depthwise_conv_x86(large))
    monkeypatch.setenv(par.ENV_MIN_WORK, "0")
    assert _has_parallel(depthwise_conv_x86(small))


def test_serial_and_parallel_builds_agree_with_reference(monkeypatch):
    """Only the loop annotation changes: both builds are bit-exact against the reference integer conv."""
    c, h = 16, 12
    dw = _dw(c, h)
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (1, c, h, h)).astype(np.uint8)
    wt = rng.integers(-128, 128, (c, 1, 3, 3)).astype(np.int8)
    bias = rng.integers(-20000, 20000, c).astype(np.int32)
    mult = rng.integers(2**29, 2**31, c).astype(np.int32)
    shift = np.full(c, 34, np.int32)
    acc = R.conv2d(
        torch.from_numpy(x),
        torch.from_numpy(wt),
        torch.from_numpy(bias),
        stride=1,
        padding=1,
        dilation=1,
        groups=c,
        pad_value=0,
    )
    ref = R.requantize(acc, torch.from_numpy(mult), torch.from_numpy(shift), lo=0, hi=255).numpy()[0]
    assert len(np.unique(ref)) > 20
    outs = {}
    for threshold in ("0", str(1 << 62)):
        monkeypatch.setenv(par.ENV_MIN_WORK, threshold)
        func = depthwise_conv_x86(dw)
        assert _has_parallel(func) == (threshold == "0")
        lib = tvm.compile(func, target="llvm")
        out = tvm.runtime.tensor(np.zeros((c, h, h), np.uint8))
        args = (x[0], np.ascontiguousarray(wt[:, 0]), bias_term(bias, mult, shift), mult, shift)
        lib(*(tvm.runtime.tensor(a) for a in args), out)
        outs[threshold] = out.numpy()
    for out in outs.values():
        np.testing.assert_array_equal(out, ref)
