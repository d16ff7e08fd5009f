"""AVX2 (no VNNI) depthwise defaults (session 17, engineer E, issue 20): stride-2 layers on rows of < 28 outputs take
the tap-pair kernel (`vpmaddwd` on int16 tap pairs, `depthwise.AVX2_DW_S2_ROWS` rows per step) instead of the row
kernel, whose tap loop widened and `vpmulld`-ed each tap and kept tap vectors on the stack. The kernels the strategy
emits are checked against the reference executor's `conv2d` + `requantize` (integer_semantics.md) on stride-2
shapes with odd and even sizes, 3x3 / 5x5 / 7x7 taps, several pad codes, and every activation code boundary
(0, 127, 128, 255) against the extreme weights -128 and 127.
"""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
torch = pytest.importorskip("torch")

from tvm import relax  # noqa: E402
from tvm_graphs import conv_call_params  # noqa: E402

from qcompile.backends.tvm.schedules.conv import DwConv  # noqa: E402
from qcompile.backends.tvm.schedules.x86.depthwise import (  # noqa: E402
    AVX2_DW_S2_ROWS,
    DwKnobs,
    default_dw_knobs,
    depthwise_kernel,
)
from qcompile.backends.tvm.strategy import OpCall, select_strategy  # noqa: E402
from qcompile.ops import reference as R  # noqa: E402
from tests import kernel_isa as isa  # noqa: E402

AVX2 = isa.target("avx2")


def test_avx2_stride2_short_rows_default_to_tap_pairs():
    """The AVX2 rule, and the other ISAs' and stride-1 defaults left as they were."""
    for wo in (7, 8, 14, 27):
        for kw in (3, 5, 7):
            assert default_dw_knobs(wo, False, kw=kw, stride=2) == DwKnobs(8, True, AVX2_DW_S2_ROWS)
    assert default_dw_knobs(14, False, kw=3, stride=1) == DwKnobs(8, False, 4)  # stride 1: the row kernel
    assert default_dw_knobs(7, False, kw=3, stride=1) == DwKnobs(8, False, 8)
    assert default_dw_knobs(7, False, kw=3, stride=None) == DwKnobs(8, False, 8)  # dilated / unknown stride
    assert default_dw_knobs(28, False, kw=3, stride=2) == DwKnobs(8, True, 2)  # >= 28: the pair rule as before
    assert default_dw_knobs(56, False, kw=3, stride=2) == DwKnobs(8, True, 1)
    assert default_dw_knobs(14, True, kw=3, stride=2) == DwKnobs(16, False, 8)  # AVX-512 without VNNI
    assert default_dw_knobs(7, True, kw=3, stride=2) == DwKnobs(8, False, 8)
    assert default_dw_knobs(14, False, vnni=True, kw=3, stride=2) == DwKnobs(8, True, 4, taps=4)  # AVX-VNNI
    assert default_dw_knobs(7, True, vnni=True, kw=3, stride=2) == DwKnobs(8, False, 1)  # AVX512-VNNI


