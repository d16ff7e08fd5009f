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
    groups, inner = PG.packed_blocking(o, bits)
    assert groups % inner == 0 and groups * 16 * g >= o > (groups - inner) * 16 * g
    assert packed.dtype == np.uint8 and packed.shape == (groups, k // 4, 16, 4)
    np.testing.assert_array_equal(PG.unpack_packed_weights(packed, bits, o), w)


def test_blocking_pads_groups_to_whole_blocks():
    """8 accumulator vectors per block (4 groups of 2 slots, 2 of 4), the groups padded to whole blocks (336
    channels: 11 groups of 32 at 4 bits -> 12); on 4 pixels 1 group per block."""
    assert PG.packed_blocking(336, 4) == (12, 4) and PG.packed_blocking(336, 2) == (6, 2)
    assert PG.packed_blocking(1000, 4) == (32, 4) and PG.packed_blocking(24, 4) == (1, 1)
    assert PG.packed_blocking(960, 4, block_rows=4) == (30, 1) and PG.packed_blocking(960, 2, 4) == (15, 1)


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
    every = PG.PackedWeights(min_bytes=0)
    assert [PG.choose_weight_bits(w, policy=every) for w in (w2, w3, w4, w8)] == [2, 4, 4, 8]
    # 8-bit codes never take the packed path, whatever the size; nor a reduction length not a multiple of 4
    assert PG.choose_weight_bits(w8, policy=every) == 8
    assert PG.choose_weight_bits(w2[:, :62], policy=every, k=62) == 8
    # below the size threshold, or on more rows than `max_rows`, the int8 kernel stays (the default rule: 64x64 is
    # 4 KiB, under PACKED_MIN_WEIGHT_BYTES; 1024x64 is 64 KiB)
    assert PG.choose_weight_bits(w2, policy=PG.PackedWeights(min_bytes=w2.size + 1)) == 8
    assert PG.choose_weight_bits(w2, rows=2, policy=every) == 8
    assert PG.choose_weight_bits(w2) == 8 and PG.choose_weight_bits(np.tile(w2, (16, 1))) == 2
    # a reduction too long for int32 masked sums keeps int8; forcing it is an error
    long_k = np.zeros((1, PG.PACKED_MAX_K + 4), np.int8)
    assert PG.choose_weight_bits(long_k, policy=every) == 8
    with pytest.raises(ConfigError, match="reduction length"):
        PG.choose_weight_bits(long_k, 2)
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
    # the per-lowering policy: force 8 wins over the rule, a call's own width over the policy
    with PG.packed_weights(PG.PackedWeights(force=8, min_bytes=0)):
        assert PG.choose_weight_bits(w2) == 8 and PG.choose_weight_bits(w2, 2) == 2
    with PG.packed_weights(PG.PackedWeights(force=4)):
        assert PG.choose_weight_bits(w2) == 4
        with pytest.raises(ConfigError, match="weight_bits"):
            PG.choose_weight_bits(w8)
    assert PG.current_packed_weights() == PG.PackedWeights()
    for bad in ({"force": 3}, {"min_bytes": -1}, {"max_rows": 0}):
        with pytest.raises(ConfigError, match="PackedWeights"):
            PG.PackedWeights(**bad)


def _run_strategy(strat, call, x, consts, target, prefix):
    """Emit `strat` for `call` on input `x` with constant operands `consts`, build it for `target` (its assembly must
    use zmm `vpdpbusd`), run it: (output, the kernels' names starting with `prefix`, `strat.describe`)."""
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            y = strat.emit(bb, call, [xv, *(relax.const(c) for c in consts)])
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = bb.get()
    names = [g.name_hint for g in mod.functions if g.name_hint.startswith(prefix)]
    ex = tvm.compile(mod, target=target)
    isa.check_instructions(ex, "avx512-vnni", r"vpdpbusd\s+.*%zmm")
    if not isa.should_execute("avx512-vnni"):
        pytest.skip("built and checked the avx512-vnni assembly; this CPU cannot execute it")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy(), names, strat.describe(call, consts[0])


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
    return _run_strategy(strat, call, x, consts, target, "qc_linear")


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


def _pointwise(op: str, bits: int | None, x, w, bias, mult, shift, lo=2, hi=253, target=VNNI512):
    """A 1x1 conv on `x` `[1, C, H, W]` through the x86 conv strategy with `weight_bits=bits`: (output, kernel
    names, describe)."""
    from tvm_graphs import conv_call_params

    lohi = {"lo": lo, "hi": hi} if op == "conv2d_requant" else {}
    params = conv_call_params(x.shape, w.shape, s=1, p=0, groups=1, pad_value=0, **lohi)
    if bits is not None:
        params["weight_bits"] = bits
    call = OpCall(op, params, target)
    strat = select_strategy(call)
    consts = [w, bias] + ([mult, shift] if op == "conv2d_requant" else [])
    return _run_strategy(strat, call, x, consts, target, "qc_")


@pytest.mark.parametrize("op", ["conv2d_requant", "conv2d"])
@pytest.mark.parametrize("bits", PG.PACKED_BITS)
@pytest.mark.parametrize("c,h,o", [(960, 1, 1280), (40, 2, 240), (38, 1, 56), (6, 2, 16), (56, 1, 336)], ids=str)
def test_packed_pointwise_gemv_bit_exact(op, bits, c, h, o):
    """1x1 convs on 1 and 4 pixels (MobileNetV3's 960->1280 head, the 32 px stages) with packed weights against
    the reference: extreme codes on every slot, K not a multiple of 4 (38, 6: zero-padded quads), O not a
    multiple of the 16 * 8 // bits channels of a byte (56, 16, 240, 336: groups padded to whole blocks)."""
    rng = np.random.default_rng(c + h + o + bits)
    x = rng.integers(0, 256, (1, c, h, h)).astype(np.uint8)
    x[0, : c // 3] = 255
    w = _codes(rng, o, c, bits)[:, :, None, None]
    bias = rng.integers(-2000, 2000, o).astype(np.int32)
    acc0 = R.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.zeros(o, dtype=torch.int32)).numpy()
    sh = 26 + max(0, int(np.round(np.log2(3 * acc0.std() / 128))))
    mult, shift = np.full(o, 1 << 26, np.int32), np.full(o, sh, np.int32)
    bias = (bias - int(np.median(acc0)) + (128 << (sh - 26))).astype(np.int32)
    acc = R.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(bias))
    ref = acc.numpy() if op == "conv2d" else R.requantize(acc, torch.from_numpy(mult), torch.from_numpy(shift),
                                                          lo=2, hi=253).numpy()
    got, names, desc = _pointwise(op, bits, x, w, bias, mult, shift)
    assert desc == {"kind": "gemv", "mode": f"vnni512_w{bits}"}
    assert any(nm.startswith(f"qc_gemv_w{bits}_") for nm in names), names
    if op == "conv2d_requant":
        assert len(np.unique(ref)) > 5
    np.testing.assert_array_equal(got, ref)


