"""What the x86 and aarch64 tensor intrinsics share: the TIR description and the implementation of a broadcast
dot-product step, registration in both accumulator scopes, and the target feature query.

Every qcompile intrinsic computes `C[i] += sum_k A[i, k] * B[k]` for `i < lanes` output pixels and `k` adjacent
reduction values (integer_semantics.md `conv2d` as a GEMM), or with the roles of A and B swapped (`bcast="a"`:
`C[i] += sum_k A[k] * B[i, k]`, a GEMV step): only the instruction sequence differs per target.
"""

# no `from __future__ import annotations`: the TVMScript `T.let[...]` annotations of `dot_impl` name closure
# variables, which Python captures only while annotations are evaluated eagerly
from collections.abc import Callable
from typing import Any

import tvm
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

__all__ = ["DOT_FORMS", "dot_desc", "dot_impl", "register_scoped", "target_features"]


def _shapes(lanes: int, k: int, bcast: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Operand shapes of A and B: the broadcast one is `(k,)`, a vector one `(lanes, k)` (`bcast="none"`: both)."""
    if bcast not in ("a", "b", "none"):
        raise ValueError(bcast)
    return ((k,) if bcast == "a" else (lanes, k)), ((k,) if bcast == "b" else (lanes, k))


def dot_desc(lanes: int, k: int, a_dtype: str, b_dtype: str, scope: str = "global", bcast: str = "b") -> Any:
    """TIR description: `C[i] += A[i, k] * B[k]` for i < lanes, k < k (`bcast="b"`), `C[i] += A[k] * B[i, k]`
    (`bcast="a"`), or `C[i] += A[i, k] * B[i, k]` (`bcast="none"`, lane by lane: a depthwise step with channels
    in the lanes); int32 accumulate in `scope`."""
    a_shape, b_shape = _shapes(lanes, k, bcast)

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, a_shape, a_dtype, offset_factor=1)
        B = T.match_buffer(b, b_shape, b_dtype, offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            if bcast == "b":
                T.reads(C[0:lanes], A[0:lanes, 0:k], B[0:k])
            elif bcast == "a":
                T.reads(C[0:lanes], A[0:k], B[0:lanes, 0:k])
            else:
                T.reads(C[0:lanes], A[0:lanes, 0:k], B[0:lanes, 0:k])
            T.writes(C[0:lanes])
            for i, r in T.grid(lanes, k):
                with T.sblock("update"):
                    vi, vr = T.axis.remap("SR", [i, r])
                    if bcast == "b":
                        C[vi] = C[vi] + T.cast(A[vi, vr], "int32") * T.cast(B[vr], "int32")
                    elif bcast == "a":
                        C[vi] = C[vi] + T.cast(A[vr], "int32") * T.cast(B[vi, vr], "int32")
                    else:
                        C[vi] = C[vi] + T.cast(A[vi, vr], "int32") * T.cast(B[vi, vr], "int32")

    return desc


#: how `dot_impl` uses its instruction: "fused" accumulates inside it (`vpdpbusd`, `vpdpwssd`, `sdot`), "add" adds
#: its int32 result (`pmaddwd`), "pairs" adds its int16 pair sums widened by `pmaddwd` with ones (`pmaddubsw`),
#: "neon" is the Armv8.0 `smull` / `saddlp` / `addp` sequence on both halves (the LLVM name is unused)
DOT_FORMS = ("fused", "add", "pairs", "neon")


def dot_impl(lanes: int, k: int, a_dt: str, b_dt: str, llvm: str, form: str = "fused",
             bcast: str = "b") -> Callable[[str], Any]:
    """Implementation (scope -> PrimFunc) of the `dot_desc` step with one instruction (`DOT_FORMS`): the vector
    operand is loaded whole, the `k` values of the broadcast operand (`bcast`) are read as one int32 and
    broadcast to every lane (the NEON form broadcasts to half the lanes: `smull` multiplies 8 bytes); with
    `bcast="none"` (fused form only) both operands are loaded whole."""
    if form not in DOT_FORMS:
        raise ValueError(form)
    width = lanes * k
    c_vt = f"int32x{lanes}"
    vec_dt, bc_dt = (a_dt, b_dt) if bcast == "b" else (b_dt, a_dt)
    bc_lanes = lanes // 2 if form == "neon" else lanes
    vec_vt, bc_vt = f"{vec_dt}x{width}", f"{bc_dt}x{bc_lanes * k}"
    vec_let, bc_let = getattr(T, vec_vt), getattr(T, bc_vt)
    a_shape, b_shape = _shapes(lanes, k, bcast)
    if bcast == "none" and form != "fused":
        raise ValueError(f"bcast='none' needs the fused form, not {form!r}")

    def make(scope: str) -> Any:
        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, a_shape, a_dt, offset_factor=1)
            B = T.match_buffer(b, b_shape, b_dt, offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope=scope)
            with T.sblock("root"):
                if bcast == "none":  # both operands whole vectors, lane by lane
                    T.reads(C[0:lanes], A[0:lanes, 0:k], B[0:lanes, 0:k])
                    T.writes(C[0:lanes])
                    C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(llvm), C.vload([0], c_vt), A.vload([0, 0], f"{a_dt}x{width}"),
                        B.vload([0, 0], f"{b_dt}x{width}"), dtype=c_vt)
                elif bcast == "a":  # a GEMV step: activations broadcast, the weight rows are the vector operand
                    T.reads(C[0:lanes], A[0:k], B[0:lanes, 0:k])
                    T.writes(C[0:lanes])
                    a_i32: T.let[T.int32] = T.reinterpret(A.vload([0], f"{a_dt}x{k}"), dtype="int32")
                    a_vec: T.let[bc_let] = T.reinterpret(T.broadcast(a_i32, lanes), dtype=bc_vt)
                    C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(llvm), C.vload([0], c_vt), a_vec, B.vload([0, 0], vec_vt),
                        dtype=c_vt)
                else:
                    T.reads(C[0:lanes], A[0:lanes, 0:k], B[0:k])
                    T.writes(C[0:lanes])
                    a_vec: T.let[vec_let] = A.vload([0, 0], vec_vt)
                    b_i32: T.let[T.int32] = T.reinterpret(B.vload([0], f"{b_dt}x{k}"), dtype="int32")
                    b_vec: T.let[bc_let] = T.reinterpret(T.broadcast(b_i32, bc_lanes), dtype=bc_vt)
                    if form == "fused":
                        C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id(llvm), C.vload([0], c_vt), a_vec, b_vec, dtype=c_vt)
                    elif form == "pairs":
                        pairs: T.let[T.int16x16] = T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id(llvm), a_vec, b_vec, dtype="int16x16")
                        C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], c_vt) + T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), pairs, T.int16x16(1), dtype=c_vt)
                    elif form == "add":
                        C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], c_vt) + T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id(llvm), a_vec, b_vec, dtype=c_vt)
                    else:
                        # pixels 0,1 in the low half, 2,3 in the high half; each int16 product is exact
                        lo = T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"),
                            T.vectorlow(a_vec, dtype="int8x8"),
                            b_vec,
                            dtype="int16x8",
                        )
                        hi = T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"),
                            T.vectorhigh(a_vec, dtype="int8x8"),
                            b_vec,
                            dtype="int16x8",
                        )
                        lo32 = T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"), lo, dtype="int32x4"
                        )
                        hi32 = T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"), hi, dtype="int32x4"
                        )
                        C[T.ramp(T.int32(0), 1, 4)] = C.vload([0], "int32x4") + T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.addp.v4i32"), lo32, hi32, dtype="int32x4"
                        )

        return impl

    return make


def register_scoped(name: str, desc: Callable[[str], Any], impl: Callable[[str], Any]) -> None:
    """Register `name` ("global" accumulators, what TVM's matcher expects by default) and `name_local` (the
    tile lives on the stack, promoted to registers by LLVM), unless already registered."""
    for scope in ("global", "local"):
        full = name if scope == "global" else f"{name}_{scope}"
        if TensorIntrin.get(full, allow_missing=True) is None:
            TensorIntrin.register(full, desc(scope), impl(scope))


#: str(target) -> its features: asking LLVM costs ~0.5 ms a call, and strategy selection asks for every kernel
#: (half of a dry `plan_kernels` walk before this cache); a target string names its mcpu and mattr
_FEATURES: dict[str, frozenset[str]] = {}


def target_features(target: tvm.target.Target) -> set[str]:
    """CPU features the target enables (its mcpu's features plus mattr), as LLVM itself reports them."""
    key = str(target)
    hit = _FEATURES.get(key)
    if hit is None:
        hit = _FEATURES[key] = frozenset(_llvm_features(target))
    return set(hit)


def _llvm_features(target: tvm.target.Target) -> set[str]:
    from tvm.target import codegen

    try:
        return {str(f) for f in codegen.llvm_get_cpu_features(target)}
    except Exception:  # noqa: BLE001 - a target LLVM cannot resolve: trust only explicit +mattr
        return {str(a).lstrip("+") for a in (target.attrs.get("mattr") or []) if str(a).startswith("+")}
