"""x86 int8 dot-product tensor intrinsics registered by qcompile (AVX2, AVX-512/AVX-VNNI).

All intrinsics here share one orientation: the *vector* operand is 8 rows of activations (8 output
pixels, 256 bits), the *broadcast* operand is a few weights of one output channel, and the result is
8 int32 lanes (8 pixels of one output channel, i.e. NCHW rows). That is the GEMM
`acc[o, p] += sum_k x[k, p] * w[o, k]` of integer_semantics.md `conv2d` with the activation packed as
`[K/4, P, 4]` (4 reduction values adjacent per pixel).

Exactness (integer_semantics.md: TVM must match the reference bit for bit):

- `U8S8_8x4_AVX2` is `vpmaddubsw` (u8 x s8 -> pairwise int16 sums, *saturating*) then `vpmaddwd` with
  ones (int16 pairs -> int32). A pair of products `x0*w0 + x1*w1` saturates when it leaves
  [-32768, 32767]: with 8-bit codes 2*255*(-128) = -65280 does. It is exact only when every adjacent
  weight pair of the packed weights keeps `act_max * (w0+ + w1+) <= 32767` and
  `act_max * (w0- + w1-) >= -32768` (`u8s8_pairs_safe` checks this on the actual constants; it
  always holds for activation codes of <= 7 bits, since 127*256 = 32512).
- `I16_8x2_AVX2` is `vpmaddwd` on int16 operands (codes widened at pack time): products of two
  int16 values summed in int32 cannot saturate, so it is exact for every bit-width we emit, at
  about 0.75x the u8 path's throughput. Schedules use it when `u8s8_pairs_safe` fails.
- `U8S8_8x4_VNNI` is `vpdpbusd` (AVX512-VL VNNI or AVX-VNNI): four u8 x s8 products summed straight
  into int32, no int16 intermediate, exact for all codes. `U8S8_16x4_VNNI512` is its 512-bit form
  (16 pixels per step) for AVX512-VNNI CPUs.
- `I16_16x2_AVX512` (`vpmaddwd` zmm, then `vpaddd`) and `I16_16x2_VNNI512` (`vpdpwssd`, the same sum
  accumulated in one instruction, non-saturating) are the 16-lane int16 pair products; the depthwise
  kernel feeds them two taps of one output pixel per int32 lane (exact: |x*w| <= 255*128 per product).

Besides the dot products, one elementwise op: `CLAMP_U8_X86`, the requantize epilogue's last step (int32 ->
uint8 code) narrowed 64 lanes at a time (`clamp_u8_lowering`).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import tirx

from qcompile.backends.tvm.intrin.common import dot_desc, dot_impl, register_scoped, target_features

__all__ = [
    "CLAMP_U8_X86",
    "clamp_u8_lowering",
    "narrow_u8_x86",
    "U8S8_8x4_AVX2",
    "I16_8x2_AVX2",
    "U8S8_8x4_VNNI",
    "U8S8_16x4_VNNI512",
    "I16_16x2_AVX512",
    "I16_16x2_VNNI512",
    "S8U8_16x4_VNNI512_BCAST",
    "S8U8_8x4_VNNI_BCAST",
    "U8S8_16x4_VNNI512_LANEWISE",
    "U8S8_8x4_VNNI_LANEWISE",
    "DOT_INTRINSICS",
    "slide_intrinsic",
    "has_vbmi",
    "has_avx512_vnni",
    "register_x86_intrinsics",
    "u8s8_pairs_safe",
    "has_vnni",
    "has_avx2",
]

U8S8_8x4_AVX2 = "qcompile_u8s8_8x4_avx2"
I16_8x2_AVX2 = "qcompile_i16_8x2_avx2"
U8S8_8x4_VNNI = "qcompile_u8s8_8x4_vnni"
U8S8_16x4_VNNI512 = "qcompile_u8s8_16x4_vnni512"
I16_16x2_AVX512 = "qcompile_i16_16x2_avx512"
I16_16x2_VNNI512 = "qcompile_i16_16x2_vnni512"
S8U8_16x4_VNNI512_BCAST = "qcompile_s8u8_16x4_vnni512_bcast"
S8U8_8x4_VNNI_BCAST = "qcompile_s8u8_8x4_vnni_bcast"
U8S8_16x4_VNNI512_LANEWISE = "qcompile_u8s8_16x4_vnni512_lanewise"
U8S8_8x4_VNNI_LANEWISE = "qcompile_u8s8_8x4_vnni_lanewise"
#: strides of the sliding-window tap-quad steps (`slide_intrinsic`)
SLIDE_STRIDES = (1, 2, 3, 4)  # (lanes - 1) * stride + 4 <= 4 * lanes: the window fits one load

#: name -> (instruction, int32 lanes) of each broadcast dot-product intrinsic (`dot_impl`)
DOT_INTRINSICS = {
    U8S8_8x4_AVX2: ("pmaddubsw", 8),
    I16_8x2_AVX2: ("pmaddwd", 8),
    U8S8_8x4_VNNI: ("vpdpbusd", 8),
    U8S8_16x4_VNNI512: ("vpdpbusd", 16),
    I16_16x2_AVX512: ("pmaddwd", 16),
    I16_16x2_VNNI512: ("vpdpwssd", 16),
}


#: (instruction, lanes) -> LLVM intrinsic
_LLVM = {
    ("pmaddubsw", 8): "llvm.x86.avx2.pmadd.ub.sw",
    ("pmaddwd", 8): "llvm.x86.avx2.pmadd.wd",
    ("pmaddwd", 16): "llvm.x86.avx512.pmaddw.d.512",
    ("vpdpbusd", 8): "llvm.x86.avx512.vpdpbusd.256",
    ("vpdpbusd", 16): "llvm.x86.avx512.vpdpbusd.512",
    ("vpdpwssd", 16): "llvm.x86.avx512.vpdpwssd.512",
}


def _operands(instr: str) -> tuple[int, str, str]:
    """(reduction values per lane, activation dtype, weight dtype) of an instruction."""
    return (4, "uint8", "int8") if instr in ("pmaddubsw", "vpdpbusd") else (2, "int16", "int16")


#: instruction -> how `common.dot_impl` uses it (`common.DOT_FORMS`)
_FORM = {"pmaddubsw": "pairs", "pmaddwd": "add", "vpdpbusd": "fused", "vpdpwssd": "fused"}


_registered = False


def register_x86_intrinsics() -> None:
    """Register the qcompile x86 intrinsics with TVM once (idempotent)."""
    global _registered
    if _registered:
        return
    # the GEMV steps: 4 activations broadcast against 16 (8) rows of 4 weights, zmm (ymm) vpdpbusd
    for name, lanes in ((S8U8_16x4_VNNI512_BCAST, 16), (S8U8_8x4_VNNI_BCAST, 8)):
        register_scoped(name, lambda scope, lanes=lanes: dot_desc(lanes, 4, "uint8", "int8", scope, bcast="a"),
                        dot_impl(lanes, 4, "uint8", "int8", _LLVM[("vpdpbusd", lanes)], "fused", bcast="a"))
    # the lane-wise steps: 4 activations of each lane's channel against that channel's 4 weights (depthwise)
    for name, lanes in ((U8S8_16x4_VNNI512_LANEWISE, 16), (U8S8_8x4_VNNI_LANEWISE, 8)):
        register_scoped(name, lambda scope, lanes=lanes: dot_desc(lanes, 4, "uint8", "int8", scope, bcast="none"),
                        dot_impl(lanes, 4, "uint8", "int8", _LLVM[("vpdpbusd", lanes)], "fused", bcast="none"))
    for lanes in (8, 16):
        for stride in SLIDE_STRIDES:
            register_scoped(slide_intrinsic(lanes, stride), lambda scope, lanes=lanes, stride=stride:
                            _slide_desc(lanes, stride, scope), lambda scope, lanes=lanes, stride=stride:
                            _slide_impl(lanes, stride, scope))
    for name, (instr, lanes) in DOT_INTRINSICS.items():
        k, adt, bdt = _operands(instr)
        register_scoped(name, lambda scope, lanes=lanes, k=k, adt=adt, bdt=bdt: dot_desc(lanes, k, adt, bdt, scope),
                        dot_impl(lanes, k, adt, bdt, _LLVM[(instr, lanes)], _FORM[instr]))
    _registered = True


def has_avx2(target: tvm.target.Target) -> bool:
    """True when the x86 target may execute AVX2 instructions."""
    return "avx2" in target_features(target)


def has_avx512(target: tvm.target.Target) -> bool:
    """True when the target can execute 512-bit integer vectors (AVX512-F + AVX512-BW)."""
    return {"avx512f", "avx512bw"} <= target_features(target)


def has_vnni(target: tvm.target.Target) -> bool:
    """True when the target can execute the 256-bit `vpdpbusd` (AVX512-VL VNNI or AVX-VNNI)."""
    f = target_features(target)
    return "avxvnni" in f or {"avx512vnni", "avx512vl"} <= f


def has_vbmi(target: tvm.target.Target) -> bool:
    """True when the target has AVX512-VBMI with VL (`vpermb` on zmm and ymm: one instruction for the byte
    shuffle of `slide_intrinsic`; without it LLVM needs several)."""
    return {"avx512vbmi", "avx512vl"} <= target_features(target)


def has_avx512_vnni(target: tvm.target.Target) -> bool:
    """True when the target can execute the 512-bit `vpdpbusd` (AVX512-VNNI + AVX512-BW)."""
    return {"avx512vnni", "avx512bw"} <= target_features(target)


def u8s8_pairs_safe(w_packed: np.ndarray, act_max: int) -> bool:
    """Whether `vpmaddubsw` cannot saturate for these weights and activation codes in [0, act_max].

    `w_packed` is [..., K] with K a multiple of 4, reduction pairs (0,1), (2,3), ... adjacent exactly
    as the intrinsic loads them. The extreme pair sums are `act_max` times the sum of the positive
    (resp. negative) weights of the pair; both must stay inside int16.
    """
    w = np.asarray(w_packed, dtype=np.int64).reshape(-1, 2)
    pos = act_max * np.maximum(w, 0).sum(axis=1)
    neg = act_max * np.minimum(w, 0).sum(axis=1)
    return bool(pos.max(initial=0) <= 32767 and neg.min(initial=0) >= -32768)


def slide_intrinsic(lanes: int, stride: int) -> str:
    """Name of the sliding-window tap-quad step: `C[i] += sum_k A[i*stride + k] * B[k]` for `i < lanes` (8: ymm,
    16: zmm), `k < 4`, A a row of u8 codes, B four int8 taps broadcast: `vpdpbusd` on the four horizontally
    adjacent codes of each output pixel, gathered in registers by one byte shuffle (`vpermb` where the target has
    AVX512-VBMI) of one `4 * lanes`-byte load, instead of a copy of every padded pixel four times in memory
    (`depthwise.depthwise_conv_pairs_x86`'s quads). The load reads `4 * lanes` bytes from the window's start, past
    the `(lanes - 1) * stride + 4` bytes the step uses: the caller's buffer must have them (it does not use their
    values). Exact: `vpdpbusd` sums four u8 x s8 products in int32 with no intermediate rounding."""
    if lanes not in (8, 16) or stride not in SLIDE_STRIDES:
        raise ValueError((lanes, stride))
    return f"qcompile_u8s8_{lanes}x4_slide_s{stride}"


def _slide_desc(lanes: int, stride: int, scope: str):
    from tvm.script import tirx as T

    span = (lanes - 1) * stride + 4

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (span,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (4,), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:span], B[0:4])
            T.writes(C[0:lanes])
            for i, r in T.grid(lanes, 4):
                with T.sblock("update"):
                    vi, vr = T.axis.remap("SR", [i, r])
                    C[vi] = C[vi] + T.cast(A[vi * stride + vr], "int32") * T.cast(B[vr], "int32")

    return desc


def _slide_impl(lanes: int, stride: int, scope: str):
    from tvm import tirx
    from tvm.script import tirx as T

    span = (lanes - 1) * stride + 4
    width = 4 * lanes
    # byte 4i + k of the shuffled vector is code i*stride + k of the loaded row
    index = [tirx.IntImm("int32", i * stride + k) for i in range(lanes) for k in range(4)]
    llvm = _LLVM[("vpdpbusd", lanes)]
    c_vt, a_vt = f"int32x{lanes}", f"uint8x{width}"

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (span,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (4,), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:span], B[0:4])
            T.writes(C[0:lanes])
            b_i32: T.let[T.int32] = T.reinterpret(B.vload([0], "int8x4"), dtype="int32")
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm), C.vload([0], c_vt),
                T.Shuffle([A.vload([0], a_vt)], index),
                T.reinterpret(T.broadcast(b_i32, lanes), dtype=f"int8x{width}"), dtype=c_vt)

    return impl


#: `x86_clamp_u8(x: int32, lo: int32, hi: int32) -> uint8`: `clamp(x, lo, hi)` as a uint8 code, for constant
#: `0 <= lo <= hi <= 255` (the requantize's last step, integer_semantics.md `requantize`)
CLAMP_U8_X86 = "qcompile.x86_clamp_u8"
_clamp_u8_registered = False


def _const_of(e: tirx.PrimExpr) -> int:
    return int((e.value if isinstance(e, tirx.Broadcast) else e).value)


def clamp_u8_lowering(e: tirx.PrimExpr) -> tirx.PrimExpr:
    """Lower `CLAMP_U8_X86`. A 64-lane call (an epilogue vectorised over 64 pixels of one channel) narrows its
    four zmm of int32 with two `vpackssdw` (int32 -> int16, signed saturation) and one `vpackuswb` (int16 ->
    uint8, unsigned saturation), which compose to `clamp(x, 0, 255)` for every int32 `x`; the packs interleave
    per 128-bit lane (lane L holds dwords L of the four inputs in turn), so one `vpermd` puts the 64 bytes in
    order, then `vpmaxub` / `vpminub` only where `lo > 0` / `hi < 255`. One 64-byte store instead of four
    `vpmovusdb` (about 2 cycles each on Zen 4, docs/peers.md session 12) and four `vpmaxsd`. AVX512-BW (every
    AVX512-VNNI CPU has it). Any other lane count: `max(min(x, hi), lo)` cast to uint8, lane by lane as
    before."""
    x, lo, hi = e.args
    n = e.ty.dtype.lanes
    lov, hiv = _const_of(lo), _const_of(hi)
    if n != 64:
        return tirx.Max(tirx.Min(x, hi), lo).astype(e.ty.dtype)

    def i32(v: int) -> tirx.PrimExpr:
        return tirx.const(v, "int32")

    q = [tirx.Shuffle([x], [i32(16 * v + i) for i in range(16)]) for v in range(4)]
    ab = tirx.call_llvm_pure_intrin("int16x32", "llvm.x86.avx512.packssdw.512", q[0], q[1])
    cd = tirx.call_llvm_pure_intrin("int16x32", "llvm.x86.avx512.packssdw.512", q[2], q[3])
    packed = tirx.reinterpret("int32x16", tirx.call_llvm_pure_intrin("int8x64", "llvm.x86.avx512.packuswb.512",
                                                                      ab, cd))
    # dword 4L + v of `packed` holds input vector v's lanes 4L..4L+3: move it to dword 4v + L
    y = tirx.reinterpret("uint8x64", tirx.Shuffle([packed], [i32(4 * (d % 4) + d // 4) for d in range(16)]))
    if lov > 0:
        y = tirx.Max(y, tirx.Broadcast(tirx.const(lov, "uint8"), 64))
    if hiv < 255:
        y = tirx.Min(y, tirx.Broadcast(tirx.const(hiv, "uint8"), 64))
    return y


def register_clamp_u8() -> None:
    """Register `CLAMP_U8_X86` with TVM once: pure, vectorisable, lowered by `clamp_u8_lowering`."""
    global _clamp_u8_registered
    if _clamp_u8_registered:
        return
    tvm.ir.register_op_attr(CLAMP_U8_X86, "TCallEffectKind", tirx.CallEffectKind.Pure.value)
    tvm.ir.register_op_attr(CLAMP_U8_X86, "TVectorizable", True)
    tvm.ir.register_op_attr(CLAMP_U8_X86, "TScriptPrinterName", CLAMP_U8_X86.replace(".", "_"))
    tirx.op.register_intrin_lowering(CLAMP_U8_X86, "default", f=clamp_u8_lowering, level=10)
    _clamp_u8_registered = True


def narrow_u8_x86(r: tirx.PrimExpr, lo: int, hi: int) -> tirx.PrimExpr:
    """`requant.requant_expr`'s `narrow`: the code `clamp(r, lo, hi)` of int32 `r` through `CLAMP_U8_X86`."""
    if not 0 <= lo <= hi <= 255:
        raise ValueError(f"narrow_u8_x86: bounds [{lo}, {hi}] outside the uint8 codes [0, 255]")
    register_clamp_u8()
    return tirx.call_intrin("uint8", CLAMP_U8_X86, r, tirx.const(lo, "int32"), tirx.const(hi, "int32"))


