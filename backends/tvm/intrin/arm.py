"""aarch64 int8 dot-product tensor intrinsics registered by qcompile (`sdot` with +dotprod, plain NEON).

Orientation matches `intrin.x86`: the *vector* operand is 4 output pixels x 4 reduction values of
activations (16 bytes, packed `[K/4, P, 4]`), the *broadcast* operand is 4 weights of one output
channel, and the result is 4 int32 lanes (4 pixels of one output channel, i.e. part of an NCHW row).
That is the GEMM `acc[o, p] += sum_k xs[k, p] * w[o, k]` of integer_semantics.md `conv2d`.

Both intrinsics multiply *signed* bytes. Activation codes are unsigned (0..255), so schedules feed
`xs = x - 128` (in [-128, 127]) and fold `128 * sum_k w[o, k]` into the bias at emit time
(`schedules.arm`); the identity `sum(x*w) = sum((x-128)*w) + 128*sum(w)` is exact in int32.

- `S8S8_4x4_SDOT` is `sdot v.4s, v.16b, v.16b` (Armv8.2 dotprod): four s8 x s8 products summed into
  each int32 lane, no narrow intermediate, exact for all operands. TVM 0.27 ships the same instruction
  as `dot_4x4_i8i8s32_sdot` with the operands the other way round (activations broadcast); ours keeps
  the pixels in lanes so results land in NCHW rows.
- `S8S8_4x4_NEON` is the Armv8.0 sequence TVM's `dot_4x4_i8i8s32_neon` uses: `smull` (s8 x s8 -> int16,
  exact: |(-128)*(-128)| = 16384 < 32767), `saddlp` (int16 pairs -> int32) on both halves, then `addp`.
  No saturation anywhere, so it is exact for every weight bit-width 2..8 and every code.
- `S8S8_2x2x8_MMLA` is `smmla v.4s, v.16b, v.16b` (Armv8.6 i8mm, FEAT_I8MM): a 2x8 by 8x2 int8 matrix product
  accumulated into a 2x2 int32 tile, `C[ch, px] += sum_k W[ch, k] * X[px, k]` for 2 channels x 2 pixels x 8
  reduction values (activations packed `[K/8, P, 8]`, weights `[O, K/8, 8]`). Products and sums are exact in
  int32 like `sdot`'s; the 2x2 tile is two 2-lane rows of the NCHW accumulator (`vectorcombine` in, `vectorlow` /
  `vectorhigh` out).
"""

from typing import Any

import tvm
from tvm.script import tirx as T

from qcompile.backends.tvm.intrin.common import dot_desc, dot_impl, register_scoped, target_features

__all__ = ["S8S8_2x2x8_MMLA", "S8S8_4x4_SDOT", "S8S8_4x4_NEON", "has_dotprod", "has_i8mm", "register_arm_intrinsics"]

S8S8_4x4_SDOT = "qcompile_s8s8_4x4_sdot"
S8S8_4x4_NEON = "qcompile_s8s8_4x4_neon"
S8S8_2x2x8_MMLA = "qcompile_s8s8_2x2x8_smmla"


_registered = False


def register_arm_intrinsics() -> None:
    """Register the qcompile aarch64 intrinsics with TVM once (idempotent); "global" and "_local" scopes."""
    global _registered
    if _registered:
        return
    for name, form in ((S8S8_4x4_SDOT, "fused"), (S8S8_4x4_NEON, "neon")):
        register_scoped(name, lambda scope: dot_desc(4, 4, "int8", "int8", scope),
                        dot_impl(4, 4, "int8", "int8", "llvm.aarch64.neon.sdot.v4i32.v16i8", form))
    register_scoped(S8S8_2x2x8_MMLA, _mmla_desc, _mmla_impl)
    _registered = True


def _mmla_desc(scope: str) -> Any:
    """`C[i, j] += X[j, k] * W[i, k]`: 2 channels (i) x 2 pixels (j) x 8 reduction values (k), int32 in `scope`;
    rows of every operand may be strided (the tile's accumulator rows, the weights of adjacent channels). The
    weights are the `[2, 1, 8]` region of `[O, K/8, 8]` (tensorize matches leading dimensions of extent 1 only)."""

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa, sb, sc = T.int32(), T.int32(), T.int32()
        A = T.match_buffer(a, (2, 8), "int8", strides=[sa, 1], offset_factor=1)
        B = T.match_buffer(b, (2, 1, 8), "int8", strides=[sb, 8, 1], offset_factor=1)
        C = T.match_buffer(c, (2, 2), "int32", strides=[sc, 1], offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:2, 0:2], A[0:2, 0:8], B[0:2, 0, 0:8])
            T.writes(C[0:2, 0:2])
            for i, j, k in T.grid(2, 2, 8):
                with T.sblock("update"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    C[vi, vj] = C[vi, vj] + T.cast(A[vj, vk], "int32") * T.cast(B[vi, 0, vk], "int32")

    return desc


def _mmla_impl(scope: str) -> Any:
    """One `smmla`: the 2x2 accumulator rows combined into one int32x4 (row-major, as `smmla` holds it), the two
    weight rows and the two pixel rows into int8x16 each; the result split back into the two rows."""

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa, sb, sc = T.int32(), T.int32(), T.int32()
        A = T.match_buffer(a, (2, 8), "int8", strides=[sa, 1], offset_factor=1)
        B = T.match_buffer(b, (2, 1, 8), "int8", strides=[sb, 8, 1], offset_factor=1)
        C = T.match_buffer(c, (2, 2), "int32", strides=[sc, 1], offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:2, 0:2], A[0:2, 0:8], B[0:2, 0, 0:8])
            T.writes(C[0:2, 0:2])
            r: T.let[T.int32x4] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smmla.v4i32.v16i8"),
                T.vectorcombine(C.vload([0, 0], "int32x2"), C.vload([1, 0], "int32x2"), dtype="int32x4"),
                T.vectorcombine(B.vload([0, 0, 0], "int8x8"), B.vload([1, 0, 0], "int8x8"), dtype="int8x16"),
                T.vectorcombine(A.vload([0, 0], "int8x8"), A.vload([1, 0], "int8x8"), dtype="int8x16"),
                dtype="int32x4",
            )
            C[0, T.ramp(T.int32(0), 1, 2)] = T.vectorlow(r, dtype="int32x2")
            C[1, T.ramp(T.int32(0), 1, 2)] = T.vectorhigh(r, dtype="int32x2")

    return impl


def has_i8mm(target: tvm.target.Target) -> bool:
    """True when the aarch64 target may execute `smmla` (Armv8.6-A int8 matrix multiply, FEAT_I8MM)."""
    return "i8mm" in target_features(target)


def has_dotprod(target: tvm.target.Target) -> bool:
    """True when the aarch64 target may execute `sdot`/`udot` (Armv8.2-A dotprod)."""
    return "dotprod" in target_features(target)
