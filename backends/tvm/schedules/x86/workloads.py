"""What an x86 conv kernel is, as the strategies and the tuning database key it: no TVM scheduling here.

`x86.strategy` (which looks tuned knobs up) and `x86.tune` (which stores them) both read these.
"""

from __future__ import annotations

import tvm

from qcompile.backends.tvm.schedules.conv import pair

__all__ = ["SCHEDULE_SPACE", "depthwise_workload", "gemm_workload", "is_x86"]


def is_x86(target: tvm.target.Target) -> bool:
    """An LLVM target for x86-64 with AVX2 (our intrinsics need it)."""
    from qcompile.backends.tvm.intrin.x86 import has_avx2

    if target.kind.name != "llvm":
        return False
    triple = str(target.attrs.get("mtriple", "") or "")
    if triple and not triple.startswith(("x86_64", "i686", "amd64")):
        return False
    return has_avx2(target)


#: version of each kernel's schedule space, part of its tuning key: a record timed among older candidates (or
#: before a kernel changed) is not reused, so a newer, faster default is never overridden by a stale record.
#: gemm 2: stack-sized tiles and let-bound intrinsics; conv_dw 2: tap quads and rows per step; 3 (both): the
#: shape-aware defaults, 8-lane tiles and vertical quads among the candidates, timed at the lowering's thread count;
#: conv_gemm 4 (session 14): the one-region GEMM of `GemmKnobs.chunks` (the default at 2 threads on at most 784 px)
#: and `GemmKnobs.vshift` (the requantize's per-lane shift, the default on 2 x 64 tiles) in the defaults and the grid.
#: conv_dw 4 (session 14): the sliding quads' plane padded per channel group (`DwKnobs.plane`) among the candidates.
#: conv_gemm 5 (session 15): `gemm.SMALL_K_MAX` 24 -> 28, so K = 25-28 GEMMs (the stem's im2col, K = 27) default to
#: 2 x 64 with `store64` and `vshift`.
SCHEDULE_SPACE = {"conv_gemm": 5, "conv_dw": 4}


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
    return {"op": "conv_dw", "c": c, "h": h, "w": w, "k": [kh, kw], "stride": list(pair(params.get("stride", 1))),
            "padding": list(pair(params.get("padding", 0))), "dilation": list(pair(params.get("dilation", 1))),
            "space": SCHEDULE_SPACE["conv_dw"]}
