"""x86 strategies and kernels bit-exact against qcompile.ops.reference (integer_semantics.md)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402
from tvm_graphs import conv_call_params  # noqa: E402

from qcompile.backends.tvm.schedules.conv import DwConv, GemmConv, fit_to, pack_weights  # noqa: E402
from qcompile.backends.tvm.schedules.requant import bias_term  # noqa: E402
from qcompile.backends.tvm.schedules.x86.gemm import (  # noqa: E402
    MODES,
    GemmKnobs,
    choose_mode,
    pointwise_conv_x86,
)
from qcompile.backends.tvm.strategy import OpCall, select_strategy  # noqa: E402
from qcompile.ops import reference as R  # noqa: E402
from tests import kernel_isa as isa  # noqa: E402

# Targets derived from this host (its mcpu, wider extensions off); a family the host lacks is built for a
# generic ISA level and only its assembly is checked (see tests/kernel_isa.py).
AVX2 = isa.target("avx2")
AVX512 = isa.target("avx512")
VNNI512 = isa.target("avx512-vnni")
VNNI256_FAMILY = isa.vnni256_family()
VNNI256 = isa.target(VNNI256_FAMILY)
AVXVNNI = isa.target("avx-vnni")  # 256-bit VNNI without AVX-512 (built only, unless this host has it)
FAMILY = {AVX2: "avx2", AVX512: "avx512", VNNI512: "avx512-vnni", VNNI256: VNNI256_FAMILY, AVXVNNI: "avx-vnni"}
# the instruction each family's int8 kernels are made of
INSTR = {
    "avx2": r"vpmadd(ubsw|wd)\s+.*%ymm",
    "avx512": r"vpmaddwd\s+.*%zmm",
    # zmm, or the AVX512-VL ymm form that GEMMs on <= 64 pixels take (gemm.default_knobs: 7x7 pads 49 -> 56, not 64)
    "avx512-vnni": r"vpdp(busd|wssd)\s+.*%[yz]mm",
    "avx-vnni": r"vpdpbusd\s+.*%ymm",
}


def _case(rng, c, h, w, o, k, s, p, groups, *, x_all=None, w_bits=8, pad_value=0):
    x = rng.integers(0, 256, (1, c, h, w)).astype(np.uint8) if x_all is None else np.full((1, c, h, w), x_all, np.uint8)
    lo_w, hi_w = -(2 ** (w_bits - 1)), 2 ** (w_bits - 1)
    wt = rng.integers(lo_w, hi_w, (o, c // groups, k, k)).astype(np.int8)
    bias = rng.integers(-20000, 20000, o).astype(np.int32)
    mult = rng.integers(2**29, 2**31, o).astype(np.int32)
    shift = rng.integers(34, 42, o).astype(np.int32)
    return x, wt, bias, mult, shift


def _reference(x, wt, bias, mult, shift, *, s, p, groups, pad_value, lo, hi, requant=True):
    acc = R.conv2d(
        torch.from_numpy(x),
        torch.from_numpy(wt),
        torch.from_numpy(bias),
        stride=s,
        padding=p,
        groups=groups,
        pad_value=pad_value,
    )
    if not requant:
        return acc.numpy()
    return R.requantize(acc, torch.from_numpy(mult), torch.from_numpy(shift), lo=lo, hi=hi).numpy()


def _run_strategy(op, x, wt, bias, mult, shift, *, s, p, groups, pad_value, lo, hi, target=AVX2, instr=None,
                  expect=None):
    """Emit the conv through `select_strategy`, build it for `target`, check the assembly (the family's int8
    instruction for groups=1, or the regex `instr`) and, where this host can, run it. `expect`: the strategy's
    `describe` must contain these items."""
    lohi = {"lo": lo, "hi": hi} if op == "conv2d_requant" else {}
    params = conv_call_params(x.shape, wt.shape, s=s, p=p, groups=groups, pad_value=pad_value, **lohi)
    call = OpCall(op, params, target)
    strat = select_strategy(call)
    assert strat is not None and strat.name.startswith("x86"), strat
    if expect is not None:
        assert strat.describe(call, wt).items() >= expect.items(), strat.describe(call, wt)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
    consts = [relax.const(wt), relax.const(bias)]
    if op == "conv2d_requant":
        consts += [relax.const(mult), relax.const(shift)]
    with bb.function("main", [xv]):
        with bb.dataflow():
            y = strat.emit(bb, call, [xv, *consts])
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    ex = tvm.compile(bb.get(), target=target)
    family = FAMILY[target]
    if instr is None:  # depthwise: plain vector code
        instr = INSTR[family] if groups == 1 else None
    isa.check_instructions(ex, family, *([instr] if instr else []))
    if not isa.should_execute(family):
        pytest.skip(f"built and checked the {family} assembly; this CPU cannot execute it")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


# (c, h, w, o, k, stride, pad, groups, pad_value): MobileNetV2-like layers, small spatial sizes
CASES = [
    pytest.param(16, 14, 14, 96, 1, 1, 0, 1, 0, id="pointwise-expand"),
    pytest.param(96, 7, 7, 24, 1, 1, 0, 1, 0, id="pointwise-project-ragged"),
    pytest.param(3, 16, 16, 32, 3, 2, 1, 1, 113, id="full-3x3-s2-padvalue"),
    pytest.param(8, 9, 11, 16, 3, 1, 1, 1, 5, id="full-3x3-s1-odd"),
    pytest.param(32, 14, 14, 32, 3, 1, 1, 32, 17, id="depthwise-3x3-s1"),
    pytest.param(24, 15, 15, 24, 3, 2, 1, 24, 3, id="depthwise-3x3-s2-odd"),
    pytest.param(16, 12, 12, 16, 5, 2, 2, 16, 0, id="depthwise-5x5-s2"),
]


@pytest.mark.parametrize("c,h,w,o,k,s,p,groups,pad_value", CASES)
@pytest.mark.parametrize("x_all", [None, 255], ids=["random", "all255"])
def test_conv_requant_bit_exact(c, h, w, o, k, s, p, groups, pad_value, x_all):
    rng = np.random.default_rng(c * 100 + k)
    x, wt, bias, mult, shift = _case(rng, c, h, w, o, k, s, p, groups, x_all=x_all)
    if x_all == 255:
        wt[:] = -128  # every u8 x s8 pair at -65280: saturates vpmaddubsw unless handled
        wt[: o // 2] = 127
        bias[:] = 0
    kw = dict(s=s, p=p, groups=groups, pad_value=pad_value, lo=3, hi=250)
    got = _run_strategy("conv2d_requant", x, wt, bias, mult, shift, **kw)
    ref = _reference(x, wt, bias, mult, shift, **kw)
    assert got.dtype == np.uint8 and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)
    assert len(np.unique(ref)) > 1 or x_all == 255  # the case exercises more than one code


# the shape-aware default tiles through the strategy (gemm.default_knobs): a full 3x3 conv on a 7x7 output (im2col
# into 8-lane whole rows), K=16 expands on 16x16 pixels (2 x 64, 64 codes per store) and 8x12 pixels (6 x 32) and a
# K=48 -> 16 project on 56x56 pixels
# (packing over chunks of pixel tiles, `GemmKnobs.pack_tiles`) and a stem-like 3x3 s2 conv of 3 channels (K = 27)
CASES_VNNI512 = [*CASES[:4], pytest.param(16, 7, 7, 24, 3, 1, 1, 1, 9, id="full-3x3-7x7-ymm-rows"),
                 pytest.param(16, 16, 16, 48, 1, 1, 0, 1, 0, id="pointwise-k16-2x64-store64"),
                 pytest.param(16, 8, 12, 48, 1, 1, 0, 1, 0, id="pointwise-k16-6x32"),
                 pytest.param(48, 56, 56, 16, 1, 1, 0, 1, 0, id="pointwise-k48-56x56-pack-chunks"),
                 # the stem's shape (K = 27, stride 2) on 32x32 px: 2 x 64 storing 64 codes, per-lane shift
                 pytest.param(3, 64, 64, 32, 3, 2, 1, 1, 7, id="full-3x3-s2-k27-2x64-store64")]


@pytest.mark.parametrize("c,h,w,o,k,s,p,groups,pad_value", CASES_VNNI512)
def test_conv_requant_bit_exact_vnni512_target(c, h, w, o, k, s, p, groups, pad_value):
    rng = np.random.default_rng(11)
    x, wt, bias, mult, shift = _case(rng, c, h, w, o, k, s, p, groups)
    x[..., :2] = 255
    kw = dict(s=s, p=p, groups=groups, pad_value=pad_value, lo=0, hi=255)
    got = _run_strategy("conv2d_requant", x, wt, bias, mult, shift, target=VNNI512, **kw)
    np.testing.assert_array_equal(got, _reference(x, wt, bias, mult, shift, **kw))


@pytest.mark.parametrize("c,h,w,o", [(16, 14, 14, 96), (96, 7, 7, 24), (40, 28, 28, 48)], ids=lambda v: str(v))
@pytest.mark.parametrize("op", ["conv2d_requant", "conv2d"])
def test_pointwise_one_region_through_the_strategy_bit_exact(monkeypatch, c, h, w, o, op):
    """At the 2-thread VNNI-512 target, the strategy's default for pointwise convs on at most 784 px is the one-region
    GEMM (`GemmKnobs.chunks`, issue 20; every kernel parallel here): its codes, and its int32 accumulator, equal the
    reference integer executor's (`qcompile.ops.reference`)."""
    from qcompile.backends.tvm.schedules.parallel import ENV_MIN_US
    from qcompile.backends.tvm.schedules.x86.gemm import default_knobs
    from qcompile.backends.tvm.threads import target_threads

    monkeypatch.setenv(ENV_MIN_US, "0")
    assert target_threads(VNNI512) == 2 and default_knobs("vnni512", c, h * w, o, 2).chunks == 2
    rng = np.random.default_rng(c + h + o)
    x, wt, bias, mult, shift = _case(rng, c, h, w, o, 1, 1, 0, 1)
    x[..., :2] = 255
    kw = dict(s=1, p=0, groups=1, pad_value=0, lo=0, hi=255)
    got = _run_strategy(op, x, wt, bias, mult, shift, target=VNNI512, **kw)
    ref = _reference(x, wt, bias, mult, shift, requant=op == "conv2d_requant", **kw)
    assert len(np.unique(ref)) > 10
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("c,h,w,o,k,s,p,groups,pad_value", [CASES[0], CASES[2], CASES[5]])
def test_conv_accumulator_bit_exact(c, h, w, o, k, s, p, groups, pad_value):
    rng = np.random.default_rng(7)
    x, wt, bias, mult, shift = _case(rng, c, h, w, o, k, s, p, groups)
    kw = dict(s=s, p=p, groups=groups, pad_value=pad_value, lo=0, hi=255)
    got = _run_strategy("conv2d", x, wt, bias, mult, shift, **kw)
    ref = _reference(x, wt, bias, mult, shift, requant=False, **kw)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, ref)