#: weight widths of the packed GEMV step (`packed_bcast_intrinsic`): codes per byte = 8 // bits
PACKED_BITS = (4, 2)


def packed_bcast_intrinsic(bits: int) -> str:
    """Name of the packed-weight GEMV step for `bits`-bit weights (`PACKED_BITS`), registered by
    `register_x86_intrinsics`: `C[s, i] += sum_r A[r] * slot(B[i, r], s)` for `s < 8 // bits` channel vectors of
    16 lanes, `r < 4`, A four u8 activations broadcast, B 64 packed bytes, where
    `slot(v, s) = int8(v & (2^(bits*(s+1)) - 1))`: the low `bits*(s+1)` bits of the byte (the top slot is the
    whole byte read as int8). One 64-byte load feeds `8 // bits` zmm `vpdpbusd`, each after one `vpand` (none for
    the top slot); `packed_gemv.pack_packed_weights` stores the codes so that differences of these sums give the
    weights' dot products exactly (`packed_gemv.unmix_expr`). AVX512-VNNI."""
    if bits not in PACKED_BITS:
        raise ValueError(f"packed_bcast_intrinsic: bits {bits} not in {PACKED_BITS}")
    return f"qcompile_s8u8_16x4_vnni512_bcast_p{bits}"


def packed_slot_expr(v: tirx.PrimExpr, s: tirx.PrimExpr, bits: int) -> tirx.PrimExpr:
    """`slot(v, s)` of `packed_bcast_intrinsic` as int32, for a uint8 byte `v` and slot index `s`: shared by the
    intrinsic's description and the kernel's compute so that tensorize matches them structurally."""
    one = tirx.const(1, "int32")
    mask = tirx.shift_left(one, tirx.const(bits, "int32") * (s + one)) - one
    return tirx.bitwise_and(v.astype("int32"), mask).astype("int8").astype("int32")


