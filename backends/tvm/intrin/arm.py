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
"""

from __future__ import annotations

import tvm

from qcompile.backends.tvm.intrin.common import dot_desc, dot_impl, register_scoped, target_features

__all__ = ["S8S8_4x4_SDOT", "S8S8_4x4_NEON", "register_arm_intrinsics", "has_dotprod"]

S8S8_4x4_SDOT = "qcompile_s8s8_4x4_sdot"
S8S8_4x4_NEON = "qcompile_s8s8_4x4_neon"


_registered = False


def register_arm_intrinsics() -> None:
    """Register the qcompile aarch64 intrinsics with TVM once (idempotent); "global" and "_local" scopes."""
    global _registered
    if _registered:
        return
    for name, form in ((S8S8_4x4_SDOT, "fused"), (S8S8_4x4_NEON, "neon")):
        register_scoped(name, lambda scope: dot_desc(4, 4, "int8", "int8", scope),
                        dot_impl(4, 4, "int8", "int8", "llvm.aarch64.neon.sdot.v4i32.v16i8", form))
    _registered = True


def has_dotprod(target: tvm.target.Target) -> bool:
    """True when the aarch64 target may execute `sdot`/`udot` (Armv8.2-A dotprod)."""
    return "dotprod" in target_features(target)
