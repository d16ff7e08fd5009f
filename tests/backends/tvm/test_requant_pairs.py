"""The even/odd-lane requantize epilogue (`requant.requant_expr(..., pairs=True)`, `requant.pair_lowering`)
bit-exact against `qcompile.ops.reference.requantize` on adversarial accumulators, and its assembly."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm")
from tvm import s_tir, te  # noqa: E402

from qcompile.backends.tvm.schedules.conv import GemmConv, pack_weights  # noqa: E402
from qcompile.backends.tvm.schedules.requant import bias_term, requant_expr  # noqa: E402
from qcompile.backends.tvm.schedules.x86.gemm import MODES, GemmKnobs, pointwise_conv_x86  # noqa: E402
from qcompile.ops import reference as R  # noqa: E402
from tests import kernel_isa as isa  # noqa: E402

I32_MIN, I32_MAX = -(2**31), 2**31 - 1


def _channels(shifts: list[int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per channel (multiplier, shift, int64 offset): every multiplier class (0, 1, 2^30, 2^31 - 1, random) at
    every shift, offsets the default rounding term `2^(s-1)`, 0, a random negative or positive one."""
    ms, ss, offs = [], [], []
    for s in shifts:
        for m in (0, 1, 2**30, 2**31 - 1, int(rng.integers(1, 2**31))):
            for kind in ("round", "zero", "random"):
                ms.append(m)
                ss.append(s)
                if kind == "round":
                    offs.append(1 << (s - 1))
                elif kind == "zero":
                    offs.append(0)
                else:  # |offset| < 2^61 keeps `acc*M + offset` inside int64 (the contract's bound is 2^62)
                    offs.append(int(rng.integers(-(2**61), 2**61)))
    return np.array(ms, np.int64), np.array(ss, np.int64), np.array(offs, np.int64)