def _packed_desc(bits: int, scope: str):
    from tvm.script import tirx as T

    g = 8 // bits

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (16, 4), "uint8", offset_factor=1)
        C = T.match_buffer(c, (g, 16), "int32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:g, 0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:g, 0:16])
            for s, i, r in T.grid(g, 16, 4):
                with T.sblock("update"):
                    vs, vi, vr = T.axis.remap("SSR", [s, i, r])
                    C[vs, vi] = C[vs, vi] + T.cast(A[vr], "int32") * packed_slot_expr(B[vi, vr], vs, bits)

    return desc


def _packed_impl(bits: int, scope: str):
    from tvm.script import tirx as T

    g = 8 // bits
    llvm = _LLVM[("vpdpbusd", 16)]

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (16, 4), "uint8", offset_factor=1)
        C = T.match_buffer(c, (g, 16), "int32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:g, 0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:g, 0:16])
            a_i32: T.let[T.int32] = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            a_vec: T.let[T.uint8x64] = T.reinterpret(T.broadcast(a_i32, 16), dtype="uint8x64")
            v: T.let[T.uint8x64] = B.vload([0, 0], "uint8x64")
            # the top slot's mask is 0xff: the `vpand` folds away and the byte is read whole as int8
            for s in T.unroll(g):
                C[s, T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm), C.vload([s, 0], "int32x16"), a_vec,
                    T.reinterpret(T.bitwise_and(v, T.broadcast(T.Cast("uint8", T.shift_left(1, bits * (s + 1)) - 1),
                                                                64)), dtype="int8x64"), dtype="int32x16")

    return impl


_packed_registered = False


def register_packed_intrinsics() -> None:
    """Register `packed_bcast_intrinsic(bits)` for every `PACKED_BITS` (idempotent)."""
    global _packed_registered
    if _packed_registered:
        return
    for bits in PACKED_BITS:
        register_scoped(packed_bcast_intrinsic(bits), lambda scope, bits=bits: _packed_desc(bits, scope),
                        lambda scope, bits=bits: _packed_impl(bits, scope))
    _packed_registered = True