def _gemm_operands(rng, k, p, o, shifts=(36, 40)):
    """Adversarial GEMM operands (x codes, int8 weights, bias, per-channel shift and multiplier): the first 8 pixels
    at code 255 against weights of -128 in half the channels (the largest accumulators), shifts in `shifts`,
    multipliers about 2^(shift - 10) so the codes spread."""
    x = rng.integers(0, 256, (k, p)).astype(np.uint8)
    x[:, :8] = 255
    w = rng.integers(-128, 128, (o, k)).astype(np.int8)
    w[: o // 2, :8] = -128
    bias = rng.integers(-1000, 1000, o).astype(np.int32) + 128 * 1024
    shift = rng.integers(*shifts, o).astype(np.int32)
    mult = (np.float64(2.0) ** (shift.astype(np.float64) - 10) * rng.uniform(0.5, 1.0, o)).astype(np.int32)
    return x, w, bias, shift, mult


def _gemm_ref(x, w, bias, mult, shift, lo, hi):
    acc = w.astype(np.int64) @ x.astype(np.int64) + bias[:, None]
    s = shift.astype(np.int64)[:, None]
    return np.clip((acc * mult.astype(np.int64)[:, None] + (np.int64(1) << (s - 1))) >> s, lo, hi)


DEFAULT_KNOBS = GemmKnobs(8, 16)


def _run_gemm(mode, x, w, bias, mult, shift, knobs=DEFAULT_KNOBS, target=AVX2, shift_min=None, instr=None,
             unroll_epilogue=True, lo=0, hi=255):
    k, p = x.shape
    o = w.shape[0]
    sm = int(shift.min()) if shift_min is None else shift_min
    func = pointwise_conv_x86(GemmConv(k, p, o, lo, hi, sm), mode, knobs, unroll_epilogue=unroll_epilogue)
    lib = tvm.compile(func, target=target)
    family = FAMILY[target]
    isa.check_instructions(
        lib,
        family,
        instr or {"u8s8": r"vpmaddubsw", "i16": r"vpmaddwd", "vnni": r"vpdpbusd\s+.*%ymm",
                  "vnni512": r"vpdpbusd\s+.*%zmm"}[mode],
    )
    if not isa.should_execute(family):
        pytest.skip(f"built and checked the {mode} assembly; this CPU cannot execute {family}")
    _, g, _, wdt = MODES[mode]
    out = tvm.runtime.tensor(np.zeros((o, p), np.uint8))
    bterm = bias_term(bias, mult, shift)
    lib(*(tvm.runtime.tensor(a) for a in (x, pack_weights(w, g, wdt), bterm, mult, shift)), out)
    return out.numpy()


@pytest.mark.parametrize("knobs", [GemmKnobs(8, 16), GemmKnobs(4, 24, False), GemmKnobs(2, 8)])
@pytest.mark.parametrize("shift_lo", [10, 24, 32, 40], ids=lambda s: f"shift>={s}")
def test_gemm_i16_exact_all_codes(knobs, shift_lo):
    """The int16 vpmaddwd path is exact for 8-bit codes, any tile, both requantize forms."""
    rng = np.random.default_rng(shift_lo)
    k, p, o = 37, 50, 16  # K not a multiple of the group, P not of the tile: both are padded
    x = rng.integers(0, 256, (k, p)).astype(np.uint8)
    w = rng.integers(-128, 128, (o, k)).astype(np.int8)
    bias = rng.integers(-1000, 1000, o).astype(np.int32)
    shift = rng.integers(shift_lo, shift_lo + 8, o).astype(np.int32)
    # keep the requantized value near the code range so the clamp is not the whole story
    mult = (np.float64(2.0) ** (shift.astype(np.float64) - 9) * rng.uniform(0.5, 1.0, o)).astype(np.int64)
    mult = np.clip(mult, 1, 2**31 - 1).astype(np.int32)
    ref = _gemm_ref(x, w, bias, mult, shift, 0, 255)
    assert len(np.unique(ref)) > 10
    np.testing.assert_array_equal(_run_gemm("i16", x, w, bias, mult, shift, knobs), ref)


def test_u8s8_exact_for_7bit_codes_and_saturates_for_8bit():
    """vpmaddubsw is exact for codes < 128 and really saturates at 255 x -128 (why the i16 path exists)."""
    rng = np.random.default_rng(1)
    k, p, o = 64, 32, 8
    mult = np.full(o, 2**20, np.int32)
    shift = np.full(o, 30, np.int32)  # acc / 1024
    x7 = rng.integers(0, 128, (k, p)).astype(np.uint8)
    w = rng.integers(-128, 128, (o, k)).astype(np.int8)
    bias = np.full(o, 128 * 1024, np.int32)
    ref = _gemm_ref(x7, w, bias, mult, shift, 0, 255)
    assert len(np.unique(ref)) > 10
    np.testing.assert_array_equal(_run_gemm("u8s8", x7, w, bias, mult, shift), ref)
    # 8-bit codes with -128 weights: each pair is 2*255*-128 = -65280, clipped to -32768 by vpmaddubsw
    x255 = np.full((k, p), 255, np.uint8)
    w_sat = np.full((o, k), -128, np.int8)
    big_bias = np.full(o, 2_200_000, np.int32)  # sum(w*x) = -2,088,960: acc lands inside the code range
    ref_sat = _gemm_ref(x255, w_sat, big_bias, mult, shift, 0, 255)
    assert ref_sat.min() > 0 and ref_sat.max() < 255
    assert not np.array_equal(_run_gemm("u8s8", x255, w_sat, big_bias, mult, shift), ref_sat)
    np.testing.assert_array_equal(_run_gemm("i16", x255, w_sat, big_bias, mult, shift), ref_sat)


def test_choose_mode_follows_the_saturation_bound():
    t = AVX2
    assert choose_mode(t, np.full((4, 8), 127, np.int8), 255) == "i16"  # 255*254 > 32767
    assert choose_mode(t, np.full((4, 8), 127, np.int8), 127) == "u8s8"  # 127*254 = 32258
    assert choose_mode(t, np.full((4, 8), -64, np.int8), 255) == "u8s8"  # 255*-128 = -32640
    assert choose_mode(t, np.full((4, 8), -65, np.int8), 255) == "i16"  # 255*-130 < -32768
    w4 = np.random.default_rng(0).integers(-8, 8, (32, 96)).astype(np.int8)  # 4-bit weights: always safe
    assert choose_mode(t, w4, 255) == "u8s8"
    assert choose_mode(VNNI512, np.full((4, 8), 127, np.int8), 255) == "vnni512"
    assert choose_mode(isa.target("avx-vnni"), np.full((4, 8), 127, np.int8), 255) == "vnni"
    assert choose_mode(AVX512, np.full((4, 8), 127, np.int8), 255) == "i16"  # AVX-512 without VNNI: int16 pairs


@pytest.mark.parametrize(
    "mode,knobs",
    [
        ("vnni", GemmKnobs(8, 16)),
        ("vnni512", GemmKnobs(4, 32)),
        ("vnni512", GemmKnobs(8, 8)),
        ("vnni512", GemmKnobs(2, 64, False)),
    ],
)
def test_gemm_vnni_exact_8bit(mode, knobs):
    rng = np.random.default_rng(3)
    k, p, o = 96, 49, 24
    x = np.concatenate([np.full((k, 8), 255, np.uint8), rng.integers(0, 256, (k, p - 8)).astype(np.uint8)], 1)
    w = rng.integers(-128, 128, (o, k)).astype(np.int8)
    bias = rng.integers(-1000, 1000, o).astype(np.int32) + 128 * 1024  # centre codes near 128
    shift = rng.integers(36, 40, o).astype(np.int32)
    mult = (np.float64(2.0) ** (shift.astype(np.float64) - 10)).astype(np.int32)
    vnni = VNNI512 if mode == "vnni512" else VNNI256
    ref = _gemm_ref(x, w, bias, mult, shift, 0, 255)
    assert len(np.unique(ref)) > 10
    np.testing.assert_array_equal(_run_gemm(mode, x, w, bias, mult, shift, knobs, target=vnni), ref)


def test_default_gemm_knobs_by_shape():
    """Which untuned tile a GEMM gets (issue 20, docs/peers.md session 12): a whole-row tile of 8-lane calls where
    that pads fewer of <= 64 pixels than 16 lanes would (MobileNetV2's 7x7 layers), 2 x 64 (64 codes per store,
    session 13) or 6 x 32 for K <= 28 where 64 or 32 divides P (the expands at 112 and 56 px, the stem), else
    12 x 16; other modes keep their tile whatever the shape."""
    from qcompile.backends.tvm.schedules.x86.gemm import default_knobs

    assert default_knobs("vnni512") == GemmKnobs(12, 16)
    for k in (160, 320, 576, 960, 16):  # 7x7: 49 px, 7 ymm vectors, 21 accumulators
        assert default_knobs("vnni512", k, 49) == GemmKnobs(3, 56, True, 8)
    assert default_knobs("vnni512", 40, 36) == GemmKnobs(4, 40, True, 8)  # 6x6: 5 vectors, 20 accumulators
    assert default_knobs("vnni512", 16, 12544) == GemmKnobs(2, 64, store64=True, vshift=True)  # 16->96 at 112 px
    assert default_knobs("vnni512", 24, 3136) == GemmKnobs(2, 64, store64=True, vshift=True)  # 24->144 at 56 px
    assert default_knobs("vnni512", 24, 96) == GemmKnobs(6, 32)  # 32 | P, not 64
    # K = 25-28 (session 15): the stem's im2col GEMM (K = 27 at 112 px) and the like take the same 2 x 64
    for k, p in ((27, 12544), (25, 3136), (28, 12544)):
        assert default_knobs("vnni512", k, p) == GemmKnobs(2, 64, store64=True, vshift=True), (k, p)
    assert default_knobs("vnni512", 27, 96) == GemmKnobs(6, 32)
    for k, p in ((16, 196), (32, 784), (29, 12544), (32, 3136), (96, 196), (64, 16), (64, 64)):
        # 14x14 (no 32 multiple), K = 29-32, 4x4 and 8x8 (8 and 16 lanes pad alike): the 12 x 16 tile
        assert default_knobs("vnni512", k, p) == GemmKnobs(12, 16), (k, p)
    assert default_knobs("vnni", 16, 49) == default_knobs("vnni", 16, 12544) == GemmKnobs(8, 16)
    for mode in ("u8s8", "i16"):  # AVX2: 12 ymm accumulators (session 17, tests/backends/tvm/test_avx2_tiles.py)
        assert default_knobs(mode, 16, 49) == GemmKnobs(12, 8)
        assert default_knobs(mode, 16, 12544) == default_knobs(mode, 96, 196) == default_knobs(mode) == GemmKnobs(6, 16)
    assert default_knobs("vnni512", 160, 5) == GemmKnobs(21, 8, True, 8)  # one vector: 21 channels


def test_default_gemm_knobs_pack_over_pixel_chunks_where_k_exceeds_o_on_large_maps():
    """`default_knobs(mode, K, P, O)` (issue 20, docs/peers.md session 13): the large project layers (K > O,
    P >= 3136, no padded pixels) pack their activations over chunks of `PACK_TILES` pixel tiles; the expands, the
    28 px projects, K == O, padded pixels, other modes and calls without O keep the block packing."""
    from qcompile.backends.tvm.schedules.x86.gemm import default_knobs
    from qcompile.errors import ConfigError

    for k, p, o in ((32, 12544, 16), (96, 3136, 24), (144, 3136, 24)):  # MobileNetV2's 112 and 56 px projects
        # 64 | P: 2 x 64 tiles storing 64 codes at a time, chunks of one 64-pixel tile
        assert default_knobs("vnni512", k, p, o) == GemmKnobs(2, 64, pack_tiles=1, store64=True, vshift=True), (k, p, o)
        assert default_knobs("vnni512", k, p) == GemmKnobs(12, 16), (k, p)  # no O: unchanged
    assert default_knobs("vnni512", 48, 3152, 16) == GemmKnobs(12, 16, pack_tiles=4)  # 16 | P only: 4 x 16 px
    assert default_knobs("vnni512", 48, 3136, 16).pack_tiles == 1  # CASES_VNNI512's pack-chunks case
    assert default_knobs("vnni512", 16, 12544, 96) == GemmKnobs(2, 64, store64=True, vshift=True)  # expands: K < O
    assert default_knobs("vnni512", 24, 3136, 144) == GemmKnobs(2, 64, store64=True, vshift=True)
    for k, p, o in ((144, 784, 32), (192, 784, 32), (384, 196, 64), (32, 3136, 32), (96, 3249, 24), (960, 49, 160)):
        assert default_knobs("vnni512", k, p, o).pack_tiles == 0, (k, p, o)
    assert default_knobs("vnni", 96, 3136, 24) == GemmKnobs(8, 16)
    for mode in ("u8s8", "i16"):  # the AVX2 tile, block packing (session 17)
        assert default_knobs(mode, 96, 3136, 24) == GemmKnobs(6, 16)
    with pytest.raises(ConfigError, match="GemmKnobs.pack_tiles"):
        GemmKnobs(12, 16, pack_tiles=-1)


@pytest.mark.parametrize("k,p,o,pack_tiles,chunks", [
    (96, 3136, 24, 4, 49),  # MobileNetV2's 96x56x56 -> 24: 196 tiles of 16 px, chunks of 4
    (40, 784, 16, 8, 7),  # 49 tiles: chunks of 7 (the largest divisor not above 8)
    (48, 200, 24, 4, 13),  # 13 tiles, the last one padded (200 -> 208): chunks of 1
    (37, 196, 16, 2, 13),  # K not a multiple of 4 and padded pixels: the per-element test stays
], ids=lambda v: str(v))
def test_gemm_pack_over_pixel_chunks_parallel_and_exact(monkeypatch, k, p, o, pack_tiles, chunks):
    """`GemmKnobs.pack_tiles`: the packing is one parallel loop over chunks of pixel tiles (then the GEMM's own
    region over pixel x channel tiles), and gives the reference codes (integer_semantics.md `requant`) with the
    largest codes against the most negative weights."""
    from benchmarks.parallel_split import parallel_loops
    from qcompile.backends.tvm.schedules.parallel import ENV_MIN_US

    monkeypatch.setenv(ENV_MIN_US, "0")  # every region, whatever the size
    knobs = GemmKnobs(12, 16, pack_tiles=pack_tiles)
    func = pointwise_conv_x86(GemmConv(k, p, o, shift_min=36), "vnni512", knobs)
    loops = [(lp.var, lp.extent) for lp in parallel_loops(func)]
    assert loops == [("j_0", chunks), ("j_0_c_0_fused", -(-p // 16) * (o // fit_to(o, 12)))], loops
    rng = np.random.default_rng(k + p)
    x, w, bias, shift, mult = _gemm_operands(rng, k, p, o)
    ref = _gemm_ref(x, w, bias, mult, shift, 0, 255)
    assert len(np.unique(ref)) > 10
    np.testing.assert_array_equal(_run_gemm("vnni512", x, w, bias, mult, shift, knobs, target=VNNI512), ref)


@pytest.mark.parametrize("k,p,o,knobs,lo,hi,shifts", [
    (16, 256, 12, GemmKnobs(2, 64, store64=True), 0, 255, (36, 40)),  # shift >= 32: the int32 tail
    (24, 200, 6, GemmKnobs(3, 64, store64=True), 3, 250, (20, 30)),  # int64 tail, padded pixels, lo > 0, hi < 255
    (16, 256, 12, GemmKnobs(2, 128, store64=True), 0, 255, (20, 44)),  # two 64-pixel stores per channel
], ids=lambda v: str(v))
def test_gemm_store64_exact_and_packs(k, p, o, knobs, lo, hi, shifts):
    """`GemmKnobs.store64`: the epilogue narrows 64 codes per store with `vpackssdw`/`vpackusdw` + `vpackuswb`
    (no `vpmovusdb`), and the codes equal the reference (integer_semantics.md `requant`) with codes below 0 and
    above 255 before the clamp, both shift tails and clamp bounds inside [0, 255]."""
    rng = np.random.default_rng(k + p)
    x, w, bias, shift, mult = _gemm_operands(rng, k, p, o, shifts)
    bias[0] -= 300 * 1024  # pre-clamp codes far below 0 and far above 255
    bias[-1] += 300 * 1024
    ref = _gemm_ref(x, w, bias, mult, shift, lo, hi)
    assert len(np.unique(ref)) > 100 and (ref == lo).any() and (ref == hi).any()
    func = pointwise_conv_x86(GemmConv(k, p, o, lo=lo, hi=hi, shift_min=int(shift.min())), "vnni512", knobs)
    asm = isa.assembly(tvm.compile(func, target=VNNI512))
    assert re.search(r"vpack(ss|us)dw\s", asm) and re.search(r"vpackuswb\s", asm) and "vpmovusdb" not in asm
    got = _run_gemm("vnni512", x, w, bias, mult, shift, knobs, target=VNNI512, lo=lo, hi=hi)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("k,p,o,knobs,lo,hi,shifts", [
    (16, 256, 12, GemmKnobs(2, 64, store64=True, vshift=True), 0, 255, (32, 63)),  # the default's tile, every shift
    (24, 200, 6, GemmKnobs(3, 64, store64=True, vshift=True), 3, 250, (36, 48)),  # padded pixels, lo > 0, hi < 255
    (16, 256, 12, GemmKnobs(2, 128, store64=True, vshift=True), 0, 255, (40, 63)),  # 128 lanes: eight zmm shifts
    (32, 96, 24, GemmKnobs(12, 16, vshift=True), 0, 6, (32, 45)),  # one zmm per channel, ReLU6-like clamp
    (40, 49, 20, GemmKnobs(3, 56, True, 8, vshift=True), 0, 255, (33, 50)),  # 8-lane ymm: the plain shift
    (16, 256, 12, GemmKnobs(2, 64, store64=True, vshift=True), 0, 255, (20, 44)),  # some shift < 32: int64 tail
], ids=lambda v: str(v))
def test_gemm_vshift_exact(k, p, o, knobs, lo, hi, shifts):
    """`GemmKnobs.vshift` (`requant.requant_expr(..., tail32="shr")`): the int32 tail shifts lane by lane
    (`vpsravd`, no `vpsrad` by an xmm count) on 16-lane vectors, and the codes equal the reference
    (integer_semantics.md `requant`) for shifts 32-62 (per channel, so every lane count of `s - 32` from 0 to 30),
    codes far below 0 and above 255 before the clamp, clamp bounds inside [0, 255]; a layer with a shift below 32
    keeps the int64 tail, exactly."""
    rng = np.random.default_rng(k + p + shifts[0])
    x = rng.integers(0, 256, (k, p)).astype(np.uint8)
    x[:, :8] = 255
    w = rng.integers(-128, 128, (o, k)).astype(np.int8)
    w[: o // 2, :8] = -128
    shift = rng.integers(shifts[0], min(shifts[1], 41), o).astype(np.int32)
    shift[:3] = (shifts[0], shifts[1] - 1, (shifts[0] + shifts[1]) // 2)  # the range's ends (62: 30 lanes of shift)
    # M / 2^s about 1/256 where M < 2^31 allows (s <= 39), so the codes spread; the bias centres them in [lo, hi],
    # and pushes the first channel's below 0 and the last one's above 255 before the clamp
    mult = np.minimum(np.ldexp(rng.uniform(0.5, 1.0, o), shift - 8), 2**31 - 1).astype(np.int32)
    scale = mult / np.ldexp(1.0, shift)
    centre = np.full(o, (lo + hi) / 2)
    centre[0], centre[-1] = -300, 600
    bias = np.clip(np.round(centre / scale), -(2**30), 2**30).astype(np.int32)
    ref = _gemm_ref(x, w, bias, mult, shift, lo, hi)
    assert len(np.unique(ref)) >= min(50, hi - lo) and (ref == lo).any() and (ref == hi).any()
    func = pointwise_conv_x86(GemmConv(k, p, o, lo=lo, hi=hi, shift_min=int(shift.min())), "vnni512", knobs)
    asm = isa.assembly(tvm.compile(func, target=VNNI512))
    if int(shift.min()) >= 32 and knobs.lanes != 8:
        assert re.search(r"vpsravd\s+%zmm", asm) and not re.search(r"vpsrad\s+%xmm\d+, %zmm", asm)
    got = _run_gemm("vnni512", x, w, bias, mult, shift, knobs, target=VNNI512, lo=lo, hi=hi,
                    instr=r"vpdpbusd\s+.*%ymm" if knobs.lanes == 8 else None)
    np.testing.assert_array_equal(got, ref)


def test_gemm_vshift_needs_vnni512():
    from qcompile.errors import ConfigError

    with pytest.raises(ConfigError, match="GemmKnobs.vshift"):
        pointwise_conv_x86(GemmConv(16, 256, 8, shift_min=36), "vnni", GemmKnobs(2, 64, vshift=True))


def test_gemm_store64_needs_64_pixel_tiles_and_vnni512():
    from qcompile.errors import ConfigError

    with pytest.raises(ConfigError, match="GemmKnobs.tp"):
        GemmKnobs(6, 32, store64=True)
    with pytest.raises(ConfigError, match="GemmKnobs.store64"):
        pointwise_conv_x86(GemmConv(16, 256, 8), "vnni", GemmKnobs(2, 64, store64=True))


def test_gemm_knobs_lanes_must_name_an_intrinsic_of_the_mode():
    from qcompile.backends.tvm.schedules.x86.gemm import tile_intrinsic
    from qcompile.errors import ConfigError

    with pytest.raises(ConfigError, match="GemmKnobs.lanes"):
        GemmKnobs(3, 56, True, 4)
    assert tile_intrinsic("vnni512", GemmKnobs(3, 56, True, 8))[1] == 8
    assert tile_intrinsic("vnni512", GemmKnobs(12, 16, True, 16))[1] == 16
    for mode in ("vnni", "u8s8", "i16"):  # no 16-lane form of an 8-lane mode
        with pytest.raises(ConfigError, match="GemmKnobs.lanes"):
            pointwise_conv_x86(GemmConv(16, 49, 8), mode, GemmKnobs(4, 16, True, 16))


@pytest.mark.parametrize("k,p,o", [(160, 49, 48), (37, 36, 16), (960, 49, 20), (16, 1024, 24), (24, 96, 36)],
                         ids=lambda v: str(v))
def test_gemm_default_tile_by_shape_exact_on_avx512_vnni(k, p, o):
    """The shape-aware default tiles (8-lane whole rows at 7x7 and 6x6, 6 x 32 for K <= 24) give the reference
    codes with the largest codes against the most negative weights, K not a multiple of 4 (37), O not a multiple
    of the 3-channel tile (20: `fit_to` takes 2), and the 8-lane form really is ymm."""
    from qcompile.backends.tvm.schedules.x86.gemm import default_knobs

    rng = np.random.default_rng(k + p + o)
    x, w, bias, shift, mult = _gemm_operands(rng, k, p, o)
    knobs = default_knobs("vnni512", k, p)
    assert knobs != GemmKnobs(12, 16)
    ref = _gemm_ref(x, w, bias, mult, shift, 0, 255)
    assert len(np.unique(ref)) > 10
    instr = r"vpdpbusd\s+.*%ymm" if knobs.lanes == 8 else r"vpdpbusd\s+.*%zmm"
    got = _run_gemm("vnni512", x, w, bias, mult, shift, knobs, target=VNNI512, instr=instr)
    np.testing.assert_array_equal(got, ref)
    if knobs.lanes == 8:
        asm = isa.assembly(tvm.compile(pointwise_conv_x86(GemmConv(k, p, o, shift_min=36), "vnni512", knobs),
                                       target=VNNI512))
        assert not re.search(r"vpdpbusd\s+.*%zmm", asm)


@pytest.mark.parametrize("k,p,split", [(96, 49, True), (384, 196, True), (16, 12544, False), (37, 49, False)],
                         ids=lambda v: str(v))
def test_gemm_packing_of_padded_pixels_is_split_from_its_zero_fill(k, p, split):
    """`schedule_pack_padding`: where pixels are padded to whole tiles the packing is a zero fill plus a copy of the
    P real pixels with no test per element; no fill where nothing is padded, nor where K % 4 pads the reduction too
    (not a padding pattern: the per-element test stays). Bit-exact either way (the other GEMM tests; here 7x7)."""
    script = pointwise_conv_x86(GemmConv(k, p, 24, shift_min=36), "vnni512", GemmKnobs(12, 16)).script()
    assert ("xpack_pad_const" in script) == split
    if split:
        assert "if_then_else" not in script.split('sblock("xpack")')[1].split("sblock(")[0]
    old = pointwise_conv_x86(GemmConv(k, p, 24, shift_min=36), "vnni512", GemmKnobs(12, 16), split_pack_padding=False)
    assert "xpack_pad_const" not in old.script()


def test_gemm_unrolled_epilogue_keeps_the_tile_in_registers():
    """`unroll_epilogue` (the x86 default): the 12 x 16 tile's epilogue reads all 12 zmm accumulators in
    registers; without it LLVM stores them to the stack and the epilogue loop reloads them. Bit-exact both ways."""
    spill = re.compile(r"vmovdq[au]64\s+%zmm\d+, -?\d*\(%rsp\)")
    gc = GemmConv(16, 12544, 96, shift_min=36)
    asm = {un: isa.assembly(tvm.compile(pointwise_conv_x86(gc, "vnni512", GemmKnobs(12, 16), unroll_epilogue=un),
                                        target=VNNI512)) for un in (False, True)}
    assert spill.search(asm[False]) and not spill.search(asm[True])
    rng = np.random.default_rng(9)
    k, p, o = 20, 200, 24
    x = rng.integers(0, 256, (k, p)).astype(np.uint8)
    w = rng.integers(-128, 128, (o, k)).astype(np.int8)
    bias = rng.integers(-1000, 1000, o).astype(np.int32) + 128 * 1024
    shift = rng.integers(30, 40, o).astype(np.int32)  # both epilogue tails (shift < 32 and >= 32)
    mult = (np.float64(2.0) ** (shift.astype(np.float64) - 12)).astype(np.int32)
    ref = _gemm_ref(x, w, bias, mult, shift, 0, 255)
    for un in (False, True):
        got = _run_gemm("vnni512", x, w, bias, mult, shift, GemmKnobs(12, 16), target=VNNI512, unroll_epilogue=un)
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("mode,target,knobs", [
    ("vnni512", VNNI512, GemmKnobs(12, 16)), ("vnni", VNNI256, GemmKnobs(8, 16)), ("i16", AVX2, GemmKnobs(8, 16)),
    ("vnni512", VNNI512, GemmKnobs(3, 56, True, 8))])
@pytest.mark.parametrize("p", [49, 784])
def test_gemm_pack_in_tiles_exact(monkeypatch, mode, target, knobs, p):
    """The one-region pointwise GEMM (activations packed per pixel tile inside the parallel loop, issue 20) gives
    the reference codes, with a padded pixel tile (49 px) and 49 tiles (784 px), every kernel parallel."""
    from qcompile.backends.tvm.schedules.parallel import ENV_MIN_US
    from qcompile.backends.tvm.schedules.x86.gemm import ENV_PACK_IN_TILES

    monkeypatch.setenv(ENV_PACK_IN_TILES, "1")
    monkeypatch.setenv(ENV_MIN_US, "0")
    rng = np.random.default_rng(5)
    k, o = 48, 24  # K <= 2 O: the one-region schedule applies
    x = rng.integers(0, 256, (k, p)).astype(np.uint8)
    x[:, :8] = 255
    w = rng.integers(-128, 128, (o, k)).astype(np.int8)
    bias = rng.integers(-1000, 1000, o).astype(np.int32) + 128 * 1024
    shift = rng.integers(36, 40, o).astype(np.int32)
    mult = (np.float64(2.0) ** (shift.astype(np.float64) - 10)).astype(np.int32)
    ref = _gemm_ref(x, w, bias, mult, shift, 0, 255)
    assert len(np.unique(ref)) > 10
    instr = r"vpdpbusd\s+.*%ymm" if knobs.lanes == 8 else None
    np.testing.assert_array_equal(_run_gemm(mode, x, w, bias, mult, shift, knobs, target=target, instr=instr), ref)


@pytest.mark.parametrize("mode,target,k,p,o,knobs,blocks", [
    # 7 px: one padded pixel tile of 8-lane ymm rows (49 -> 56), 8 blocks of 3 channels split 2 ways
    ("vnni512", VNNI512, 48, 49, 24, GemmKnobs(3, 56, False, 8, chunks=2), 2),
    # 14 px: 13 pixel tiles, the last padded, channels outside pixels inside each block
    ("vnni512", VNNI512, 40, 196, 48, GemmKnobs(12, 16, False, chunks=2), 2),
    # K not a multiple of 4 (the packing keeps its per-element test), pixels outside channels inside each block
    ("vnni512", VNNI512, 37, 196, 16, GemmKnobs(8, 16, True, chunks=2), 2),
    # 64 codes per store (store64) and three blocks of three channel tiles
    ("vnni512", VNNI512, 16, 256, 18, GemmKnobs(2, 64, False, store64=True, chunks=3), 3),
    # the 8-lane modes: 256-bit vpdpbusd and the int16 vpmaddwd
    ("vnni", VNNI256, 48, 100, 32, GemmKnobs(8, 16, False, chunks=2), 2),
    ("i16", AVX2, 24, 64, 16, GemmKnobs(8, 16, False, chunks=2), 2),
], ids=["7px-ymm-rows", "14px", "k37-pixels-outer", "store64-3-blocks", "vnni256", "i16"])
def test_gemm_chunks_one_region_exact(monkeypatch, mode, target, k, p, o, knobs, blocks):
    """`GemmKnobs.chunks` (issue 20): one parallel region of `chunks` blocks of channel tiles, each packing all the
    activations into its own buffer (`conv.schedule_gemm_chunks`), gives the reference codes (integer_semantics.md
    `requant`) with the largest codes against the most negative weights; the packing buffer is the whole padded
    `K/4 x Pp x 4` (what the tiles' vector loads read), allocated inside the parallel loop."""
    from benchmarks.parallel_split import parallel_loops
    from qcompile.backends.tvm.schedules.parallel import ENV_MIN_US

    monkeypatch.setenv(ENV_MIN_US, "0")  # every region, whatever the size
    _, g, _, _ = MODES[mode]
    func = pointwise_conv_x86(GemmConv(k, p, o, shift_min=36), mode, knobs)
    assert [lp.extent for lp in parallel_loops(func)] == [blocks]
    script = func.script()
    kb, tp = -(-k // g), knobs.tp
    pp = -(-p // tp) * tp if knobs.lanes != 8 else -(-p // 8) * 8
    assert f"xpack = T.sblock_alloc_buffer(({kb}, {pp}, {g})" in script, script[:2000]
    rng = np.random.default_rng(k * p + o)
    x, w, bias, shift, mult = _gemm_operands(rng, k, p, o)
    if mode == "u8s8":
        w //= 2
    ref = _gemm_ref(x, w, bias, mult, shift, 0, 255)
    assert len(np.unique(ref)) > 10
    instr = r"vpdpbusd\s+.*%ymm" if knobs.lanes == 8 else None
    np.testing.assert_array_equal(_run_gemm(mode, x, w, bias, mult, shift, knobs, target=target, instr=instr), ref)


# (c, h, o, k, stride, pad, pad_value, knobs, chunks): the stem's geometry (3x3 s2, K = 27) on 64 px, 8 output rows
# of 32 px per chunk; a 3x3 stride-1 conv whose last chunk reads the bottom padding row, 2 rows of 64 px (4 asked,
# the smallest multiple that divides 16 rows and makes whole 64-px tiles is 4: 4 chunks) with channels outside;
# a 5x5 stride-2 conv with padding 2 on 12x12 outputs (1 row = 12 px: 4 rows make 48, three 16-px tiles)
CONV_ROWS_CASES = [
    pytest.param(3, 64, 32, 3, 2, 1, 0, GemmKnobs(2, 64, store64=True, vshift=True), 4, id="stem-k27-2x64"),
    pytest.param(8, 16, 16, 3, 1, 1, 7, GemmKnobs(4, 64, False, conv_rows=4), 4, id="3x3-s1-padvalue-channels-outer"),
    pytest.param(4, 24, 24, 5, 2, 2, 0, GemmKnobs(12, 16, conv_rows=1), 3, id="5x5-s2-rows-of-4"),
    # one input channel: the padded copy has no channel loop under the chunk, so its fill/copy split goes to the
    # rows (at the chunk loop it dropped the tile loops: test_zero_rounding's 1-channel conv failed, session 16)
    pytest.param(1, 16, 16, 3, 1, 1, 78, GemmKnobs(2, 64, store64=True, vshift=True), 2, id="3x3-one-channel"),
]


@pytest.mark.parametrize("c,h,o,k,s,pad,pad_value,knobs,chunks", CONV_ROWS_CASES)
def test_full_conv_rows_one_region_exact(monkeypatch, c, h, o, k, s, pad, pad_value, knobs, chunks):
    """`GemmKnobs.conv_rows` (issue 20, session 16): a full conv (im2col) in one parallel region over chunks of whole
    output rows, each padding and packing its own input rows (`gemm.schedule_conv_rows`), gives the reference codes
    (integer_semantics.md `conv2d`, `requant`), padding value included; `conv_rows=0` (the separate padding,
    packing and tile regions) gives the same. Every kernel parallel: one region of `chunks` chunks, against three
    loops (packing, tiles; the padded copy serial) before."""
    from benchmarks.parallel_split import parallel_loops
    from qcompile.backends.tvm.schedules.conv import ConvGeometry
    from qcompile.backends.tvm.schedules.parallel import ENV_MIN_US

    monkeypatch.setenv(ENV_MIN_US, "0")
    geom = ConvGeometry(c, h, h, k, k, (s, s), (pad, pad), pad_value=pad_value)
    gc = GemmConv(c * k * k, geom.ho * geom.wo, o, shift_min=34, conv=geom)
    rng = np.random.default_rng(c * h + k)
    x, wt, bias, mult, shift = _case(rng, c, h, h, o, k, s, pad, 1)
    x[..., :2] = 255
    wt[: o // 2] = -128  # the largest codes against the most negative weights
    kw = dict(s=s, p=pad, groups=1, pad_value=pad_value, lo=0, hi=255)
    ref = _reference(x, wt, bias, mult, shift, **kw).reshape(o, -1)
    assert len(np.unique(ref)) > 10
    for kn, loops in ((knobs, [chunks]), (dataclasses.replace(knobs, conv_rows=0), None)):
        func = pointwise_conv_x86(gc, "vnni512", kn)
        got_loops = [lp.extent for lp in parallel_loops(func)]
        assert got_loops == loops if loops else len(got_loops) == 2, got_loops
        lib = tvm.compile(func, target=VNNI512)
        isa.check_instructions(lib, FAMILY[VNNI512], INSTR["avx512-vnni"])
        if not isa.should_execute(FAMILY[VNNI512]):
            pytest.skip("built and checked the avx512-vnni assembly; this CPU cannot execute it")
        out = tvm.runtime.tensor(np.zeros((o, gc.p), np.uint8))
        args = (x[0], pack_weights(wt, 4, "int8"), bias_term(bias, mult, shift), mult, shift)
        lib(*(tvm.runtime.tensor(a) for a in args), out)
        np.testing.assert_array_equal(out.numpy(), ref, err_msg=str(kn))


def test_full_conv_rows_fall_back_where_no_chunk_is_whole_tiles():
    """Pixels padded to whole tiles (9 x 9 outputs, 16-px tiles): no chunk of rows is whole tiles, so
    `conv_rows` builds the separate regions (`gemm.conv_rows_chunk` is 0)."""
    from qcompile.backends.tvm.schedules.conv import ConvGeometry, gemm_tile
    from qcompile.backends.tvm.schedules.x86.gemm import conv_rows_chunk

    geom = ConvGeometry(8, 9, 9, 3, 3, (1, 1), (1, 1))
    assert conv_rows_chunk(gemm_tile(72, 81, 16, 4, 12, 16, 8, 16), geom, 8) == 0
    stem = ConvGeometry(3, 224, 224, 3, 3, (2, 2), (1, 1))
    assert conv_rows_chunk(gemm_tile(27, 12544, 32, 4, 2, 64, 8, 16), stem, 8) == 8  # 14 chunks of 896 px
    assert conv_rows_chunk(gemm_tile(27, 12544, 32, 4, 2, 64, 8, 16), stem, 1) == 4  # 4 x 112 = 7 tiles of 64
    script = pointwise_conv_x86(GemmConv(72, 81, 16, conv=geom), "vnni512", GemmKnobs(12, 16)).script()
    assert "xpad = T.sblock_alloc_buffer((8, 11, 11)" in script  # the whole padded input, at the root


# (k, p, o, knobs): pixel-padded tiles of every epilogue width; p=5 pads 11 pixels, more than a row, so the last
# ceil(11/5) = 3 channels take the clamped read
FUSED_ADD_CASES = [
    pytest.param(64, 196, 24, GemmKnobs(12, 16, False, chunks=2), id="14px-one-region"),
    pytest.param(64, 196, 36, GemmKnobs(12, 16), id="14px-two-regions"),
    pytest.param(40, 49, 12, GemmKnobs(3, 56, True, 8), id="7px-ymm-rows"),
    pytest.param(24, 100, 6, GemmKnobs(2, 64, store64=True, vshift=True), id="store64-vshift"),
    pytest.param(8, 5, 8, GemmKnobs(4, 16), id="5px-rows-past-the-tensor"),
]


@pytest.mark.parametrize("k,p,o,knobs", FUSED_ADD_CASES)
def test_gemm_fused_add_padded_pixels_exact(monkeypatch, k, p, o, knobs):
    """A residual add fused into a GEMM whose pixels are padded to whole tiles (issue 20, session 15: MobileNetV2's
    14 px and 7 px project + add layers): with `pad_skip` (default) the skip tensor is read with contiguous vector
    loads (`conv.gemm_requant_stages`), with `add32` (default) the add runs in int32 (`requant.add_int32`), and the
    codes equal the reference `requantize` then `add` (integer_semantics.md) for extreme codes, multipliers that
    are not powers of two and a negative offset, as the kernel before (one scalar load per pixel, int64) did."""
    from qcompile.backends.tvm.schedules.parallel import ENV_MIN_US
    from qcompile.backends.tvm.schedules.requant import EpilogueStep

    monkeypatch.setenv(ENV_MIN_US, "0")  # parallel regions whatever the size
    add = dict(multiplier_a=(1 << 30) - 12345, multiplier_b=(3 << 28) + 777, offset=(1 << 30) - (40 << 31), shift=31,
               lo=0, hi=255)
    post = (EpilogueStep("add", tuple(add[f] for f in ("multiplier_a", "multiplier_b", "offset", "shift", "lo",
                                                        "hi"))),)
    rng = np.random.default_rng(k * p + o)
    x, w, bias, shift, mult = _gemm_operands(rng, k, p, o)
    skip = rng.integers(0, 256, (o, p)).astype(np.uint8)
    skip[:, -1] = 255  # the last pixel: what the clamped read repeats
    skip[-1, :] = 0
    code = torch.from_numpy(_gemm_ref(x, w, bias, mult, shift, 0, 255).astype(np.uint8))
    ref = R.add(code, torch.from_numpy(skip), **add).numpy()
    assert len(np.unique(ref)) > min(20, ref.size // 4) and (ref == 0).any()
    bterm = bias_term(bias, mult, shift)
    got, loads = {}, {}
    for pad_skip in (True, False):
        # the kernel before session 15 (clamped skip index, the add in int64) and the default
        func = pointwise_conv_x86(GemmConv(k, p, o, shift_min=36, post=post), "vnni512", knobs, pad_skip=pad_skip,
                                  add32=pad_skip)
        # the skip tensor read at the output's own index (a contiguous vector), not only at the clamped one
        loads[pad_skip] = "skip0[v_c, v_j]" in func.script()
        lib = tvm.compile(func, target=VNNI512)
        if not isa.should_execute("avx512-vnni"):
            continue
        out = tvm.runtime.tensor(np.zeros((o, p), np.uint8))
        lib(*(tvm.runtime.tensor(a) for a in (x, pack_weights(w, 4, "int8"), bterm, mult, shift, skip)), out)
        got[pad_skip] = out.numpy()
    assert loads == {True: True, False: False}
    if not got:
        pytest.skip("built and checked the avx512-vnni assembly; this CPU cannot execute it")
    np.testing.assert_array_equal(got[True], ref)
    np.testing.assert_array_equal(got[False], ref)


def test_gemm_chunks_fall_back_to_two_regions(monkeypatch):
    """Where the channel tiles do not split into `chunks` equal blocks, or the kernel stays serial, `chunks` builds
    the two-region kernel (the packing over reduction blocks, then the tiles)."""
    from benchmarks.parallel_split import parallel_loops
    from qcompile.backends.tvm.schedules.parallel import ENV_MIN_US
    from qcompile.errors import ConfigError

    def extents(knobs, k=64, p=196, o=36):
        return [lp.extent for lp in parallel_loops(pointwise_conv_x86(GemmConv(k, p, o), "vnni512", knobs))]

    monkeypatch.setenv(ENV_MIN_US, "0")
    assert extents(GemmKnobs(12, 16, chunks=2)) == [16, 13 * 3]  # 3 channel tiles: two regions
    assert extents(GemmKnobs(12, 16, chunks=3)) == [3]
    monkeypatch.delenv(ENV_MIN_US)
    assert extents(GemmKnobs(12, 16, chunks=3), k=16, p=16, o=36) == []  # 9 kMAC: serial
    with pytest.raises(ConfigError, match="GemmKnobs.chunks"):
        GemmKnobs(12, 16, chunks=-1)
    with pytest.raises(ConfigError, match="GemmKnobs.pack_tiles"):
        GemmKnobs(12, 16, pack_tiles=4, chunks=2)


def test_default_gemm_knobs_one_region_at_two_threads():
    """`default_knobs(mode, K, P, O, threads)` (issue 20, docs/peers.md session 14): at 2 threads MobileNetV2's
    7-28 px GEMMs take one region of 2 channel-tile blocks; the 56 and 112 px ones, other thread counts, the
    8-lane modes, unequal blocks and serial kernels keep the two-region kernel of the same tile."""
    from benchmarks.pack_axis import MBV2_GEMMS
    from qcompile.backends.tvm.schedules.x86.gemm import CHUNK_MAX_P, default_knobs

    for k, p, o, _ in MBV2_GEMMS:
        two = default_knobs("vnni512", k, p, o, 2)
        plain = default_knobs("vnni512", k, p, o)
        if p <= CHUNK_MAX_P:
            assert two == dataclasses.replace(plain, chunks=2, p_outer=False), (k, p, o)
        else:
            assert two == plain and plain.chunks == 0, (k, p, o)
        for threads in (None, 1, 4):
            assert default_knobs("vnni512", k, p, o, threads) == plain, (k, p, o, threads)
    assert default_knobs("vnni", 96, 196, 576, 2).chunks == 0
    assert default_knobs("vnni512", 960, 49, 21, 2).chunks == 0  # 7 blocks of 3 channels: unequal at 2
    assert default_knobs("vnni512", 16, 16, 16, 2).chunks == 0  # 16 kMAC: a serial kernel


def test_strategy_does_not_apply_off_x86_or_batch():
    params = {"x_shape": (1, 8, 4, 4), "w_shape": (8, 8, 1, 1), "out_shape": (1, 8, 4, 4), "groups": 1}
    arm = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    assert select_strategy(OpCall("conv2d_requant", params, arm)) is None or not select_strategy(
        OpCall("conv2d_requant", params, arm)
    ).name.startswith("x86")
    batch2 = dict(params, x_shape=(2, 8, 4, 4), out_shape=(2, 8, 4, 4))
    s = select_strategy(OpCall("conv2d_requant", batch2, AVX2))
    assert s is None or not s.name.startswith("x86")


def _run_call(op, params, args_np, consts_np, target=AVX2):
    """Emit one OpCall with `args_np` as VM inputs and `consts_np` as Relax constants; run it."""
    call = OpCall(op, params, target)
    strat = select_strategy(call)
    assert strat is not None and strat.name.startswith("x86"), strat
    bb = relax.BlockBuilder()
    vs = [relax.Var(f"a{i}", relax.TensorType(a.shape, str(a.dtype))) for i, a in enumerate(args_np)]
    with bb.function("main", vs):
        with bb.dataflow():
            y = strat.emit(bb, call, [*vs, *(relax.const(c) for c in consts_np)])
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    ex = tvm.compile(bb.get(), target=target)
    family = FAMILY[target]
    if op.startswith(("linear", "conv")):  # add / mean are plain vector code: no dot-product instruction
        isa.check_instructions(ex, family, INSTR[family] if op.startswith("conv") or family == "avx2" else r"vpdpbusd")
    if not isa.should_execute(family):
        pytest.skip(f"built and checked the {family} assembly; this CPU cannot execute it")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*(tvm.runtime.tensor(a) for a in args_np)).numpy()


@pytest.mark.parametrize("shape", [(1, 24, 56, 56), (1, 5, 3, 3)])
def test_add_bit_exact(shape):
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, shape).astype(np.uint8)
    b = rng.integers(0, 256, shape).astype(np.uint8)
    kw = dict(multiplier_a=1 << 29, multiplier_b=3 << 27, offset=(1 << 29) - (90 << 30), shift=30, lo=0, hi=255)
    ref = R.add(torch.from_numpy(a), torch.from_numpy(b), **kw).numpy()
    got = _run_call("add", dict(kw, shapes=(shape, shape), node="add"), [a, b], [])
    assert len(np.unique(ref)) > min(50, ref.size // 3)
    np.testing.assert_array_equal(got, ref)


def test_mean_bit_exact():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (1, 40, 7, 7)).astype(np.uint8)
    kw = dict(multiplier=1 << 24, offset=(1 << 29) - (20 << 30), shift=30, lo=0, hi=255)
    ref = R.mean(torch.from_numpy(x), **kw).numpy()
    got = _run_call("mean", dict(kw, shapes=((1, 40, 7, 7),), node="mean"), [x], [])
    assert len(np.unique(ref)) > 5
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("requant", [True, False])
@pytest.mark.parametrize("target,o", [(AVX2, 24), (VNNI512, 24), (VNNI512, 1000)], ids=["avx2", "vnni", "vnni-o1000"])
def test_linear_bit_exact(requant, target, o):
    """int16 GEMV (AVX2) and the VNNI broadcast GEMV (O padded to 16 internally) against the reference."""
    rng = np.random.default_rng(5)
    n, k = 1, 160
    x = np.concatenate([np.full((n, 40), 255, np.uint8), rng.integers(0, 256, (n, k - 40)).astype(np.uint8)], 1)
    w = rng.integers(-128, 128, (o, k)).astype(np.int8)
    bias = rng.integers(-5000, 5000, o).astype(np.int32) + (128 << 10)
    mult = np.full(o, 1 << 26, np.int32)
    shift = np.full(o, 36, np.int32)
    acc = R.linear(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(bias))
    params = {"x_shape": (n, k), "w_shape": (o, k), "out_shape": (n, o), "node": "fc"}
    if requant:
        ref = R.requantize(acc, torch.from_numpy(mult), torch.from_numpy(shift), lo=0, hi=255).numpy()
        got = _run_call("linear_requant", dict(params, lo=0, hi=255), [x], [w, bias, mult, shift], target)
        assert len(np.unique(ref)) > 5
    else:
        ref = acc.numpy()
        got = _run_call("linear", params, [x], [w, bias], target)
    np.testing.assert_array_equal(got, ref)


# (c, h, k, stride, dilation, pad_value): the tap-pair depthwise kernel, odd and even kernel widths
PAIR_CASES = [
    pytest.param(5, 30, 7, 1, 1, 9, id="7x7-s1-odd-channels"),
    pytest.param(6, 31, 7, 2, 1, 0, id="7x7-s2-odd-width"),
    pytest.param(4, 29, 3, 1, 2, 250, id="3x3-s1-dilation2"),
    pytest.param(3, 33, 5, 2, 1, 17, id="5x5-s2"),
    pytest.param(2, 20, 2, 1, 1, 0, id="2x2-even-taps"),
]


@pytest.mark.parametrize("c,h,k,s,d,pad_value", PAIR_CASES)
@pytest.mark.parametrize(
    "vec,vnni,taps,rows",
    [(8, False, 2, 1), (16, False, 2, 1), (16, True, 2, 3), (16, True, 4, 2), (8, True, 4, 8)],
    ids=["ymm", "zmm", "vpdpwssd-3rows", "quads-zmm-2rows", "quads-ymm-8rows"],
)
def test_depthwise_tap_pairs_bit_exact(c, h, k, s, d, pad_value, vec, vnni, taps, rows):
    """vpmaddwd / vpdpwssd on tap pairs and vpdpbusd on u8 tap quads, several output rows per step: exact against
    the reference, extreme codes and weights included."""
    from qcompile.backends.tvm.schedules.x86.depthwise import depthwise_conv_pairs_x86, pack_pair_weights

    if vec == 16:
        target = VNNI512 if vnni else AVX512
    else:
        target = VNNI256 if vnni else AVX2
    family = FAMILY[target]
    instr = r"vpdpbusd" if taps == 4 else (r"vpdpwssd" if vnni else r"vpmaddwd")
    rng = np.random.default_rng(c * 10 + k)
    x = rng.integers(0, 256, (1, c, h, h)).astype(np.uint8)
    x[0, 0] = 255  # a whole plane at the largest code ...
    wt = rng.integers(-128, 128, (c, 1, k, k)).astype(np.int8)
    wt[0] = -128  # ... against the most negative weights
    bias = rng.integers(-20000, 20000, c).astype(np.int32)
    mult = rng.integers(2**29, 2**31, c).astype(np.int32)
    shift = rng.integers(34, 42, c).astype(np.int32)
    p = d * (k - 1) // 2
    ho = (h + 2 * p - d * (k - 1) - 1) // s + 1
    dw = DwConv(c, h, h, k, k, (s, s), (p, p), (d, d), pad_value, lo=2, hi=253, shift_min=int(shift.min()))
    func = depthwise_conv_pairs_x86(dw, vec=vec, vnni=vnni, taps=taps, rows=rows)
    lib = tvm.compile(func, target=target)
    isa.check_instructions(lib, family, instr + (r"\s+.*%zmm" if vec == 16 else r"\s+.*%ymm"))
    if not isa.should_execute(family):
        pytest.skip(f"built and checked the {family} assembly; this CPU cannot execute it")
    out = tvm.runtime.tensor(np.zeros((c, ho, ho), np.uint8))
    lib(
        *(
            tvm.runtime.tensor(a)
            for a in (x[0], pack_pair_weights(wt, k, k, taps), bias_term(bias, mult, shift), mult, shift)
        ),
        out,
    )
    acc = R.conv2d(
        torch.from_numpy(x),
        torch.from_numpy(wt),
        torch.from_numpy(bias),
        stride=s,
        padding=p,
        dilation=d,
        groups=c,
        pad_value=pad_value,
    )
    ref = R.requantize(acc, torch.from_numpy(mult), torch.from_numpy(shift), lo=2, hi=253).numpy()[0]
    assert len(np.unique(ref)) > 20
    np.testing.assert_array_equal(out.numpy(), ref)


def test_depthwise_strategy_uses_tap_pairs_on_wide_rows():
    """A MobileNet-sized 7x7 depthwise layer (56 wide) goes to the pair kernel by default, bit-exact."""
    from qcompile.backends.tvm.schedules.x86.depthwise import DwKnobs, default_dw_knobs

    assert default_dw_knobs(56, avx512=False).pairs and not default_dw_knobs(14, avx512=False).pairs
    # with a VNNI dot product: u8 tap quads, about 8 row vectors in flight
    assert default_dw_knobs(56, avx512=True, vnni=True) == DwKnobs(16, True, 2, taps=4)
    assert default_dw_knobs(7, avx512=True, vnni=True) == DwKnobs(8, True, 8, taps=4)
    rng = np.random.default_rng(3)
    x, wt, bias, mult, shift = _case(rng, 8, 56, 56, 8, 7, 1, 3, 8)
    kw = dict(s=1, p=3, groups=8, pad_value=4, lo=0, hi=255)
    np.testing.assert_array_equal(
        _run_strategy("conv2d_requant", x, wt, bias, mult, shift, **kw), _reference(x, wt, bias, mult, shift, **kw)
    )


def test_depthwise_3x3_on_short_rows_takes_the_row_kernel_with_avx512_vnni():
    """3x3 layers with <= 14 outputs per row take the row kernel on AVX-512 VNNI (the tap-quad copy costs more
    there); wider rows, larger kernels and 8-lane AVX-VNNI keep the quads; unknown `kw` keeps the old choice."""
    from qcompile.backends.tvm.schedules.x86.depthwise import DwKnobs, default_dw_knobs, dw_candidates

    assert default_dw_knobs(14, avx512=True, vnni=True, kw=3) == DwKnobs(16, False, 4)
    assert default_dw_knobs(7, avx512=True, vnni=True, kw=3) == DwKnobs(8, False, 1)
    assert default_dw_knobs(28, avx512=True, vnni=True, kw=3) == DwKnobs(16, True, 4, taps=4)
    assert default_dw_knobs(14, avx512=True, vnni=True, kw=5).taps == 4
    assert default_dw_knobs(14, avx512=False, vnni=True, kw=3).taps == 4
    assert default_dw_knobs(14, avx512=True, vnni=True) == DwKnobs(16, True, 8, taps=4)
    # the tuner times the default first (what `trials=1` keeps)
    assert dw_candidates(14, True, vnni=True, kw=3)[0] == DwKnobs(16, False, 4)
    # stride 1 (undilated): the vertical-quad kernel, 4 rows per step; stride 2 keeps the row kernel
    assert default_dw_knobs(14, avx512=True, vnni=True, kw=3, stride=1) == DwKnobs(16, False, 4, vquads=True)
    assert default_dw_knobs(7, avx512=True, vnni=True, kw=3, stride=1) == DwKnobs(8, False, 4, vquads=True)
    assert default_dw_knobs(7, avx512=True, vnni=True, kw=3, stride=2) == DwKnobs(8, False, 1)
    assert not default_dw_knobs(28, avx512=True, vnni=True, kw=3, stride=1).vquads
    assert dw_candidates(14, True, vnni=True, kw=3, stride=1)[0].vquads


# (c, h, k, stride, pad_value, vec, rows): the vertical-quad depthwise kernel; odd sizes, C not a multiple of 16,
# rows not a multiple of the block, 5x5 / 7x7 (two and three row quads), stride 2 (period 2)
VQUAD_CASES = [
    pytest.param(20, 14, 3, 1, 9, 16, 4, id="3x3-s1-14px"),
    pytest.param(13, 7, 3, 1, 255, 8, 4, id="3x3-s1-7px"),
    pytest.param(24, 13, 3, 2, 0, 16, 4, id="3x3-s2-odd"),
    pytest.param(17, 9, 5, 1, 3, 8, 2, id="5x5-s1-rows2"),
    pytest.param(16, 11, 5, 2, 7, 16, 8, id="5x5-s2-rows8"),
    pytest.param(6, 10, 7, 1, 0, 16, 4, id="7x7-s1"),
    pytest.param(5, 15, 7, 2, 200, 8, 1, id="7x7-s2-rows1"),
]


@pytest.mark.parametrize("c,h,k,s,pad_value,vec,rows", VQUAD_CASES)
def test_depthwise_vertical_quads_bit_exact(c, h, k, s, pad_value, vec, rows):
    """`vpdpbusd` on four vertically adjacent padded rows (`depthwise_conv_vquads_x86`) through `depthwise_kernel`
    and `dw_weights`: exact against the reference, the largest codes against the most negative weights."""
    from qcompile.backends.tvm.schedules.x86.depthwise import DwKnobs, depthwise_kernel, dw_weights

    target = VNNI512
    rng = np.random.default_rng(c * 100 + h * 10 + k + s)
    x, wt, bias, mult = _dw_operands(rng, c, h, k)
    shift = rng.integers(34, 42, c).astype(np.int32)
    p = (k - 1) // 2
    ho = (h + 2 * p - k) // s + 1
    dw = DwConv(c, h, h, k, k, (s, s), (p, p), (1, 1), pad_value, lo=1, hi=254, shift_min=int(shift.min()))
    knobs = DwKnobs(vec, False, rows, vquads=True)
    lib = tvm.compile(depthwise_kernel(dw, knobs, target=target), target=target)
    isa.check_instructions(lib, FAMILY[target], r"vpdpbusd" + (r"\s+.*%zmm" if vec == 16 else r"\s+.*%ymm"))
    if not isa.should_execute(FAMILY[target]):
        pytest.skip("built and checked the avx512-vnni assembly; this CPU cannot execute it")
    out = tvm.runtime.tensor(np.zeros((c, ho, ho), np.uint8))
    args = (x[0], dw_weights(wt, k, k, knobs, s), bias_term(bias, mult, shift), mult, shift)
    lib(*(tvm.runtime.tensor(a) for a in args), out)
    acc = R.conv2d(torch.from_numpy(x), torch.from_numpy(wt), torch.from_numpy(bias), stride=s, padding=p,
                   groups=c, pad_value=pad_value)
    ref = R.requantize(acc, torch.from_numpy(mult), torch.from_numpy(shift), lo=1, hi=254).numpy()[0]
    assert len(np.unique(ref)) > 20
    np.testing.assert_array_equal(out.numpy(), ref)


@pytest.mark.parametrize("c,h", [(20, 14), (13, 7)])
def test_depthwise_vertical_quads_int32_accumulator_through_the_strategy(c, h):
    """A 3x3 stride-1 depthwise conv without requantize (int32 `acc + bias`) on 14 / 7 px takes the default
    kernel on AVX-512 VNNI (`vpdpbusd`: the sliding tap quads where the target has VBMI, else the vertical quads),
    exact against the reference."""
    rng = np.random.default_rng(c + h)
    x, wt, bias, mult, shift = _case(rng, c, h, h, c, 3, 1, 1, c)
    x[0, 0] = 255
    wt[0] = -128
    kw = dict(s=1, p=1, groups=c, pad_value=7, lo=0, hi=255)
    got = _run_strategy("conv2d", x, wt, bias, mult, shift, target=VNNI512, instr=r"vpdpbusd", **kw)
    ref = _reference(x, wt, bias, mult, shift, requant=False, **kw)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, ref)


# (c, h, k, stride, pad_value, vec, rows): the sliding tap-quad kernel; MobileNetV2's 3x3 layers at 14 / 7 px,
# odd sizes, C not a multiple of 16, 2x2 (one quad, half zero), 5x5 / 7x7 (two quads per kernel row), strides 2-4
SLIDE_CASES = [
    pytest.param(20, 14, 3, 1, 9, 8, 8, id="3x3-s1-14px-ymm"),
    pytest.param(13, 7, 3, 1, 255, 8, 16, id="3x3-s1-7px-all-rows"),
    pytest.param(24, 13, 3, 2, 0, 16, 4, id="3x3-s2-odd-zmm"),
    pytest.param(6, 30, 3, 1, 17, 16, 2, id="3x3-s1-30px-ragged-zmm"),
    pytest.param(5, 20, 2, 1, 0, 8, 3, id="2x2-even"),
    pytest.param(17, 9, 5, 1, 3, 8, 2, id="5x5-s1"),
    pytest.param(6, 15, 7, 2, 200, 16, 4, id="7x7-s2"),
    pytest.param(4, 16, 7, 1, 1, 8, 8, id="7x7-s1"),
    pytest.param(7, 19, 3, 3, 5, 8, 1, id="3x3-s3"),
    pytest.param(3, 21, 5, 4, 250, 16, 2, id="5x5-s4-zmm"),
]


@pytest.mark.parametrize("plane", ["whole", "channel"])
@pytest.mark.parametrize("c,h,k,s,pad_value,vec,rows", SLIDE_CASES)
def test_depthwise_sliding_quads_bit_exact(c, h, k, s, pad_value, vec, rows, plane):
    """`vpdpbusd` on tap quads shuffled out of one row load (`depthwise_conv_slide_x86`, `vpermb` where the target
    has VBMI) through `depthwise_kernel` and `dw_weights`: exact against the reference, the largest codes against
    the most negative weights; with the padded plane whole and padded per channel group inside the compute loop."""
    from qcompile.backends.tvm.intrin.x86 import has_vbmi
    from qcompile.backends.tvm.schedules.x86.depthwise import DwKnobs, depthwise_kernel, dw_weights

    target = VNNI512
    rng = np.random.default_rng(c * 100 + h * 10 + k + s)
    x, wt, bias, mult = _dw_operands(rng, c, h, k)
    shift = rng.integers(34, 42, c).astype(np.int32)
    p = (k - 1) // 2
    ho = (h + 2 * p - k) // s + 1
    dw = DwConv(c, h, h, k, k, (s, s), (p, p), (1, 1), pad_value, lo=1, hi=254, shift_min=int(shift.min()))
    knobs = DwKnobs(vec, False, rows, slide=True, plane=plane)
    lib = tvm.compile(depthwise_kernel(dw, knobs, target=target), target=target)
    reg = r"\s+.*%zmm" if vec == 16 else r"\s+.*%ymm"
    # the shuffle of stride 1 is one vpermb with VBMI (LLVM picks other byte shuffles for wider strides)
    isa.check_instructions(lib, FAMILY[target], r"vpdpbusd" + reg,
                           *([r"vpermb" + reg] if s == 1 and has_vbmi(target) else []))
    if not isa.should_execute(FAMILY[target]):
        pytest.skip("built and checked the avx512-vnni assembly; this CPU cannot execute it")
    out = tvm.runtime.tensor(np.zeros((c, ho, ho), np.uint8))
    args = (x[0], dw_weights(wt, k, k, knobs, s), bias_term(bias, mult, shift), mult, shift)
    lib(*(tvm.runtime.tensor(a) for a in args), out)
    acc = R.conv2d(torch.from_numpy(x), torch.from_numpy(wt), torch.from_numpy(bias), stride=s, padding=p,
                   groups=c, pad_value=pad_value)
    ref = R.requantize(acc, torch.from_numpy(mult), torch.from_numpy(shift), lo=1, hi=254).numpy()[0]
    assert len(np.unique(ref)) > 20
    np.testing.assert_array_equal(out.numpy(), ref)


def test_preshift_applies_bounds():
    """`requant.preshift_applies`: the smallest shifts for which the pre-shifted int32 tail is exact on a depthwise
    layer's accumulator bound (`conv.dw_acc_bound`, KH*KW*255*128): 3x3 from 20, 5x5 from 21, 7x7 from 22 (one
    below fails on the int32 range of `acc 2^k`); every shift >= 32 (nothing is shifted)."""
    from qcompile.backends.tvm.schedules.requant import preshift_applies

    for k, first in ((3, 20), (5, 21), (7, 22)):
        bound = k * k * 255 * 128
        assert preshift_applies(first, bound) and not preshift_applies(first - 1, bound)
        assert bound << (32 - first) < 1 << 31 <= bound << (33 - first)
    assert preshift_applies(32, 1 << 40) and preshift_applies(62, 1 << 40)
    # the x86 kernels take it on rows of >= 15 outputs, requantizing layers with a shift below 32 only
    from qcompile.backends.tvm.schedules.x86.depthwise import _preshift

    def dw(h, shift_min, **kw):
        return DwConv(8, h, h, 3, 3, (1, 1), (1, 1), shift_min=shift_min, **kw)

    assert _preshift(dw(15, 23)) and _preshift(dw(112, 20))
    assert not _preshift(dw(14, 23)) and not _preshift(dw(56, 19)) and not _preshift(dw(56, 32))
    assert not _preshift(dw(56, 23, lo=None, hi=None))


def _dw_operands(rng: np.random.Generator, c: int, h: int, k: int) -> tuple[np.ndarray, ...]:
    """(input codes (1, c, h, h), weights (c, 1, k, k), int32 bias, int32 multipliers) of the depthwise bit-exact
    tests, drawn in this order: the first channel at the largest code 255 and its weights at the most negative
    -128 (the accumulator's extreme), the rest random; biases in +-20000, multipliers in [2^29, 2^31)."""
    x = rng.integers(0, 256, (1, c, h, h)).astype(np.uint8)
    x[0, 0] = 255
    wt = rng.integers(-128, 128, (c, 1, k, k)).astype(np.int8)
    wt[0] = -128
    bias = rng.integers(-20000, 20000, c).astype(np.int32)
    mult = rng.integers(2**29, 2**31, c).astype(np.int32)
    return x, wt, bias, mult


def _preshift_operands_at_edges(rng: np.random.Generator, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(shift int32, multiplier int64, bias term int64) for `c` >= 29 channels, the pre-shift tests' operands:
    shifts 20..40 then random ones in that range; multipliers 0, 1, 2^31 - 1 then random in [2^29, 2^31); bias
    terms from `requant.bias_term` (random biases), except channels 21-26 at the clamp's edges `+-2^(62-k)`
    (k = max(0, 32 - shift), the channel's own) and one and seven beyond, and 27-28 at `+-2^62` (saturated codes)."""
    shift = np.concatenate([np.arange(20, 41), rng.integers(20, 41, c - 21)]).astype(np.int32)
    mult = rng.integers(1 << 29, 1 << 31, c).astype(np.int64)
    mult[:3] = (0, 1, (1 << 31) - 1)
    bterm = bias_term(rng.integers(-20000, 20000, c), mult, shift)
    k = np.maximum(0, 32 - shift.astype(np.int64))
    edge = np.int64(1) << (62 - k)
    bterm[21:27] = edge[21:27] * np.array([1, -1, 1, -1, 1, -1]) + np.array([0, 0, 1, -1, 7, -7])
    bterm[27:29] = ((1 << 62), -(1 << 62))
    return shift, mult, bterm


def _requant_exact(acc, bterm, mult, shift, lo, hi):
    """integer_semantics.md `requantize` on Python integers (no wrapping): `clamp((acc M + bterm) >> s, lo, hi)`."""
    return np.array([[min(max((int(a) * int(m) + int(b)) >> int(s), lo), hi) for a in row]
                     for row, b, m, s in zip(acc, bterm, mult, shift)], np.uint8)


@pytest.mark.parametrize("lo,hi", [(0, 255), (3, 250)])
def test_dw_epilogue_preshift_bit_exact(lo, hi):
    """`conv.dw_epilogue(..., preshift=True)` (every channel on the int32 tail with `requant.preshift_operands`)
    against the requantize of Python integers, on accumulators that a 3x3 layer can reach (its bound
    `+-KH*KW*255*128`, 0, +-1 and random ones) and per channel: shifts 20 (the smallest `preshift_applies` allows)
    to 40, multipliers 0, 1, 2^31 - 1 and random, bias terms from `requant.bias_term` (random biases and the
    default rounding offset) and at the edges of the clamp, `+-2^(62-k)` and one beyond, and `+-2^62` (saturated
    codes), plus the offsets of codes 0..255 around which a rounding error would move a code."""
    from tvm import te

    from qcompile.backends.tvm.schedules.conv import dw_acc_bound, dw_epilogue
    from qcompile.backends.tvm.schedules.requant import preshift_applies

    rng = np.random.default_rng(20 + lo)
    c, n = 64, 256
    dw = DwConv(c, 1, n, 3, 3, (1, 1), (1, 1), lo=lo, hi=hi, shift_min=20)  # outputs [C, 1, n]
    bound = dw_acc_bound(dw)
    assert preshift_applies(dw.shift_min, bound) and (dw.ho, dw.wo) == (1, n)
    shift, mult, bterm = _preshift_operands_at_edges(rng, c)
    acc = rng.integers(-bound, bound + 1, (c, n)).astype(np.int64)
    acc[:, :5] = (bound, -bound, 0, 1, -1)
    # accumulators right at and next to code boundaries: acc M + bterm = j 2^s (+-1) for some codes j
    for ch in range(29, c):
        m, b, s = int(mult[ch]), int(bterm[ch]), int(shift[ch])
        for i, j in enumerate(range(0, 256, 16)):
            a = ((j << s) - b) // m
            acc[ch, 5 + 3 * i: 8 + 3 * i] = np.clip((a - 1, a, a + 1), -bound, bound)
    assert (np.abs(acc) <= bound).all()
    mult = mult.astype(np.int32)
    acc_t = te.placeholder((c, 1, n), "int32", name="acc")
    bias = dw.bias()
    outs = dw_epilogue(dw, lambda ch, y, x: acc_t[ch, y, x], bias, pairs=True, preshift=True)
    func = te.create_prim_func([acc_t, bias, *outs])
    sch = tvm.s_tir.Schedule(func)
    ep = sch.get_sblock("epilogue")
    _, inner = sch.split(sch.get_loops(ep)[-1], [None, 16])
    sch.vectorize(inner)
    lib = tvm.compile(sch.mod["main"], target=VNNI512)
    if not isa.should_execute(FAMILY[VNNI512]):
        pytest.skip("built the avx512-vnni epilogue; this CPU cannot execute it")
    out = tvm.runtime.tensor(np.zeros((c, 1, n), np.uint8))
    lib(*(tvm.runtime.tensor(a) for a in (acc.astype(np.int32).reshape(c, 1, n), bterm, mult, shift)), out)
    ref = _requant_exact(acc, bterm, mult, shift, lo, hi)
    assert len(np.unique(ref)) > 100 and (ref[21:29] == lo).any() and (ref[21:29] == hi).any()
    np.testing.assert_array_equal(out.numpy()[:, 0], ref)


@pytest.mark.parametrize("kind,s", [("rows", 1), ("quads", 1), ("vquads", 1), ("slide", 1), ("slide", 2)])
def test_depthwise_preshift_bit_exact(kind, s):
    """The four x86 depthwise kernels that take `dw_epilogue(preshift=True)` on a layer with shifts 20-40 (most
    channels below 32, one per shift) and 16 outputs per row (`DW_PRESHIFT_MIN_WO`; stride 1, and 2 for the sliding
    quads as MobileNetV2's 96x112 and 144x56 layers), exact against the reference
    and equal to the same kernel with the per-channel branch between the int32 and int64 tails
    (`depthwise.DW_PRESHIFT = False`, the form before): the pre-shifted form shifts the accumulators left
    (`vpsllvd`) and has no int64 shift (`vpsravq`), the branch form has one."""
    from qcompile.backends.tvm.schedules.x86 import depthwise as xdw

    target = VNNI512
    c, h, k = 24, 16 * s, 3
    rng = np.random.default_rng(2016 + s)
    x, wt, bias, mult = _dw_operands(rng, c, h, k)
    shift = np.concatenate([np.arange(20, 41), [23, 23, 31]]).astype(np.int32)
    dw = DwConv(c, h, h, k, k, (s, s), (1, 1), (1, 1), 7, lo=1, hi=254, shift_min=20)
    assert dw.wo >= xdw.DW_PRESHIFT_MIN_WO
    knobs = {"rows": xdw.DwKnobs(16, False, 4), "quads": xdw.DwKnobs(16, True, 2, taps=4),
             "vquads": xdw.DwKnobs(16, False, 4, vquads=True), "slide": xdw.DwKnobs(16, False, 4, slide=True)}[kind]
    outs = []
    for pre in (True, False):
        old = xdw.DW_PRESHIFT
        xdw.DW_PRESHIFT = pre
        try:
            lib = tvm.compile(xdw.depthwise_kernel(dw, knobs, target=target), target=target)
        finally:
            xdw.DW_PRESHIFT = old
        asm = isa.assembly(lib)
        assert (re.search(r"vpsllvd", asm) is not None) == pre and (re.search(r"vpsravq", asm) is None) == pre
        if not isa.should_execute(FAMILY[target]):
            pytest.skip("built the avx512-vnni kernels; this CPU cannot execute them")
        out = tvm.runtime.tensor(np.zeros((c, dw.ho, dw.wo), np.uint8))
        args = (x[0], xdw.dw_weights(wt, k, k, knobs, s), bias_term(bias, mult, shift), mult, shift)
        lib(*(tvm.runtime.tensor(a) for a in args), out)
        outs.append(out.numpy())
    acc = R.conv2d(torch.from_numpy(x), torch.from_numpy(wt), torch.from_numpy(bias), stride=s, padding=1,
                   groups=c, pad_value=7)
    ref = R.requantize(acc, torch.from_numpy(mult), torch.from_numpy(shift), lo=1, hi=254).numpy()[0]
    assert len(np.unique(ref)) > 20
    np.testing.assert_array_equal(outs[0], ref)
    np.testing.assert_array_equal(outs[1], ref)


def test_depthwise_sliding_quads_are_the_default_with_vbmi():
    """With AVX-512 VNNI and VBMI every undilated depthwise layer of at most 7 columns and stride 1 or 2 takes the
    sliding tap quads: 16 lanes above 14 outputs per row, else 8; about 16 row vectors per step at stride 1, 8 at
    stride 2 (MobileNetV2's shapes below). Without VBMI, VNNI, AVX-512, a known stride or with wider kernels the
    choice is the one before; the tuner times the default first and can pick any sliding variant."""
    from qcompile.backends.tvm.schedules.x86.depthwise import DwKnobs, default_dw_knobs, dw_candidates

    def knobs(wo, s, kw=3, **kw_):
        return default_dw_knobs(wo, True, vnni=True, kw=kw, stride=s, **({"vbmi": True} | kw_))

    ch = "channel"  # the plane padded per channel group above 14 outputs per row (`default_slide_plane`)
    assert knobs(112, 1) == DwKnobs(16, False, 2, slide=True, plane=ch)  # 7 vectors per row: 2 rows
    assert knobs(56, 2) == DwKnobs(16, False, 2, slide=True, plane=ch)
    assert knobs(56, 1) == DwKnobs(16, False, 4, slide=True, plane=ch)
    assert knobs(28, 2) == DwKnobs(16, False, 4, slide=True, plane=ch)
    assert knobs(28, 1) == DwKnobs(16, False, 8, slide=True, plane=ch)
    assert knobs(14, 2) == DwKnobs(8, False, 4, slide=True)
    assert knobs(14, 1) == DwKnobs(8, False, 8, slide=True)
    assert knobs(7, 2) == DwKnobs(8, False, 8, slide=True)
    assert knobs(7, 1) == DwKnobs(8, False, 16, slide=True)
    assert knobs(14, 1, kw=7).slide and knobs(14, 1, kw=5).slide
    assert not knobs(14, 1, kw=9).slide
    assert not knobs(14, None).slide  # dilated or unknown stride
    assert not knobs(14, 3).slide
    assert knobs(14, 1, vbmi=False) == DwKnobs(16, False, 4, vquads=True)  # the choice before
    assert not default_dw_knobs(14, True, vnni=False, kw=3, stride=1, vbmi=True).slide
    assert not default_dw_knobs(14, False, vnni=True, kw=3, stride=1, vbmi=True).slide
    cands = dw_candidates(14, True, vnni=True, kw=3, stride=1, vbmi=True)
    assert cands[0] == knobs(14, 1) and len(cands) == len(set(cands))
    assert {(kn.vec, kn.rows) for kn in cands if kn.slide} == {(v, r) for v in (8, 16) for r in (1, 2, 4, 8, 16)}
    assert not any(kn.slide for kn in dw_candidates(14, True, vnni=True, kw=3, stride=1))
    # the plane padded per channel group: the default's twin second, every sliding variant with both planes
    assert cands[1] == DwKnobs(8, False, 8, slide=True, plane="channel") and knobs(14, 1).plane == "whole"
    assert {(kn.vec, kn.rows, kn.plane) for kn in cands if kn.slide} == {
        (v, r, p) for v in (8, 16) for r in (1, 2, 4, 8, 16) for p in ("whole", "channel")}
    # one parallel region wherever the lowering runs 2 threads, and for 5x5 / 7x7 kernels at 1 thread
    assert knobs(7, 1, threads=2).plane == knobs(14, 2, threads=4).plane == ch
    assert knobs(14, 1, threads=1).plane == "whole" and knobs(14, 1, kw=7, threads=1).plane == ch
    assert knobs(14, 1, kw=5).plane == ch
    two = dw_candidates(14, True, vnni=True, kw=3, stride=1, vbmi=True, threads=2)
    assert two[0] == DwKnobs(8, False, 8, slide=True, plane=ch) and two[1] == DwKnobs(8, False, 8, slide=True)


def test_depthwise_sliding_plane_default_follows_the_environment(monkeypatch):
    """`QCOMPILE_DW_PLANE=channel` makes the sliding quads' default pad per channel group (one parallel region; the
    whole plane is then the twin the tuner times second); other kernels keep their knobs; a bad value is a
    ConfigError naming the variable."""
    from qcompile.backends.tvm.schedules.x86.depthwise import ENV_DW_PLANE, DwKnobs, default_dw_knobs, dw_candidates
    from qcompile.errors import ConfigError

    monkeypatch.setenv(ENV_DW_PLANE, "channel")
    assert default_dw_knobs(7, True, vnni=True, kw=3, stride=1, vbmi=True) == DwKnobs(8, False, 16, slide=True,
                                                                                      plane="channel")
    assert default_dw_knobs(14, True, vnni=True, kw=3, stride=1) == DwKnobs(16, False, 4, vquads=True)
    cands = dw_candidates(7, True, vnni=True, kw=3, stride=1, vbmi=True)
    assert cands[0].plane == "channel" and cands[1] == DwKnobs(8, False, 16, slide=True)
    monkeypatch.setenv(ENV_DW_PLANE, "whole")
    assert default_dw_knobs(7, True, vnni=True, kw=3, stride=1, vbmi=True).plane == "whole"
    monkeypatch.setenv(ENV_DW_PLANE, "per-thread")
    with pytest.raises(ConfigError, match=ENV_DW_PLANE):
        default_dw_knobs(7, True, vnni=True, kw=3, stride=1, vbmi=True)


def _slide_plane_allocs(dw, vec, plane):
    """The padded plane's allocations of a sliding-quad kernel after the lowering passes that place and compact
    buffers (as `tvm.compile` runs them), as TVMScript lines."""
    import tvm
    from tvm import s_tir

    from qcompile.backends.tvm.schedules.x86.depthwise import depthwise_conv_slide_x86

    mod = tvm.IRModule({"main": depthwise_conv_slide_x86(dw, vec=vec, rows=4, plane=plane)})
    for t in (s_tir.transform.LowerInitBlock(), s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
              s_tir.transform.ConvertBlocksToOpaque(), s_tir.transform.CompactBufferAllocation()):
        mod = t(mod)
    return [line for line in mod.script().splitlines() if re.search(r"xpad(_local)? = T.sblock_alloc_buffer", line)]


@pytest.mark.parametrize("plane", ["whole", "channel"])
@pytest.mark.parametrize("vec, stride, w", [(8, 1, 11), (16, 1, 56), (8, 2, 14), (16, 2, 112)])
def test_depthwise_sliding_quads_allocate_every_byte_their_loads_read(vec, stride, w, plane):
    """The intrinsic loads `4 * vec` bytes per row vector, past the columns the arithmetic uses: after TVM places and
    compacts the kernel's buffers to what its blocks access, the padded plane must still be `slide_row_bytes` wide
    (a plane computed per channel was compacted to the used columns and the last load read past the buffer: a
    dynamic-batch library faulted on an 8x9x11 layer). With `plane="channel"` the plane is one channel group's,
    allocated inside the channel loop; the same schedule without its widened reads (`_widen_read`) shrinks the rows
    below the loads, and this test sees it."""
    import qcompile.backends.tvm.schedules.x86.depthwise as xdw

    dw = DwConv(8, 9, w, 3, 3, (stride, stride), (1, 1), (1, 1), shift_min=34)
    row = xdw.slide_row_bytes(dw, vec)
    assert row >= (-(-dw.wo // vec) * vec - vec) * stride + 4 * vec
    allocs = _slide_plane_allocs(dw, vec, plane)
    assert len(allocs) == 1 and re.search(rf", {row}\), \"uint8\"(, scope=\"local\")?\)$", allocs[0]), allocs
    if plane == "channel":
        group = xdw.slide_plane_group(8, 11, row)
        assert f"(({group}, 11, {row})" in allocs[0]  # one group's plane, inside the parallel loop
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(xdw, "_widen_read", lambda *a, **k: None)
            shrunk = _slide_plane_allocs(dw, vec, plane)
        assert len(shrunk) == 1 and f", {row}), " not in shrunk[0], shrunk


def test_depthwise_sliding_quads_rejects_what_they_cannot_compute():
    from qcompile.backends.tvm.schedules.x86.depthwise import DwKnobs, depthwise_conv_slide_x86
    from qcompile.errors import ConfigError

    with pytest.raises(ConfigError, match="dilation"):
        depthwise_conv_slide_x86(DwConv(8, 14, 14, 3, 3, (1, 1), (2, 2), (2, 2), shift_min=34))
    with pytest.raises(ConfigError, match="stride"):
        depthwise_conv_slide_x86(DwConv(8, 14, 14, 3, 3, (5, 5), (1, 1), shift_min=34))
    with pytest.raises(ConfigError, match="vec"):
        depthwise_conv_slide_x86(DwConv(8, 14, 14, 3, 3, (1, 1), (1, 1), shift_min=34), vec=4)
    for bad in (dict(pairs=True), dict(vquads=True)):
        with pytest.raises(ConfigError, match="slide"):
            DwKnobs(16, rows=4, slide=True, **bad)
    with pytest.raises(ConfigError, match="plane"):
        depthwise_conv_slide_x86(DwConv(8, 14, 14, 3, 3, (1, 1), (1, 1), shift_min=34), plane="row")
    with pytest.raises(ConfigError, match="DwKnobs.plane"):
        DwKnobs(16, rows=4, plane="channel")  # only the sliding quads have a padded plane to place
    with pytest.raises(ConfigError, match="DwKnobs.plane"):
        DwKnobs(16, rows=4, slide=True, plane="thread")


@pytest.mark.parametrize("c,h,s,vec,rows,group", [(960, 7, 1, 8, 16, 48), (144, 56, 1, 16, 4, 3),
                                                   (576, 14, 2, 8, 8, 32), (8, 7, 1, 8, 16, 1)])
def test_depthwise_sliding_quads_channel_plane_is_one_parallel_region(c, h, s, vec, rows, group):
    """`plane="whole"` pads in one parallel loop and computes in another (two fork/joins per call); `plane="channel"`
    pads each channel group inside the parallel loop that computes it: one parallel loop, over whole groups of
    `slide_plane_group` channels (16 KB of planes, at least 8 groups): 960x7x7's 288-byte planes in groups of 48 (20
    groups), 144x56x56's 6.5 KB in groups of 3, 576x14x14 stride 2 (512 bytes) in groups of 32; 8 channels one by
    one, each plane a workspace buffer (a "local" one: as a stack array LLVM took it apart, no `vpermb` left)."""
    from qcompile.backends.tvm.schedules.x86.depthwise import (
        depthwise_conv_slide_x86,
        slide_plane_group,
        slide_row_bytes,
    )

    dw = DwConv(c, h, h, 3, 3, (s, s), (1, 1), (1, 1), shift_min=34)
    funcs = {p: depthwise_conv_slide_x86(dw, vec=vec, rows=rows, plane=p) for p in ("whole", "channel")}
    count = {p: f.script().count("T.parallel(") for p, f in funcs.items()}
    assert count == ({"whole": 2, "channel": 1} if c > 8 else {"whole": 0, "channel": 0})  # 8 channels: serial
    assert slide_plane_group(c, h + 2, slide_row_bytes(dw, vec)) == group
    assert ('scope="local"' in funcs["channel"].script()) == (group * (h + 2) * slide_row_bytes(dw, vec) <= 1024)


@pytest.mark.parametrize("c,h,s,pad_value", [(384, 14, 1, 9), (576, 14, 2, 0), (960, 7, 1, 255), (144, 56, 2, 3)])
def test_mbv2_depthwise_default_on_vbmi_is_the_sliding_kernel_bit_exact(c, h, s, pad_value):
    """MobileNetV2's 3x3 depthwise layers through the strategy on an AVX-512 VNNI target with VBMI (this host's
    own when it has them): the default kernel is the sliding tap quads (`vpermb` at stride 1), exact against the
    reference executor's conv2d + requantize."""
    from qcompile.backends.tvm.intrin.x86 import has_vbmi

    if not has_vbmi(VNNI512):
        pytest.skip("the avx512-vnni target of this host has no VBMI: the sliding quads are not the default")
    rng = np.random.default_rng(c + h + s)
    x, wt, bias, mult, shift = _case(rng, c, h, h, c, 3, s, 1, c)
    x[0, :3] = 255
    wt[:3] = -128
    kw = dict(s=s, p=1, groups=c, pad_value=pad_value, lo=0, hi=255)
    got = _run_strategy("conv2d_requant", x, wt, bias, mult, shift, target=VNNI512,
                        instr=r"vpermb\s+.*%ymm" if s == 1 else r"vpdpbusd", **kw)
    np.testing.assert_array_equal(got, _reference(x, wt, bias, mult, shift, **kw))


@pytest.mark.parametrize("knobs", [
    dict(vec=8, pairs=False, rows=2), dict(vec=16, pairs=True, rows=2, taps=4), dict(vec=8, pairs=True, rows=1),
    dict(vec=16, pairs=False, rows=4, vquads=True), dict(vec=8, pairs=False, rows=8, slide=True),
], ids=["rows", "quads", "pairs", "vquads", "slide"])
@pytest.mark.parametrize("h,s", [(14, 1), (13, 2)])
def test_depthwise_shift_branch_bit_exact_with_shifts_on_both_sides_of_32(knobs, h, s):
    """`DW_SHIFT_BRANCH`: a layer whose shifts straddle 32 (the int64 requantize tail for shifts 1..31, the int32
    one for 32..62, chosen per channel at run time) through every row-type x86 depthwise kernel, exact against the
    reference with the extreme shifts, codes and weights; and the same as the kernel without the branch."""
    import functools

    import qcompile.backends.tvm.schedules.x86.depthwise as xdw
    from qcompile.backends.tvm.schedules.conv import dw_epilogue

    assert xdw.DW_SHIFT_BRANCH
    target = VNNI512
    c = 11
    rng = np.random.default_rng(h + s)
    x = rng.integers(0, 256, (1, c, h, h)).astype(np.uint8)
    x[0, 0] = 255
    wt = rng.integers(-128, 128, (c, 1, 3, 3)).astype(np.int8)
    wt[0] = -128
    bias = rng.integers(40000, 90000, c).astype(np.int32)  # acc + bias about 2^16: codes about 128 at scale 2^-9
    shift = np.array([1, 12, 23, 31, 32, 33, 40, 47, 55, 62, 36], np.int32)
    mult = (2.0 ** (shift.astype(np.float64) - 9) * rng.uniform(0.5, 1.0, c)).clip(1, 2**31 - 1).astype(np.int32)
    mult[[0, 9]] = [1, 2**31 - 1]
    dw = DwConv(c, h, h, 3, 3, (s, s), (1, 1), (1, 1), 20, lo=3, hi=250, shift_min=int(shift.min()))
    kn = xdw.DwKnobs(**knobs)
    args = (x[0], xdw.dw_weights(wt, 3, 3, kn, s), bias_term(bias, mult, shift), mult, shift)
    libs = [tvm.compile(xdw.depthwise_kernel(dw, kn, target=target), target=target)]
    with pytest.MonkeyPatch.context() as mp:  # the same kernel with one requantize form for every channel
        mp.setattr(xdw, "dw_epilogue", functools.partial(dw_epilogue, shift_branch=False))
        libs.append(tvm.compile(xdw.depthwise_kernel(dw, kn, target=target), target=target))
    if not isa.should_execute(FAMILY[target]):
        pytest.skip("built the avx512-vnni kernels; this CPU cannot execute them")
    acc = R.conv2d(torch.from_numpy(x), torch.from_numpy(wt), torch.from_numpy(bias), stride=s, padding=1,
                   groups=c, pad_value=20)
    ref = R.requantize(acc, torch.from_numpy(mult), torch.from_numpy(shift), lo=3, hi=250).numpy()[0]
    assert len(np.unique(ref)) > 20
    for lib in libs:
        out = tvm.runtime.tensor(np.zeros((c, dw.ho, dw.wo), np.uint8))
        lib(*(tvm.runtime.tensor(a) for a in args), out)
        np.testing.assert_array_equal(out.numpy(), ref)


def test_depthwise_vertical_quads_rejects_dilation():
    from qcompile.backends.tvm.schedules.x86.depthwise import DwKnobs, depthwise_conv_vquads_x86
    from qcompile.errors import ConfigError

    with pytest.raises(ConfigError, match="dilation"):
        depthwise_conv_vquads_x86(DwConv(8, 14, 14, 3, 3, (1, 1), (2, 2), (2, 2), shift_min=34))
    with pytest.raises(ConfigError, match="vquads"):
        DwKnobs(16, True, 4, taps=4, vquads=True)


@pytest.mark.parametrize("k,wo,dot", [(3, 14, False), (3, 7, False), (5, 14, True), (3, 28, True)])
def test_depthwise_default_kernel_assembly_on_avx512_vnni(k, wo, dot):
    """Compile-only: the default VNNI512 depthwise kernel of a k x k layer with `wo` outputs per row uses
    `vpdpbusd` (tap quads) exactly where `default_dw_knobs` says, and nothing wider than AVX-512 VNNI."""
    from qcompile.backends.tvm.schedules.x86.depthwise import depthwise_kernel, target_dw_knobs

    dw = DwConv(8, wo, wo, k, k, (1, 1), (k // 2, k // 2), shift_min=34)
    built = tvm.compile(depthwise_kernel(dw, target_dw_knobs(wo, VNNI512, k), target=VNNI512), target=VNNI512)
    isa.check_instructions(built, "avx512-vnni")
    assert bool(re.search(r"vpdpbusd", isa.assembly(built))) == dot


@pytest.mark.parametrize("kernel", ["rows-7", "rows-14", "slide-7", "slide-14", "cvec", "gemv"])
def test_register_tiles_are_not_workspace_allocations(kernel):
    """Compile-only: the accumulator tiles of the row and sliding-quad depthwise kernels on 7/14 px maps and of the
    channel-lane kernels (`depthwise_cvec_x86`, `pointwise_gemv_x86`) live on the stack, not in a
    `TVMBackendAllocWorkspace` call per channel (what a "local"-scope tile became: 10-23 % of MobileNetV2's 7-28 px
    depthwise time)."""
    from qcompile.backends.tvm.schedules.x86.depthwise import DwKnobs, depthwise_cvec_x86, depthwise_kernel
    from qcompile.backends.tvm.schedules.x86.gemv import pointwise_gemv_x86

    if kernel == "cvec":
        func = depthwise_cvec_x86(DwConv(32, 4, 4, 7, 7, (1, 1), (3, 3), shift_min=34), 16)
    elif kernel == "gemv":
        func = pointwise_gemv_x86(GemmConv(64, 1, 96, shift_min=34), 16)
    else:
        h = int(kernel.split("-")[1])
        knobs = DwKnobs(8, False, 1) if h == 7 else DwKnobs(16, False, 4)
        if kernel.startswith("slide"):
            knobs = DwKnobs(8, False, 16 if h == 7 else 8, slide=True)
        func = depthwise_kernel(DwConv(32, h, h, 3, 3, (1, 1), (1, 1), shift_min=34), knobs, target=VNNI512)
    # the sliding quads keep one padded plane for all channels (allocated once per call, outside the channel loop:
    # `test_depthwise_sliding_quads_allocate_every_byte_their_loads_read`); their accumulator tile is on the stack
    assert _workspace_calls(func, VNNI512) == (1 if kernel.startswith("slide") else 0)


@pytest.mark.parametrize("c,h,s,pad_value", [(16, 14, 1, 9), (32, 14, 2, 0), (24, 7, 1, 255), (16, 28, 2, 3)])
def test_depthwise_3x3_short_rows_bit_exact_on_avx512_vnni(c, h, s, pad_value):
    """MobileNetV2's 3x3 depthwise shapes at 14 and 7 px through the strategy on AVX-512 VNNI (the sliding tap
    quads where the target has VBMI; else the vertical quads at stride 1, the row kernel at stride 2),
    bit-exact against the reference."""
    rng = np.random.default_rng(h * 10 + s)
    x, wt, bias, mult, shift = _case(rng, c, h, h, c, 3, s, 1, c)
    kw = dict(s=s, p=1, groups=c, pad_value=pad_value, lo=0, hi=255)
    np.testing.assert_array_equal(
        _run_strategy("conv2d_requant", x, wt, bias, mult, shift, target=VNNI512, **kw),
        _reference(x, wt, bias, mult, shift, **kw),
    )


@pytest.mark.parametrize("c,h,k,s,pad_value", [(24, 1, 7, 1, 9), (16, 2, 7, 1, 200), (16, 2, 7, 2, 0),
                                                 (8, 2, 3, 1, 255), (12, 1, 5, 1, 17)])
def test_depthwise_on_tiny_inputs_skips_the_padding_taps(c, h, k, s, pad_value):
    """7x7, 5x5 and 3x3 depthwise layers on 1x1 and 2x2 inputs (MobileNetV3's last stages at 32 px) take the
    small kernel (a [P, Q] matrix per channel plus the padding taps' constant), bit-exact against the reference
    with extreme codes and weights; with a zero pad code the constant is 0 and the layer still matches."""
    from qcompile.backends.tvm.schedules.conv import DwConv
    from qcompile.backends.tvm.schedules.x86.depthwise import small_dw_applies, small_dw_weights

    p = k // 2
    dw = DwConv(c, h, h, k, k, (s, s), (p, p), (1, 1), pad_value)
    assert small_dw_applies(dw) and not small_dw_applies(DwConv(c, 8, 8, k, k, (s, s), (p, p), (1, 1), 0))
    rng = np.random.default_rng(c + h + k)
    x, wt, bias, mult, shift = _case(rng, c, h, h, c, k, s, p, c)
    x[0, 0], wt[0] = 255, -128  # the largest code against the most negative weights
    wp = small_dw_weights(wt, dw)
    assert wp.shape == (c, dw.ho * dw.wo, h * h + 1) and (wp[:, :, -1] == 0).all() == (pad_value == 0)
    kw = dict(s=s, p=p, groups=c, pad_value=pad_value, lo=1, hi=254)
    for target in (AVX2, VNNI512):
        np.testing.assert_array_equal(_run_strategy("conv2d_requant", x, wt, bias, mult, shift, target=target, **kw),
                                      _reference(x, wt, bias, mult, shift, **kw))


def _workspace_calls(func, target) -> int:
    """Call sites of TVMBackendAllocWorkspace in the kernel's assembly (heap scratch instead of the stack)."""
    lib = tvm.compile(func, target=target)
    mod = lib.mod.imports[0] if lib.mod.imports else lib.mod
    return mod.inspect_source("asm").count("__TVMBackendAllocWorkspace@GOTPCREL")


@pytest.mark.parametrize("mode,target", [("vnni512", VNNI512), ("vnni", VNNI256), ("u8s8", AVX2), ("i16", AVX2)])
def test_default_gemm_tile_needs_no_workspace_per_tile(mode, target):
    """The intrinsics bind their operands as lets and the default tile stays under TVM's stack limit, so the only
    workspace is the per-call activation pack: measured 144 -> 64 us on the 24x3136x144 expand layer."""
    from qcompile.backends.tvm.schedules.x86.gemm import STACK_TILE_BYTES, default_knobs, tile_on_stack

    kn = default_knobs(mode)
    assert tile_on_stack(kn) and kn.to * kn.tp * 4 < STACK_TILE_BYTES
    assert _workspace_calls(pointwise_conv_x86(GemmConv(24, 3136, 144, shift_min=40), mode, kn), target) == 1
    # the counter-check: a 16x16 int32 tile is exactly 1 KiB, so it is a workspace too (more call sites)
    assert not tile_on_stack(GemmKnobs(16, 16))
    big = pointwise_conv_x86(GemmConv(24, 3136, 144, shift_min=40), mode, GemmKnobs(16, 16))
    assert _workspace_calls(big, target) > 1


# pointwise convs on 1-4 pixels (MobileNetV3's last stages at 32 px): (c, h, o); O % 16 != 0 takes 8 lanes
GEMV_CASES = [(56, 1, 336), (40, 2, 240), (336, 1, 56), (36, 2, 40), (6, 1, 16), (24, 2, 8)]


@pytest.mark.parametrize("c,h,o", GEMV_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("target", [VNNI512, AVXVNNI], ids=["avx512-vnni", "avx-vnni"])
@pytest.mark.parametrize("op", ["conv2d_requant", "conv2d"])
def test_pointwise_conv_on_few_pixels_is_a_gemv_over_channels(c, h, o, target, op):
    """A 1x1 conv on at most 4 pixels takes the GEMV kernel (output channels in the `vpdpbusd` lanes, zmm where
    16 divides O, else ymm), bit-exact against the reference with the largest codes against the most negative
    weights, K not a multiple of 4 (6: zero-padded quads) and O smaller than a vector (8)."""
    from qcompile.backends.tvm.schedules.x86.gemv import gemv_applies

    rng = np.random.default_rng(c * 7 + o)
    x, wt, bias, mult, shift = _case(rng, c, h, h, o, 1, 1, 0, 1)
    x[0, :2], wt[: o // 2, :2] = 255, -128
    zmm = target == VNNI512 and o % 16 == 0
    kw = dict(s=1, p=0, groups=1, pad_value=0, lo=2, hi=253)
    instr = r"vpdpbusd\s+.*%" + ("zmm" if zmm else "ymm")
    got = _run_strategy(op, x, wt, bias, mult, shift, target=target, instr=instr,
                        expect={"kind": "gemv", "mode": "vnni512" if zmm else "vnni"}, **kw)
    np.testing.assert_array_equal(got, _reference(x, wt, bias, mult, shift, requant=op == "conv2d_requant", **kw))
    assert not gemv_applies(target, "pointwise", 9, c) and not gemv_applies(AVX2, "pointwise", 1, c)


@pytest.mark.parametrize("c,h,k,s,pad_value", [(96, 4, 7, 1, 9), (48, 8, 7, 2, 200), (24, 2, 7, 1, 255),
                                                 (40, 1, 7, 1, 17), (16, 4, 3, 1, 0), (20, 3, 5, 2, 77)])
@pytest.mark.parametrize("target", [VNNI512, AVXVNNI], ids=["avx512-vnni", "avx-vnni"])
def test_depthwise_on_small_maps_puts_channels_in_the_lanes(c, h, k, s, pad_value, target):
    """Depthwise layers with at most 16 output pixels (4x4, 3x3, 2x2, 1x1, and 8x8 -> 4x4 at stride 2; 7x7, 5x5,
    3x3) take the channel-vector kernel (`vpdpbusd` on four inputs of each channel, the padding taps folded into a
    per-pixel bias), bit-exact against the reference with extreme codes and weights, requantized and to the accumulator;
    C = 20 and 40 (not a multiple of 16) run on 8 lanes with a ragged last vector."""
    from qcompile.backends.tvm.schedules.x86.depthwise import CVEC_DW_IN_PIXELS, CVEC_DW_PIXELS, cvec_dw_lanes

    p = k // 2
    rng = np.random.default_rng(c + h + k)
    x, wt, bias, mult, shift = _case(rng, c, h, h, c, k, s, p, c)
    x[0, 0], wt[0] = 255, -128
    zmm = target == VNNI512 and c % 16 == 0
    kw = dict(s=s, p=p, groups=c, pad_value=pad_value, lo=1, hi=254)
    mode = {"kind": "depthwise", "mode": "cvec_vnni512" if zmm else "cvec_vnni"}
    instr = r"vpdpbusd\s+.*%" + ("zmm" if zmm else "ymm")
    np.testing.assert_array_equal(
        _run_strategy("conv2d_requant", x, wt, bias, mult, shift, target=target, instr=instr, expect=mode, **kw),
        _reference(x, wt, bias, mult, shift, **kw))
    np.testing.assert_array_equal(
        _run_strategy("conv2d", x, wt, bias, mult, shift, target=target, instr=instr, expect=mode, **kw),
        _reference(x, wt, bias, mult, shift, requant=False, **kw))
    assert cvec_dw_lanes(c, 16, CVEC_DW_PIXELS + 1, 16) == 0 and cvec_dw_lanes(c, CVEC_DW_IN_PIXELS + 1, 4, 16) == 0
    assert cvec_dw_lanes(c, 16, 16, 0) == 0


@pytest.mark.parametrize("knobs,p", [(GemmKnobs(2, 64, store64=True, vshift=True), 128), (GemmKnobs(8, 16), 120)],
                         ids=["store64-vshift", "8x16-padded"])
def test_gemm_preshift_bit_exact(monkeypatch, knobs, p):
    """`x86.gemm.GEMM_PRESHIFT` (`conv.gemm_requant_stages(preshift=True)`) on a K = 16 GEMM with shifts 20 (the
    smallest `requant.preshift_applies` allows at `K 255 128`) to 40 per channel, against the requantize of Python
    integers on accumulators at +-the bound, 0, +-1 and next to code boundaries, multipliers 0, 1, 2^31 - 1, bias
    terms at the clamp's edges `+-2^(62-k)`, one beyond, and `+-2^62` (fails without the clamp); equal to the int64
    form (`GEMM_PRESHIFT = False`). The asm: the pre-shifted form shifts the accumulators left and has no int64
    shift (`vpsraq`), the int64 form has one."""
    from qcompile.backends.tvm.schedules.x86 import gemm as xg

    k, o = 16, 48
    rng = np.random.default_rng(1620 + p)
    bound = k * 255 * 128
    gc = GemmConv(k, p, o, 0, 255, 20)
    assert xg.gemm_preshift_applies(gc, "vnni512") and not xg.gemm_preshift_applies(GemmConv(k, p, o, 0, 255, 19),
                                                                                     "vnni512")
    assert not xg.gemm_preshift_applies(GemmConv(k, p, o, 0, 255, 32), "vnni512")
    assert not xg.gemm_preshift_applies(gc, "i16")  # int16 operands: not the uint8 x int8 bound
    x = rng.integers(0, 256, (k, p)).astype(np.uint8)
    w = rng.integers(-128, 128, (o, k)).astype(np.int8)
    x[:, :2] = 255
    w[: o // 2] = np.where(np.arange(o // 2)[:, None] % 2 == 0, -128, 127)  # +-the bound on the first pixels
    acc = w.astype(np.int64) @ x.astype(np.int64)
    assert np.abs(acc).max() == bound and acc.max() == k * 255 * 127
    shift, mult, bterm = _preshift_operands_at_edges(rng, o)
    # bias terms that put code boundaries (acc M + bterm = j 2^s) next to the accumulators of the first pixels
    for ch in range(29, o):
        m, s = int(mult[ch]), int(shift[ch])
        if m:
            j = int(rng.integers(0, 256))
            bterm[ch] = (j << s) - int(acc[ch, 2 + ch % 8]) * m + int(rng.integers(-1, 2))
    mult = mult.astype(np.int32)
    ref = _requant_exact(acc, bterm, mult, shift, 0, 255)
    assert len(np.unique(ref)) > 100 and (ref[21:29] == 0).any() and (ref[21:29] == 255).any()
    outs = []
    for pre in (True, False):
        monkeypatch.setattr(xg, "GEMM_PRESHIFT", pre)
        lib = tvm.compile(pointwise_conv_x86(gc, "vnni512", knobs), target=VNNI512)
        asm = isa.assembly(lib)
        assert (re.search(r"vpsll[v]?d\s", asm) is not None) == pre and (re.search(r"vpsraq", asm) is None) == pre
        if not isa.should_execute(FAMILY[VNNI512]):
            pytest.skip("built the avx512-vnni GEMMs; this CPU cannot execute them")
        out = tvm.runtime.tensor(np.zeros((o, p), np.uint8))
        lib(*(tvm.runtime.tensor(a) for a in (x, pack_weights(w, 4, "int8"), bterm, mult, shift)), out)
        outs.append(out.numpy())
    np.testing.assert_array_equal(outs[0], ref)
    np.testing.assert_array_equal(outs[1], ref)