def _accumulators(m: int, s: int, off: int, lo: int, hi: int, p: int, rng: np.random.Generator) -> np.ndarray:
    """`p` int32 accumulators for one channel: the int32 extremes and small values, the accumulators either side
    of each rounding boundary `acc*M + off = q*2^s` around the clamp range (exactly on it where M divides,
    e.g. round-half-up ties with M = 2^30), and random int32s."""
    vals = [I32_MIN, I32_MIN + 1, -(2**30), -2, -1, 0, 1, 2, 2**30, I32_MAX - 1, I32_MAX]
    if m > 0:
        for q in (lo - 1, lo, lo + 1, (lo + hi) // 2, hi - 1, hi, hi + 1):
            a0 = ((q << s) - off) // m
            vals += [a0 - 1, a0, a0 + 1, a0 + 2]
    vals = [min(max(v, I32_MIN), I32_MAX) for v in vals]
    rest = p - len(vals)
    vals += list(rng.integers(I32_MIN, I32_MAX, rest // 2, endpoint=True))
    vals += list(rng.integers(-(2**20), 2**20, rest - rest // 2))
    return rng.permutation(np.array(vals[:p], np.int64)).astype(np.int32)


def _reference(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray, lo: int, hi: int,
               offset: np.ndarray | None = None) -> np.ndarray:
    """`qcompile.ops.reference.requantize` of an `[O, P]` int32 accumulator (channels on dim 1 of `[1, O, P]`)."""
    t = (lambda a: None if a is None else torch.from_numpy(np.asarray(a, np.int64)))
    return R.requantize(torch.from_numpy(acc)[None], t(mult), t(shift), lo=lo, hi=hi, offset=t(offset)).numpy()[0]


def _epilogue_kernel(o: int, p: int, lo: int, hi: int, shift_min: int, lanes: int,
                     channels_in_lanes: bool = False, tail32: str = "hi32") -> tvm.tirx.PrimFunc:
    """The GEMM epilogue alone: `out[c, j] = requant_expr(acc[c, j], bterm[c], M[c], s[c], pairs=True)`, its
    pixel loop vectorised by `lanes` (1: scalar); `channels_in_lanes`: `[P, O]` tensors with the channel loop
    vectorised, so multiplier, bias term and shift are vectors too (not broadcasts); `tail32` is
    `requant_expr`'s."""
    shape = (p, o) if channels_in_lanes else (o, p)
    acc = te.placeholder(shape, "int32", name="acc")
    bterm = te.placeholder((o,), "int64", name="bterm")
    mult = te.placeholder((o,), "int32", name="mult")
    shift = te.placeholder((o,), "int32", name="shift")

    def body(a, b):
        c, j = (b, a) if channels_in_lanes else (a, b)
        return requant_expr(acc[a, b], bterm[c], mult[c], shift[c], lo, hi, shift_min, pairs=True, tail32=tail32)

    out = te.compute(shape, body, name="epilogue")
    sch = s_tir.Schedule(te.create_prim_func([acc, bterm, mult, shift, out]))
    if lanes > 1:
        _, ji = sch.split(sch.get_loops(sch.get_sblock("epilogue"))[-1], [None, lanes])
        sch.vectorize(ji)
    return sch.mod["main"]


# (family, vector lanes): zmm int32x16, ymm int32x8, and the scalar lowering
LANE_CASES = [("avx512-vnni", 16, False), ("avx2", 8, False), ("avx2", 1, False), ("avx512-vnni", 16, True)]


@pytest.mark.parametrize("family,lanes,cil", LANE_CASES,
                         ids=[f"{f}-x{n}{'-channels' if c else ''}" for f, n, c in LANE_CASES])
@pytest.mark.parametrize("shifts,lo,hi", [
    ([32, 33, 40, 47, 61, 62], 0, 255),  # every shift >= 32: the int32 tail (`MADD_HI32`)
    ([32, 38, 62], 3, 200),
    ([1, 2, 16, 31, 32, 33, 62], 0, 255),  # some shift < 32: the int64 tail (`MADD_SHR_CLAMP`)
    ([1, 31, 40], 0, 6),
], ids=["hi32", "hi32-clamp", "int64", "int64-relu6"])
def test_pair_epilogue_bit_exact_on_adversarial_accumulators(family, lanes, cil, shifts, lo, hi):
    rng = np.random.default_rng(sum(shifts) + lo + hi)
    mult, shift, off = _channels(shifts, rng)
    if cil:  # whole vectors of channels: repeat the first ones
        pad = -len(mult) % lanes
        mult, shift, off = (np.concatenate([a, a[:pad]]) for a in (mult, shift, off))
    o, p = len(mult), 96
    acc = np.stack([_accumulators(int(m), int(s), int(f), lo, hi, p, rng) for m, s, f in zip(mult, shift, off)])
    ref = _reference(acc, mult, shift, lo, hi, offset=off)
    inside = (ref > lo) & (ref < hi)
    assert inside.sum() > o and (ref == lo).any() and (ref == hi).any()  # neither clamp is the whole story
    bterm = bias_term(np.zeros(o, np.int64), mult, shift, off)
    lib = tvm.compile(_epilogue_kernel(o, p, lo, hi, min(shifts), lanes, cil), target=isa.target(family))
    asm = isa.assembly(lib)
    if lanes > 1:
        reg = "zmm" if lanes == 16 else "ymm"
        assert re.search(rf"vpmuldq\s+.*%{reg}", asm), f"no {reg} vpmuldq"
        assert not re.search(r"vpmovsxdq", asm), "the accumulator is still sign-extended to int64 halves"
    if not isa.should_execute(family):
        pytest.skip(f"built and checked the assembly; this CPU cannot execute {family}")
    acc_in = np.ascontiguousarray(acc.T) if cil else acc
    out = tvm.runtime.tensor(np.zeros(acc_in.shape, np.uint8))
    lib(*(tvm.runtime.tensor(a) for a in (acc_in, bterm, mult.astype(np.int32), shift.astype(np.int32))), out)
    np.testing.assert_array_equal(out.numpy().T if cil else out.numpy(), ref)


# (vector lanes, channels in lanes): one zmm, four zmm (the 64-lane epilogue of `GemmKnobs.store64`), a vector of
# channels (shift a vector, not a broadcast), and the lane counts that keep the plain shift (8) or lower lane by lane
SHR_CASES = [(16, False), (64, False), (16, True), (8, False), (1, False)]


@pytest.mark.parametrize("lanes,cil", SHR_CASES, ids=[f"x{n}{'-channels' if c else ''}" for n, c in SHR_CASES])
@pytest.mark.parametrize("shifts,lo,hi", [
    ([32, 33, 36, 40, 47, 55, 61, 62], 0, 255),
    ([32, 38, 62], 3, 200),
    ([36, 41], 0, 6),
], ids=["all", "clamp", "relu6"])
def test_shr32_tail_bit_exact_on_adversarial_accumulators(lanes, cil, shifts, lo, hi):
    """`requant_expr(..., tail32="shr")` (`MADD_SHR32`: the high halves shifted lane by lane, `sra_lanes`) equals
    `qcompile.ops.reference.requantize` for every multiplier class, offset and shift 32-62 on accumulators either
    side of every rounding boundary, and emits `vpsravd` with no shift by an xmm count on 16k-lane vectors."""
    rng = np.random.default_rng(sum(shifts) + lo + hi + lanes)
    mult, shift, off = _channels(shifts, rng)
    if cil:
        pad = -len(mult) % lanes
        mult, shift, off = (np.concatenate([a, a[:pad]]) for a in (mult, shift, off))
    o, p = len(mult), 128
    acc = np.stack([_accumulators(int(m), int(s), int(f), lo, hi, p, rng) for m, s, f in zip(mult, shift, off)])
    ref = _reference(acc, mult, shift, lo, hi, offset=off)
    assert (ref == lo).any() and (ref == hi).any() and ((ref > lo) & (ref < hi)).sum() > o
    bterm = bias_term(np.zeros(o, np.int64), mult, shift, off)
    lib = tvm.compile(_epilogue_kernel(o, p, lo, hi, min(shifts), lanes, cil, tail32="shr"),
                      target=isa.target("avx512-vnni"))
    asm = isa.assembly(lib)
    if lanes % 16 == 0:
        assert re.search(r"vpsravd\s+%zmm", asm) and not re.search(r"vpsrad\s+%xmm\d+, %zmm", asm)
    if not isa.should_execute("avx512-vnni"):
        pytest.skip("built and checked the assembly; this CPU cannot execute avx512-vnni")
    acc_in = np.ascontiguousarray(acc.T) if cil else acc
    out = tvm.runtime.tensor(np.zeros(acc_in.shape, np.uint8))
    lib(*(tvm.runtime.tensor(a) for a in (acc_in, bterm, mult.astype(np.int32), shift.astype(np.int32))), out)
    np.testing.assert_array_equal(out.numpy().T if cil else out.numpy(), ref)


def test_requant_expr_names_its_tail_forms():
    with pytest.raises(ValueError, match="tail32"):
        requant_expr(te.var("a", "int32"), te.var("b", "int64"), te.var("m", "int32"), te.var("s", "int32"), 0, 255,
                     32, pairs=True, tail32="vpsrad")


def test_pair_epilogue_with_bias_matches_the_reference_conv_requantize():
    """`bterm = bias*M + 2^(s-1)` (rewrite 1) through the pair form equals requantize(acc + bias)."""
    rng = np.random.default_rng(7)
    o, p = 24, 64
    mult = rng.integers(0, 2**31, o).astype(np.int64)
    shift = rng.integers(32, 63, o).astype(np.int64)
    bias = rng.integers(-(2**24), 2**24, o).astype(np.int64)
    acc = rng.integers(-(2**30), 2**30, (o, p)).astype(np.int32)
    acc[:, :4] = [I32_MIN + 2**24, I32_MAX - 2**24, 0, -1]
    ref = _reference((acc.astype(np.int64) + bias[:, None]).astype(np.int32), mult, shift, 0, 255)
    lib = tvm.compile(_epilogue_kernel(o, p, 0, 255, 32, 16), target=isa.target("avx512-vnni"))
    if not isa.should_execute("avx512-vnni"):
        pytest.skip("this CPU cannot execute avx512-vnni")
    out = tvm.runtime.tensor(np.zeros((o, p), np.uint8))
    args = (acc, bias_term(bias, mult, shift), mult.astype(np.int32), shift.astype(np.int32))
    lib(*(tvm.runtime.tensor(a) for a in args), out)
    np.testing.assert_array_equal(out.numpy(), ref)


def _epilogue_instructions(asm: str) -> dict[str, int]:
    return {ins: len(re.findall(rf"^\s+{ins}\s", asm, re.M))
            for ins in ("vpmuldq", "vpmovsxdq", "vpmovzxdq", "vpmovqd")}


@pytest.mark.parametrize("shift_min", [36, 20], ids=["hi32", "int64"])
def test_gemm_epilogue_multiplies_lanes_in_place(shift_min):
    """The VNNI-512 GEMM (K=16, MobileNetV2's 16->96 expand) with `pairs` has no `vpmovsxdq`/`vpmovzxdq` widening
    or `vpmovqd` narrowing, the widening form widens, and both give the reference's codes. (With the
    accumulators in registers, `unroll_epilogue`, LLVM widens the accumulator with `vpmovzxdq`: `vpmuldq` reads
    only the low 32 bits of each lane, sign included, so the high half need not be the sign.)"""
    rng = np.random.default_rng(shift_min)
    k, p, o = 16, 77, 24
    x = rng.integers(0, 256, (k, p)).astype(np.uint8)
    w = rng.integers(-128, 128, (o, k)).astype(np.int8)
    bias = rng.integers(-5000, 5000, o).astype(np.int32)
    shift = rng.integers(shift_min, shift_min + 4, o).astype(np.int32)
    mult = (np.float64(2.0) ** (shift.astype(np.float64) - 8) * rng.uniform(0.5, 1.0, o)).astype(np.int32)
    target = isa.target("avx512-vnni")
    gc = GemmConv(k, p, o, shift_min=shift_min)
    libs = {pairs: tvm.compile(pointwise_conv_x86(gc, "vnni512", GemmKnobs(12, 16), pairs=pairs), target=target)
            for pairs in (False, True)}
    new, old = (_epilogue_instructions(isa.assembly(libs[v])) for v in (True, False))
    assert new["vpmuldq"] >= 2 and new["vpmovsxdq"] == new["vpmovzxdq"] == new["vpmovqd"] == 0
    assert old["vpmovsxdq"] + old["vpmovzxdq"] > 0
    if not isa.should_execute("avx512-vnni"):
        pytest.skip("built and checked the assembly; this CPU cannot execute avx512-vnni")
    acc = w.astype(np.int64) @ x.astype(np.int64) + bias[:, None]
    ref = _reference(acc.astype(np.int32), mult, shift, 0, 255)
    assert len(np.unique(ref)) > 10
    _, g, _, wdt = MODES["vnni512"]
    for pairs, lib in libs.items():
        out = tvm.runtime.tensor(np.zeros((o, p), np.uint8))
        lib(*(tvm.runtime.tensor(a) for a in (x, pack_weights(w, g, wdt), bias_term(bias, mult, shift), mult, shift)),
            out)
        np.testing.assert_array_equal(out.numpy(), ref, err_msg=f"pairs={pairs}")


@pytest.mark.parametrize("c,h,s,pad_value,knobs", [
    (32, 14, 1, 9, (16, False, 4, 2)),  # the 3x3 row kernel at 14 px (2 rows x 16 lanes)
    (24, 7, 1, 0, (8, False, 1, 2)),  # 1 row x 8 lanes at 7 px
    (16, 28, 2, 3, (16, True, 4, 4)),  # tap quads (`vpdpbusd`)
], ids=["rows16", "rows8", "quads16"])
@pytest.mark.parametrize("shift_lo", [36, 20], ids=["hi32", "int64"])
def test_depthwise_epilogue_opt_in_pairs_bit_exact(monkeypatch, c, h, s, pad_value, knobs, shift_lo):
    """`conv.dw_epilogue(..., pairs=True)` (off by default) keeps the x86 depthwise kernels bit-exact."""
    import functools

    from qcompile.backends.tvm.schedules.conv import DwConv, dw_epilogue
    from qcompile.backends.tvm.schedules.x86 import depthwise as xdw

    monkeypatch.setattr(xdw, "dw_epilogue", functools.partial(dw_epilogue, pairs=True))
    rng = np.random.default_rng(h + s + shift_lo)
    x = rng.integers(0, 256, (c, h, h)).astype(np.uint8)
    w = rng.integers(-128, 128, (c, 1, 3, 3)).astype(np.int8)
    bias = rng.integers(-5000, 5000, c).astype(np.int32)
    shift = rng.integers(shift_lo, shift_lo + 4, c).astype(np.int32)
    mult = (np.float64(2.0) ** (shift.astype(np.float64) - 12) * rng.uniform(0.5, 1.0, c)).astype(np.int32)
    dk = xdw.DwKnobs(*knobs[:3], taps=knobs[3])
    dw = DwConv(c, h, h, 3, 3, (s, s), (1, 1), pad_value=pad_value, shift_min=int(shift.min()))
    target = isa.target("avx512-vnni")
    lib = tvm.compile(xdw.depthwise_kernel(dw, dk, target=target), target=target)
    assert not re.search(r"vpmovsxdq", isa.assembly(lib))
    if not isa.should_execute("avx512-vnni"):
        pytest.skip("built and checked the assembly; this CPU cannot execute avx512-vnni")
    acc = R.conv2d(torch.from_numpy(x)[None], torch.from_numpy(w), torch.from_numpy(bias), stride=s, padding=1,
                   groups=c, pad_value=pad_value)
    ref = R.requantize(acc, torch.from_numpy(mult), torch.from_numpy(shift), lo=0, hi=255).numpy()[0]
    assert len(np.unique(ref)) > 10
    out = tvm.runtime.tensor(np.zeros((c, dw.ho, dw.wo), np.uint8))
    args = (x, xdw.dw_weights(w, 3, 3, dk), bias_term(bias, mult, shift), mult, shift)
    lib(*(tvm.runtime.tensor(a) for a in args), out)
    np.testing.assert_array_equal(out.numpy(), ref)


@pytest.mark.parametrize("lanes", [2, 3, 4, 7])
@pytest.mark.parametrize("shift_min", [40, 8], ids=["hi32", "int64"])
def test_pair_epilogue_on_short_and_odd_vectors(lanes, shift_min):
    """Vectors of 2 or an odd number of lanes lower lane by lane, 4 lanes by the pair form: all exact."""
    rng = np.random.default_rng(lanes * shift_min)
    o, p = 5, lanes * 6
    acc = rng.integers(I32_MIN, I32_MAX, (o, p), endpoint=True).astype(np.int32)
    acc[:, :2] = [I32_MIN, I32_MAX]
    mult = rng.integers(0, 2**31, o).astype(np.int64)
    shift = rng.integers(shift_min, shift_min + 20, o).astype(np.int64)
    ref = _reference(acc, mult, shift, 0, 255)
    lib = tvm.compile(_epilogue_kernel(o, p, 0, 255, shift_min, lanes), target=isa.target("avx2"))
    if not isa.should_execute("avx2"):
        pytest.skip("this CPU cannot execute avx2")
    out = tvm.runtime.tensor(np.zeros((o, p), np.uint8))
    args = (acc, bias_term(np.zeros(o, np.int64), mult, shift), mult.astype(np.int32), shift.astype(np.int32))
    lib(*(tvm.runtime.tensor(a) for a in args), out)
    np.testing.assert_array_equal(out.numpy(), ref)


def _add_cases(rng: np.random.Generator) -> list[tuple[tuple[int, int, int, int, int, int], bool]]:
    """((Ma, Mb, offset, shift, lo, hi), spans) of residual adds at every shift of `add_int32` (16..38): every
    multiplier class (0, 1, 2^16 - 1, 2^16, 2^30, 2^31 - 1, random) paired with offsets near the clamps; offsets far
    beyond either clamp (the clamped high part); and `spans`: multipliers `r 2^s` (r in [0.3, 1), as
    `passes.to_integer` makes them) with an offset that centres the result, so that most codes are inside the clamp.
    """
    cases = []
    classes = (0, 1, 2**16 - 1, 2**16, 2**30, 2**31 - 1)
    for s in range(16, 39):
        for _ in range(2):
            ma = int(rng.choice([*classes, int(rng.integers(1, 2**31))]))
            mb = int(rng.choice([*classes, int(rng.integers(1, 2**31))]))
            off = int(rng.integers(-(1 << (s + 9)), 1 << (s + 9)))
            cases.append(((ma, mb, off, s, 0, 255), False))
        for _ in range(2):
            ma, mb = (min(int(rng.uniform(0.3, 1.0) * 2.0**s), 2**31 - 1) for _ in range(2))
            lo, hi = (int(rng.integers(0, 30)), int(rng.integers(200, 256))) if rng.random() < 0.5 else (0, 255)
            off = (int(rng.integers(-60, 60)) << s) + int(rng.integers(0, 1 << s))
            cases.append(((ma, mb, off, s, lo, hi), s <= 31))
        cases.append(((2**30, 2**30, -(2**61), s, 0, 255), False))  # below every clamp
        cases.append(((2**30, 2**30, 2**61, s, 0, 255), False))  # above
        cases.append(((int(rng.integers(1, 2**31)), 2**31 - 1, (1 << (s + 8)) + 12345, s, 0, 255), False))  # bound
    return cases


def _add_body(a, b, consts):
    from qcompile.backends.tvm.schedules.requant import add_int32

    return lambda i: add_int32(a[i], b[i], *consts)


def test_add_int32_exact_on_every_code_pair():
    """`requant.add_int32` (the residual add in int32 arithmetic) equals `qcompile.ops.reference.add` on all 65536
    pairs of uint8 codes for every multiplier class and shift it applies to, offsets across and far beyond the
    clamps; `add_int32_applies` refuses what it does not cover."""
    from qcompile.backends.tvm.schedules.requant import add_int32_applies

    rng = np.random.default_rng(20)
    a_np = np.repeat(np.arange(256, dtype=np.uint8), 256)
    b_np = np.tile(np.arange(256, dtype=np.uint8), 256)
    cases = _add_cases(rng)
    n = a_np.size
    a = te.placeholder((n,), "uint8", name="a")
    b = te.placeholder((n,), "uint8", name="b")
    target = isa.target("avx512")
    runs = isa.should_execute("avx512")
    for (ma, mb, _off, s, lo, hi), _ in cases:
        assert add_int32_applies(ma, mb, s, lo, hi)
    for bad in ((-1, 5, 31, 0, 255), (5, 2**31, 31, 0, 255), (5, 5, 15, 0, 255), (5, 5, 39, 0, 255),
                (5, 5, 31, -1, 255), (5, 5, 31, 0, 256)):
        assert not add_int32_applies(*bad)
    checked = 0
    for consts, spans in cases:
        ma, mb, off, s, lo, hi = consts
        out = te.compute((n,), _add_body(a, b, consts), name="out")
        sch = s_tir.Schedule(te.create_prim_func([a, b, out]))
        _, ji = sch.split(sch.get_loops(sch.get_sblock("out"))[0], [None, 16])
        sch.vectorize(ji)
        lib = tvm.compile(sch.mod["main"], target=target)
        if not runs:
            # this CPU cannot execute AVX-512: the first case's build shows the kernel compiles for it; building
            # the other 160 only to discard them checked nothing (16 s of the fast suite on a 2-core Zen 3)
            break
        got = tvm.runtime.tensor(np.zeros(n, np.uint8))
        lib(tvm.runtime.tensor(a_np), tvm.runtime.tensor(b_np), got)
        ref = R.add(torch.from_numpy(a_np), torch.from_numpy(b_np), multiplier_a=ma, multiplier_b=mb, offset=off,
                    shift=s, lo=lo, hi=hi).numpy()
        np.testing.assert_array_equal(got.numpy(), ref, err_msg=str((ma, mb, off, s, lo, hi)))
        if spans:  # these test the arithmetic inside the clamp, not only the clamps
            assert len(np.unique(ref)) > 100, (ma, mb, off, s)
            checked += 1
    if not runs:
        pytest.skip("built an avx512 kernel; this CPU cannot execute AVX-512 (the check runs on a host with avx512f)")
    assert checked == 2 * (31 - 16 + 1)