@pytest.mark.parametrize("c,h", [(192, 28), (576, 14)], ids=["192x28-s2", "576x14-s2"])
def test_avx2_stride2_default_keeps_tap_loop_in_registers(c, h):
    """MobileNetV2's stride-2 depthwise layers with 14 and 7 outputs a row, built for AVX2 with the untuned knobs:
    `vpmaddwd` tap pairs and no ymm register on the stack in their blocks. The row kernel (the default before) spilled
    in its `vpmulld` tap blocks on both (asserted, so the check can see a spill)."""
    dw = DwConv(c, h, h, 3, 3, (2, 2), (1, 1), shift_min=36)
    kn = default_dw_knobs(dw.wo, False, kw=3, stride=2)
    asm = isa.assembly(tvm.compile(depthwise_kernel(dw, kn, target=AVX2), target=AVX2))
    assert isa.stack_ymm_in_blocks_with(asm, r"vpmaddwd\s+.*%ymm") == []
    old = DwKnobs(8, False, max(1, 8 // -(-dw.wo // 8)))
    asm = isa.assembly(tvm.compile(depthwise_kernel(dw, old, target=AVX2), target=AVX2))
    assert isa.stack_ymm_in_blocks_with(asm, r"vpmulld\s+.*%ymm") != []


# (c, h, k, pad_value, shift range): outputs per row 7 (h 13, 14), 8 (h 15, 16) and 14 (h 28), odd and even sizes
S2_CASES = [
    pytest.param(8, 28, 3, 0, (34, 42), id="3x3-28-wo14"),
    pytest.param(5, 13, 3, 7, (34, 42), id="3x3-13-wo7-odd"),
    pytest.param(6, 14, 3, 128, (28, 40), id="3x3-14-wo7-int64-tail"),
    pytest.param(3, 16, 5, 255, (34, 42), id="5x5-16-wo8"),
    pytest.param(4, 15, 7, 3, (28, 36), id="7x7-15-wo8-odd"),
    pytest.param(9, 27, 3, 0, (34, 42), id="3x3-27-wo14-odd"),
]


@pytest.mark.parametrize("c,h,k,pad_value,shifts", S2_CASES)
def test_avx2_stride2_depthwise_bit_exact_through_the_strategy(c, h, k, pad_value, shifts):
    """The strategy's AVX2 depthwise kernel for stride-2 layers on short rows: the tap-pair kernel (`vpmaddwd` in
    the assembly; the row kernel had none), bit-exact against the reference `conv2d` + `requantize`, with shifts on
    both sides of 32 where the range crosses it (the int32 and int64 requantize tails)."""
    rng = np.random.default_rng(c * 100 + h + k)
    x = rng.integers(0, 256, (1, c, h, h)).astype(np.uint8)
    x[0, 0] = 255  # a whole plane at the largest code against the most negative weights
    x[0, 1, ::2] = np.array([0, 127, 128, 255], np.uint8)[np.arange(h) % 4][None, :]  # the code boundaries
    wt = rng.integers(-128, 128, (c, 1, k, k)).astype(np.int8)
    wt[0] = -128
    wt[1] = 127
    shift = rng.integers(*shifts, c).astype(np.int32)
    span = np.abs(wt.reshape(c, -1).astype(np.int64)).sum(1) * 255 + 1  # requantize the accumulator range onto ~0-255
    mult = np.clip(2.0 ** shift.astype(np.float64) * 255 / span * rng.uniform(0.8, 1.2, c), 1, 2**31 - 1)
    mult = mult.astype(np.int32)
    bias = (span // 2 + rng.integers(-2000, 2000, c)).astype(np.int32)
    p = k // 2
    lo, hi = 2, 253
    params = conv_call_params(x.shape, wt.shape, s=2, p=p, groups=c, pad_value=pad_value, lo=lo, hi=hi)
    call = OpCall("conv2d_requant", params, AVX2)
    strat = select_strategy(call)
    assert strat is not None and strat.name.startswith("x86"), strat
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
    consts = [relax.const(a) for a in (wt, bias, mult, shift)]
    with bb.function("main", [xv]):
        with bb.dataflow():
            out = bb.emit_output(strat.emit(bb, call, [xv, *consts]))
        bb.emit_func_output(out)
    ex = tvm.compile(bb.get(), target=AVX2)
    isa.check_instructions(ex, "avx2", r"vpmaddwd\s+.*%ymm")
    if not isa.should_execute("avx2"):
        pytest.skip("built and checked the AVX2 assembly; this CPU cannot execute AVX2")
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    acc = R.conv2d(torch.from_numpy(x), torch.from_numpy(wt), torch.from_numpy(bias), stride=2, padding=p, groups=c,
                   pad_value=pad_value)
    ref = R.requantize(acc, torch.from_numpy(mult), torch.from_numpy(shift), lo=lo, hi=hi).numpy()
    assert len(np.unique(ref)) > 20
    np.testing.assert_array_equal(got, ref)
