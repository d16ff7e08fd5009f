"""What the x86 and aarch64 tensor intrinsics share: the TIR description of a broadcast dot-product step,
registration in both accumulator scopes, and the target feature query.

Every qcompile intrinsic computes `C[i] += sum_k A[i, k] * B[k]` for `i < lanes` output pixels and `k` adjacent
reduction values (integer_semantics.md `conv2d` as a GEMM): only the instructions differ per target.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tvm
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

__all__ = ["dot_desc", "register_scoped", "target_features"]


def dot_desc(lanes: int, k: int, a_dtype: str, b_dtype: str, scope: str = "global") -> Any:
    """TIR description: C[i] += A[i, k] * B[k] for i < lanes, k < k (int32 accumulate in `scope`)."""

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (lanes, k), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (k,), b_dtype, offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:lanes, 0:k], B[0:k])
            T.writes(C[0:lanes])
            for i, r in T.grid(lanes, k):
                with T.sblock("update"):
                    vi, vr = T.axis.remap("SR", [i, r])
                    C[vi] = C[vi] + T.cast(A[vi, vr], "int32") * T.cast(B[vr], "int32")

    return desc


def register_scoped(name: str, desc: Callable[[str], Any], impl: Callable[[str], Any]) -> None:
    """Register `name` ("global" accumulators, what TVM's matcher expects by default) and `name_local` (the
    tile lives on the stack, promoted to registers by LLVM), unless already registered."""
    for scope in ("global", "local"):
        full = name if scope == "global" else f"{name}_{scope}"
        if TensorIntrin.get(full, allow_missing=True) is None:
            TensorIntrin.register(full, desc(scope), impl(scope))


def target_features(target: tvm.target.Target) -> set[str]:
    """CPU features the target enables (its mcpu's features plus mattr), as LLVM itself reports them."""
    from tvm.target import codegen

    try:
        return {str(f) for f in codegen.llvm_get_cpu_features(target)}
    except Exception:  # noqa: BLE001 - a target LLVM cannot resolve: trust only explicit +mattr
        return {str(a).lstrip("+") for a in (target.attrs.get("mattr") or []) if str(a).startswith("+")}
