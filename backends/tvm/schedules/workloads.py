"""What a conv kernel is, as the x86 strategies and the tuning database key it: no TVM scheduling here.

`qcompile.backends.tvm.schedules.x86` (the strategies) and `qcompile.backends.tvm.tuning` (the
database) both read these; keeping them apart from either keeps the two modules independent.
"""

from __future__ import annotations

from typing import Any

import tvm

__all__ = ["SCHEDULE_SPACE", "conv_kind", "depthwise_workload", "gemm_workload", "is_x86"]


def is_x86(target: tvm.target.Target) -> bool:
    """An LLVM target for x86-64 with AVX2 (our intrinsics need it)."""
    from qcompile.backends.tvm.intrin.x86 import has_avx2

    if target.kind.name != "llvm":
        return False
    triple = str(target.attrs.get("mtriple", "") or "")
    if triple and not triple.startswith(("x86_64", "i686", "amd64")):
        return False
    return has_avx2(target)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_kind(params: dict) -> str | None:
    """'pointwise', 'depthwise', 'full' or None (unsupported) for conv params of batch 1."""
    n, c, _h, _w = params["x_shape"]
    o, cg, kh, kw = params["w_shape"]
    groups = int(params.get("groups", 1))
    if n != 1:
        return None
    if groups == 1:
        pointwise = (kh, kw) == (1, 1) and _pair(params.get("stride", 1)) == (1, 1)
        pointwise = pointwise and _pair(params.get("padding", 0)) == (0, 0)
        return "pointwise" if pointwise else "full"
    if groups == c == o and cg == 1:
        return "depthwise"
    return None


#: version of each kernel's schedule space, part of its tuning key: a record timed among older candidates (or
#: before a kernel changed) is not reused, so a newer, faster default is never overridden by a stale record.
#: gemm 2: stack-sized tiles and let-bound intrinsics; conv_dw 2: tap quads and rows per step.
SCHEDULE_SPACE = {"conv_gemm": 2, "conv_dw": 2}


def gemm_workload(params: dict) -> dict:
    """The tuning key of a GEMM-lowered conv: what its schedule depends on (not the weights)."""
    _, c, h, w = params["x_shape"]
    o, _, kh, kw = params["w_shape"]
    _, _, ho, wo = params["out_shape"]
    return {"op": "conv_gemm", "k": c * kh * kw, "p": ho * wo, "o": o, "im2col": (kh, kw) != (1, 1),
            "space": SCHEDULE_SPACE["conv_gemm"]}


def depthwise_workload(params: dict) -> dict:
    """The tuning key of a depthwise conv (geometry only; the vector width is the knob)."""
    _, c, h, w = (int(v) for v in params["x_shape"])
    _, _, kh, kw = (int(v) for v in params["w_shape"])
    return {"op": "conv_dw", "c": c, "h": h, "w": w, "k": [kh, kw], "stride": list(_pair(params.get("stride", 1))),
            "padding": list(_pair(params.get("padding", 0))), "dilation": list(_pair(params.get("dilation", 1))),
            "space": SCHEDULE_SPACE["conv_dw"]}
