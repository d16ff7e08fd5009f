"""The AVX2 GEMM's untuned tile (session 17, engineer C, issue 20): 12 ymm accumulators, no spill, bit-exact.

AVX2 has 16 ymm registers. `gemm._avx2_tile` (modes "i16" and "u8s8") holds 12 accumulators (6 channels x 16
pixels, or 12 x 8 on 7x7 maps) plus the activation vectors, the broadcast weight pair and one product; the 8 x 16
tile before it (16 accumulators) kept some on the stack inside the reduction loop. The kernels are checked against
an int64 numpy GEMM + the gemmlowp requantize (integer_semantics.md `conv2d`, `requantize`) on shapes where the
channel tile does not divide O (`conv.fit_to`), pixels and K are padded, weights saturate int16 pairs and every
activation code boundary (0, 127, 128, 255) occurs.
"""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from qcompile.backends.tvm.schedules.conv import GemmConv, pack_weights  # noqa: E402
from qcompile.backends.tvm.schedules.requant import bias_term  # noqa: E402
from qcompile.backends.tvm.schedules.x86.gemm import (  # noqa: E402
    MODES,
    GemmKnobs,
    default_knobs,
    pointwise_conv_x86,
)
from tests import kernel_isa as isa  # noqa: E402

AVX2 = isa.target("avx2")


def _kernel_asm(k: int, p: int, o: int, knobs: GemmKnobs) -> str:
    lib = tvm.compile(pointwise_conv_x86(GemmConv(k, p, o, shift_min=40), "i16", knobs), target=AVX2)
    return isa.assembly(lib)


@pytest.mark.parametrize("k,p,o", [(16, 12544, 96), (24, 3136, 144), (160, 49, 960), (960, 49, 320)],
                         ids=["16-96@112", "24-144@56", "160-960@7", "960-320@7"])
def test_avx2_default_tile_keeps_accumulators_in_registers(k, p, o):
    """MobileNetV2's expand and project GEMMs, built for AVX2 with the untuned tile: no ymm register goes to the
    stack in the `vpmaddwd` loops. The 8 x 16 tile (the default before) spilled there on each of these (asserted,
    so the check can see a spill)."""
    kn = default_knobs("i16", k, p, o)
    assert kn == (GemmKnobs(12, 8) if p == 49 else GemmKnobs(6, 16))
    assert isa.stack_ymm_in_blocks_with(_kernel_asm(k, p, o, kn), "vpmaddwd") == []
    assert isa.stack_ymm_in_blocks_with(_kernel_asm(k, p, o, GemmKnobs(8, 16)), "vpmaddwd") != []


def _gemm_ref(x, w, bias, mult, shift, lo, hi):
    acc = w.astype(np.int64) @ x.astype(np.int64) + bias[:, None]
    s = shift.astype(np.int64)[:, None]
    return np.clip((acc * mult.astype(np.int64)[:, None] + (np.int64(1) << (s - 1))) >> s, lo, hi)


@pytest.mark.parametrize("k,p,o", [(16, 96, 96), (37, 50, 30), (160, 49, 160), (24, 49, 14), (33, 200, 16)],
                         ids=["K16-O96", "K37-P50-O30", "K160-P49-O160", "P49-O14", "K33-P200-O16"])
@pytest.mark.parametrize("mode", ["i16", "u8s8"])
def test_avx2_default_tile_exact(mode, k, p, o):
    """The untuned AVX2 tile, bit-exact on ragged shapes (O not a multiple of the channel tile: 160 -> 10,
    14 -> 7, 16 -> 4; P and K padded), with every activation code boundary and int16-saturating weight pairs
    (-128, -128 and 127, 127 against code 255: why "i16" exists; "u8s8" gets 7-bit codes and weights it proves
    safe, `u8s8_pairs_safe`)."""
    rng = np.random.default_rng(k * 1000 + p + o)
    kn = default_knobs(mode, k, p, o)
    assert kn.to * kn.tp // 8 == 12, kn
    amax = 255 if mode == "i16" else 127
    x = rng.integers(0, amax + 1, (k, p)).astype(np.uint8)
    x[:, :4] = np.array([0, amax // 2, amax // 2 + 1, amax], np.uint8)[None, :]  # the code boundaries
    x[: k // 2, -3:] = amax
    wmax = 127 if mode == "i16" else 64
    w = rng.integers(-wmax - 1 if mode == "i16" else -64, wmax + 1, (o, k)).astype(np.int8)
    if mode == "i16":
        w[0, :] = -128  # every pair 255 * -256 = -65280: saturates vpmaddubsw
        w[-1, :] = 127
    bias = rng.integers(-1000, 1000, o).astype(np.int32)
    shift = rng.integers(34, 42, o).astype(np.int32)
    acc_span = np.abs(w.astype(np.int64)).sum(1) * amax + 1  # requantize the accumulator range onto ~0-255
    mult = np.clip((np.float64(2.0) ** shift.astype(np.float64) * 255 / acc_span), 1, 2**31 - 1).astype(np.int32)
    bias += (acc_span // 2).astype(np.int32)
    ref = _gemm_ref(x, w, bias, mult, shift, 0, 255)
    assert len(np.unique(ref)) > 20
    func = pointwise_conv_x86(GemmConv(k, p, o, 0, 255, int(shift.min())), mode, kn)
    lib = tvm.compile(func, target=AVX2)
    isa.check_instructions(lib, "avx2", {"u8s8": r"vpmaddubsw", "i16": r"vpmaddwd"}[mode])
    if not isa.should_execute("avx2"):
        pytest.skip("built and checked the AVX2 assembly; this CPU cannot execute AVX2")
    _, g, _, wdt = MODES[mode]
    out = tvm.runtime.tensor(np.zeros((o, p), np.uint8))
    lib(*(tvm.runtime.tensor(a) for a in (x, pack_weights(w, g, wdt), bias_term(bias, mult, shift), mult, shift)),
        out)
    np.testing.assert_array_equal(out.numpy(), ref)
