"""Packed 4-bit / 2-bit GEMV weights (`x86.packed_gemv`, issue 20's stretch): the packing, the per-layer width rule,
and the kernels bit-exact against the reference executor (`qcompile.ops.reference`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from qcompile.backends.tvm.schedules.x86 import packed_gemv as PG  # noqa: E402
from qcompile.backends.tvm.strategy import OpCall, select_strategy  # noqa: E402
from qcompile.errors import ConfigError  # noqa: E402
from qcompile.ops import reference as R  # noqa: E402
from tests import kernel_isa as isa  # noqa: E402

VNNI512 = isa.target("avx512-vnni")


def _codes(rng, o: int, k: int, bits: int) -> np.ndarray:
    """Random signed `bits`-bit codes with both extremes in every row and column band."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    w = rng.integers(lo, hi + 1, (o, k)).astype(np.int8)
    w[0], w[-1] = lo, hi
    w[:, 0], w[:, -1] = hi, lo
    return w


@pytest.mark.parametrize("bits", PG.PACKED_BITS)
@pytest.mark.parametrize("o,k", [(1000, 1280), (24, 36), (70, 4), (8, 96)])
def test_pack_unpack_round_trip(bits, o, k):
    w = _codes(np.random.default_rng(o + k), o, k, bits)
    packed = PG.pack_packed_weights(w, bits)
    g = 8 // bits
    assert packed.dtype == np.uint8 and packed.shape == (-(-o // (16 * g)), k // 4, 16, 4)
    np.testing.assert_array_equal(PG.unpack_packed_weights(packed, bits, o), w)


@pytest.mark.parametrize("bits", PG.PACKED_BITS)
def test_masked_slot_sums_give_the_codes(bits):
    """The identity the kernel relies on, in numpy: the byte masked to slot s's low bits, read as int8, is
    `sum_{t<=s} 2^(bits*t) u_t` with the offset-binary lower slots (the top slot: the whole byte as int8)."""
    g, half = 8 // bits, 1 << (bits - 1)
    w = _codes(np.random.default_rng(1), 16 * g, 4, bits)
    byte = PG.pack_packed_weights(w, bits)[0, 0]  # [16 lanes, 4]
    slots = w.reshape(g, 16, 4).astype(np.int64)
    for s in range(g):
        masked = (byte.astype(np.int64) & ((1 << (bits * (s + 1))) - 1)).astype(np.uint8).view(np.int8)
        # offset-binary lower slots; the top slot two's complement
        want = sum((slots[t] + (half if t < g - 1 else 0)) << (bits * t) for t in range(s + 1))
        np.testing.assert_array_equal(masked.astype(np.int64), want)


def test_choose_weight_bits_rule():
    rng = np.random.default_rng(0)
    w2, w3, w4 = (_codes(rng, 64, 64, b) for b in (2, 3, 4))
    w8 = _codes(rng, 64, 64, 8)
    assert [PG.choose_weight_bits(w, min_bytes=0) for w in (w2, w3, w4, w8)] == [2, 4, 4, 8]
    # 8-bit codes never take the packed path, whatever the size; nor a reduction length not a multiple of 4
    assert PG.choose_weight_bits(w8, min_bytes=0) == 8
    assert PG.choose_weight_bits(w2[:, :62], min_bytes=0, k=62) == 8
    # below the size threshold the int8 kernel stays
    assert PG.choose_weight_bits(w2, min_bytes=w2.size + 1) == 8
    # forcing: 8 always; a width the codes fit; a clear error otherwise
    assert PG.choose_weight_bits(w2, 8) == 8 and PG.choose_weight_bits(w2, 4) == 4
    with pytest.raises(ConfigError, match="weight_bits"):
        PG.choose_weight_bits(w4, 2)
    with pytest.raises(ConfigError, match="weight_bits"):
        PG.choose_weight_bits(w8, 4)
    with pytest.raises(ConfigError, match="weight_bits"):
        PG.choose_weight_bits(w2, 3)
    with pytest.raises(ConfigError, match="multiple of 4"):
        PG.choose_weight_bits(w2[:, :62], 2, k=62)


def _linear(op: str, bits: int | None, x, w, bias, mult=None, shift=None, target=VNNI512):
    params = {"x_shape": x.shape, "w_shape": w.shape, "out_shape": (x.shape[0], w.shape[0]), "node": "fc"}
    if bits is not None:
        params["weight_bits"] = bits
    consts = [w, bias]
    if op == "linear_requant":
        params.update(lo=0, hi=255)
        consts += [mult, shift]
    call = OpCall(op, params, target)
    strat = select_strategy(call)
    assert strat is not None and strat.name.startswith("x86_linear")
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            y = strat.emit(bb, call, [xv, *(relax.const(c) for c in consts)])
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = bb.get()
    names = [g.name_hint for g in mod.functions if g.name_hint.startswith("qc_linear")]
    ex = tvm.compile(mod, target=target)
    isa.check_instructions(ex, "avx512-vnni", r"vpdpbusd\s+.*%zmm")
    if not isa.should_execute("avx512-vnni"):
        pytest.skip("built and checked the avx512-vnni assembly; this CPU cannot execute it")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy(), names, strat.describe(call, w)


@pytest.mark.parametrize("requant", [True, False])
@pytest.mark.parametrize("bits", PG.PACKED_BITS)
@pytest.mark.parametrize("n,k,o", [(1, 160, 24), (1, 1280, 1000), (2, 36, 136)], ids=["o24", "o1000", "n2-o136"])
def test_packed_linear_bit_exact(requant, bits, n, k, o):
    """The packed GEMV against the reference, extreme codes on every slot, O not a multiple of 16 * 8 // bits,
    activations at 255 (the largest masked sums)."""
    rng = np.random.default_rng(bits * 7 + o)
    x = rng.integers(0, 256, (n, k)).astype(np.uint8)
    x[:, : k // 3] = 255
    w = _codes(rng, o, k, bits)
    bias = rng.integers(-5000, 5000, o).astype(np.int32)
    acc = R.linear(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(bias))
    if requant:
        # the accumulators' median on code 128 and +-3 sigma on the code range, so most outputs are not clamped
        acc0 = x.astype(np.int64) @ w.astype(np.int64).T
        sh = 26 + max(0, int(np.round(np.log2(3 * acc0.std() / 128))))
        mult, shift = np.full(o, 1 << 26, np.int32), np.full(o, sh, np.int32)
        bias = (bias - int(np.median(acc0)) + (128 << (sh - 26))).astype(np.int32)
        acc = R.linear(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(bias))
        ref = R.requantize(acc, torch.from_numpy(mult), torch.from_numpy(shift), lo=0, hi=255).numpy()
        assert len(np.unique(ref)) > 5
        got, names, desc = _linear("linear_requant", bits, x, w, bias, mult, shift)
    else:
        ref = acc.numpy()
        got, names, desc = _linear("linear", bits, x, w, bias)
    assert names == [f"qc_linear_w{bits}_{'rq' if requant else 'acc'}_{n}x{k}_{o}"]
    assert desc["mode"] == f"vnni512_w{bits}"
    np.testing.assert_array_equal(got, ref)


def test_eight_bit_weights_keep_the_int8_kernel():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (1, 64)).astype(np.uint8)
    w = _codes(rng, 32, 64, 8)
    bias = rng.integers(-500, 500, 32).astype(np.int32)
    got, names, desc = _linear("linear", None, x, w, bias)
    assert names == ["qc_linear_vnni_acc_1x64_32"] and desc["mode"] == "vnni512"
    np.testing.assert_array_equal(got, R.linear(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(bias)))
    with pytest.raises(ConfigError, match="weight_bits"):
        _linear("linear", 4, x, w, bias)