def test_packed_pointwise_needs_avx512_vnni():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1, 16, 1, 1)).astype(np.uint8)
    w = _codes(rng, 32, 16, 2)[:, :, None, None]
    z = np.zeros(32, np.int32)
    with pytest.raises(ConfigError, match="weight_bits"):
        _pointwise("conv2d", 2, x, w, z, z, z, target=isa.target("avx-vnni"))


def _subnet_integer_graph():
    """The largest subnet of a tiny `mobilenet_v3` space (digits, 32 px, width 0.25) with 2- and 4-bit weights per
    layer and 8-bit activations, calibrated: its IntegerGraph."""
    import dataclasses

    import qcompile as qc
    from qcompile.config import QuantPolicy
    from tests.conftest import tiny_space

    torch.manual_seed(0)
    space = tiny_space("mobilenet_v3")
    qnet = qc.quantize(qc.trace(space.build_supernet()), weight_bits=(2, 4), act_bits=(8,)).eval()
    rng = np.random.default_rng(0)
    policy = QuantPolicy(tuple((int(rng.choice([2, 4])), 8) for _ in range(space.num_layer_slots)))
    sub = qc.extract(qnet, dataclasses.replace(space.largest(), policy=policy))
    gen = torch.Generator().manual_seed(1)
    qc.calibrate(sub, [(torch.randn(8, 3, 32, 32, generator=gen), torch.zeros(8, dtype=torch.long))
                       for _ in range(2)])
    return qc.to_integer(sub.eval())


def _packed_kernels(low) -> set[str]:
    return {f[:10] for k in low.kernels for f in k["primfuncs"] if f.startswith(("qc_gemv_w", "qc_linear_w"))}


def test_supernet_subnet_with_packed_weights_is_exact():
    """End to end: the 2/4-bit subnet (`_subnet_integer_graph`) lowered with the packed GEMVs on every layer that
    fits (`min_bytes=0`: at this width the layers are 4-20 KB), bit-exact against the reference integer executor."""
    import qcompile as qc

    if not isa.should_execute("avx512-vnni"):
        pytest.skip("the packed GEMVs need AVX512-VNNI on this host")
    ig = _subnet_integer_graph()
    with PG.packed_weights(PG.PackedWeights(min_bytes=0)):
        low = qc.lower(ig, "x86")
    # the 1-pixel pointwise layers of the last stage (the 2x2 ones have 4 pixels: `PACKED_MAX_ROWS`)
    assert _packed_kernels(low) == {"qc_gemv_w2", "qc_gemv_w4"}
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((1, 3, 32, 32)).astype(np.float32)
        np.testing.assert_array_equal(low(x), ig(torch.from_numpy(x)).numpy())


@pytest.mark.slow
def test_supernet_subnet_with_packed_weights_dynamic_batch_is_exact():
    """The same subnet as one dynamic-batch library (the batch-1 kernels in a loop over a symbolic batch, where a
    read past a buffer segfaulted in session 13, commit 3316305): bit-exact at batch 1, 3 and 8."""
    import qcompile as qc

    if not isa.should_execute("avx512-vnni"):
        pytest.skip("the packed GEMVs need AVX512-VNNI on this host")
    ig = _subnet_integer_graph()
    with PG.packed_weights(PG.PackedWeights(min_bytes=0)):
        low = qc.lower(ig, "x86", batch="dynamic")
    assert _packed_kernels(low) == {"qc_gemv_w2", "qc_gemv_w4"}
    for n in (1, 3, 8):
        x = np.random.default_rng(n).standard_normal((n, 3, 32, 32)).astype(np.float32)
        ref = np.concatenate([ig(torch.from_numpy(x[i : i + 1])).numpy() for i in range(n)])
        np.testing.assert_array_equal(low(x), ref)
