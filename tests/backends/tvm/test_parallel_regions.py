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


@pytest.fixture
def default_rule(monkeypatch):
    """Neither environment override set: the rule on estimated time at `DEFAULT_MIN_US`."""
    monkeypatch.delenv(par.ENV_MIN_US, raising=False)
    monkeypatch.delenv(par.ENV_MIN_WORK, raising=False)
    return monkeypatch


def test_threshold_from_environment(default_rule):
    assert par.min_parallel_us() == par.DEFAULT_MIN_US
    default_rule.setenv(par.ENV_MIN_US, "0")
    assert par.min_parallel_us() == 0.0
    default_rule.setenv(par.ENV_MIN_US, "12.5")
    assert par.min_parallel_us() == 12.5
    for bad in ("-1", "many", "nan"):
        default_rule.setenv(par.ENV_MIN_US, bad)
        with pytest.raises(ConfigError, match=rf"{par.ENV_MIN_US}=.*{bad}.*number >= 0"):
            par.min_parallel_us()
    default_rule.delenv(par.ENV_MIN_US)
    for bad in ("-1", "1e6"):
        default_rule.setenv(par.ENV_MIN_WORK, bad)
        with pytest.raises(ConfigError, match=rf"{par.ENV_MIN_WORK}=.*{bad}.*integer >= 0"):
            depthwise_conv_x86(_dw(8, 8))


def test_estimate_is_work_times_the_kind_cost():
    assert par.estimated_us(2_000_000, "depthwise") == pytest.approx(2_000_000 * par.UNIT_COST_NS["depthwise"] / 1e3)
    # the premise of weighting: a depthwise tap and an element-wise element cost several VNNI MACs
    assert par.UNIT_COST_NS["depthwise"] > 3 * par.UNIT_COST_NS["gemm_dot"]
    assert par.UNIT_COST_NS["elementwise"] > 3 * par.UNIT_COST_NS["gemm_dot"]
    with pytest.raises(ConfigError, match=r"kind 'conv'.*depthwise"):
        par.estimated_us(1, "conv")


def test_small_kernels_serial_large_parallel(default_rule):
    """The demo's 8x8 depthwise layers (8 ch: 4.6 k taps) run serially, a MobileNetV2 112x112 one (32 ch, 3.6 M
    taps) keeps its parallel region; threshold 0 (the old behaviour) parallelises both."""
    small, large = _dw(8, 8), _dw(32, 112)
    assert par.estimated_us(8 * 8 * 8 * 9, "depthwise") < par.DEFAULT_MIN_US
    assert par.estimated_us(32 * 112 * 112 * 9, "depthwise") >= par.DEFAULT_MIN_US
    assert not _has_parallel(depthwise_conv_x86(small))
    assert _has_parallel(depthwise_conv_x86(large))
    default_rule.setenv(par.ENV_MIN_US, "0")
    assert _has_parallel(depthwise_conv_x86(small))


def test_kinds_weigh_the_same_raw_work_differently(default_rule):
    """MobileNetV2's 14x14 depthwise layer (384 ch, 0.77 M taps with rows padded to 16) was under the raw rule's
    2**20 iterations and ran serially; weighted by its kind it is parallel. A VNNI GEMM of more raw work (1.0 M
    MACs) is about a fifth of the time and stays serial."""
    from qcompile.backends.tvm.schedules.conv import GemmConv
    from qcompile.backends.tvm.schedules.x86.gemm import pointwise_conv_x86

    work = 384 * 14 * 16 * 9  # the row kernel (8 lanes) pads each 14-pixel row to 16
    assert work < 1 << 20
    dw = _dw(384, 14)
    gc = GemmConv(96, 112, 96)  # 1.03 M MACs
    assert par.estimated_us(work, "depthwise") >= par.DEFAULT_MIN_US > par.estimated_us(96 * 112 * 96, "gemm_dot")
    assert _has_parallel(depthwise_conv_x86(dw))
    assert not _has_parallel(pointwise_conv_x86(gc, "vnni512"))
    default_rule.setenv(par.ENV_MIN_WORK, str(1 << 20))  # the unweighted rule: serial, as before
    assert not _has_parallel(depthwise_conv_x86(dw))


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
    monkeypatch.delenv(par.ENV_MIN_WORK, raising=False)
    for threshold in ("0", "1e30"):
        monkeypatch.setenv(par.ENV_MIN_US, threshold)
        func = depthwise_conv_x86(dw)
        assert _has_parallel(func) == (threshold == "0")
        lib = tvm.compile(func, target="llvm")
        out = tvm.runtime.tensor(np.zeros((c, h, h), np.uint8))
        args = (x[0], np.ascontiguousarray(wt[:, 0]), bias_term(bias, mult, shift), mult, shift)
        lib(*(tvm.runtime.tensor(a) for a in args), out)
        outs[threshold] = out.numpy()
    for out in outs.values():
        np.testing.assert_array_equal(out, ref)
