"""`benchmarks.parallel_split`: the static split formula, and MobileNetV2 shapes whose parallel extents split
evenly at 2 threads (read from the scheduled TIR, no build, no timing)."""

from __future__ import annotations

import pytest

tvm = pytest.importorskip("tvm")

from benchmarks.parallel_split import ParallelLoop, parallel_loops, split_ratio  # noqa: E402
from qcompile.backends.tvm.schedules import parallel as par  # noqa: E402
from qcompile.backends.tvm.schedules.conv import DwConv, GemmConv  # noqa: E402
from qcompile.backends.tvm.schedules.x86.depthwise import depthwise_kernel, target_dw_knobs  # noqa: E402
from qcompile.backends.tvm.schedules.x86.gemm import default_knobs, pointwise_conv_x86  # noqa: E402
from qcompile.backends.tvm.targets import family_target  # noqa: E402


@pytest.fixture
def always_parallel(monkeypatch):
    """Every kernel gets its parallel region (the extents are what is checked, not the threshold)."""
    monkeypatch.setenv(par.ENV_MIN_US, "0")
    monkeypatch.delenv(par.ENV_MIN_WORK, raising=False)


def test_split_ratio_is_ceil_chunk_over_ideal_share():
    # 5 pixel tiles on 2 threads: chunks of 3 and 2, the slow thread does 3 / 2.5 = 1.2x its share
    assert split_ratio(5, 2) == pytest.approx(1.2)
    assert split_ratio(64, 2) == 1.0
    assert split_ratio(63, 2) == pytest.approx(32 / 31.5)
    assert split_ratio(7, 2) == pytest.approx(4 / 3.5)
    # fewer iterations than threads: one iteration each, the rest idle
    assert split_ratio(1, 2) == 2.0
    assert ParallelLoop("b", 13).ratio(2) == pytest.approx(7 / 6.5)


@pytest.mark.parametrize("k,p,o,loops", [
    # MobileNetV2's 7x7 project (576 -> 160): 49 px padded to 4 tiles of 16 x 16 tiles of 10 channels
    (576, 49, 160, [("b", 144), ("j_0_c_0_fused", 64)]),
    # 14x14 expand (96 -> 576): 13 pixel tiles (odd) x 48 channel tiles of 12 = 624, even
    (96, 196, 576, [("b", 24), ("j_0_c_0_fused", 624)]),
    # K > 2 O (a project layer): the per-tile packing costs more serially, two regions stay
    (192, 784, 32, [("b", 48), ("j_0_c_0_fused", 196)]),
])
def test_mbv2_gemm_extents_split_evenly(always_parallel, k, p, o, loops):
    func = pointwise_conv_x86(GemmConv(k, p, o), "vnni512", default_knobs("vnni512"))
    got = parallel_loops(func)
    assert [(lp.var, lp.extent) for lp in got] == loops
    assert all(lp.ratio(2) == 1.0 for lp in got)


def test_mbv2_depthwise_7x7_parallel_over_channels(always_parallel):
    target = tvm.target.Target(family_target("avx512-vnni"))
    dw = DwConv(960, 7, 7, 3, 3, (1, 1), (1, 1), (1, 1), 0, lo=0, hi=255, shift_min=34)
    knobs = target_dw_knobs(7, target, 3, 1)
    func = depthwise_kernel(dw, knobs, target=target)
    got = parallel_loops(func)
    # the sliding tap quads pad their whole plane in a region of their own before the arithmetic's
    # (`depthwise_conv_slide_x86`: a plane padded per channel was shrunk to the columns the arithmetic reads), or,
    # with `plane="channel"` (`QCOMPILE_DW_PLANE`), each group of 48 channels inside the one region: 20 groups
    if knobs.plane == "channel":
        assert [(lp.var, lp.extent) for lp in got] == [("ch_0", 20)]
    else:
        assert [(lp.var, lp.extent) for lp in got] == [("ch", 960)] * (2 if knobs.slide else 1)
    assert all(lp.ratio(2) == 1.0 for lp in got)


@pytest.mark.parametrize("k,p,o,loops", [
    (160, 49, 960, [("j_0", 4)]),  # 7x7: 4 pixel tiles, one region
    (32, 784, 192, [("j_0", 49)]),  # 28x28: 49 tiles split 25:24 (1.02), one region
    (24, 3136, 144, [("j_0", 196)]),
    # 14x14: 13 tiles would split 7:6 (1.077): the separate packing region and the even 13 x 48 fused extent stay
    (96, 196, 576, [("b", 24), ("j_0_c_0_fused", 624)]),
    # K > 2 O (a project layer): the per-tile packing costs more serially, two regions stay
    (192, 784, 32, [("b", 48), ("j_0_c_0_fused", 196)]),
])
def test_pack_in_tiles_one_region_where_pixel_tiles_split_evenly(always_parallel, monkeypatch, k, p, o, loops):
    from qcompile.backends.tvm.schedules.x86.gemm import ENV_PACK_IN_TILES

    monkeypatch.setenv(ENV_PACK_IN_TILES, "1")
    func = pointwise_conv_x86(GemmConv(k, p, o), "vnni512", default_knobs("vnni512"))
    got = parallel_loops(func)
    assert [(lp.var, lp.extent) for lp in got] == loops
    assert all(lp.ratio(2) <= 1.03 for lp in got)


def test_pack_in_tiles_rejects_other_values(monkeypatch):
    from qcompile.backends.tvm.schedules.x86.gemm import ENV_PACK_IN_TILES, pack_in_tiles
    from qcompile.errors import ConfigError

    monkeypatch.setenv(ENV_PACK_IN_TILES, "yes")
    with pytest.raises(ConfigError, match=rf"{ENV_PACK_IN_TILES}.*yes"):
        pack_in_tiles()
