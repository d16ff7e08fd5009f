"""qcompile's own kernel schedules for the TVM backend, one package per target; importing this registers the
strategies.

- `x86` (AVX2, AVX-512, VNNI): `strategy` registers `conv2d_requant` / `conv2d` (tensorized GEMM for pointwise
  and full convs, row or tap-pair depthwise), `linear`, `add`, `rescale`, `mean`; `gemm` and `depthwise` build
  the kernels, `gemm_space` and `depthwise` list their tuning candidates; `tune` times them into the tuning
  database, keyed by `workloads`.
- `arm` (aarch64: `sdot` with +dotprod, NEON otherwise): `strategy` registers `conv2d_requant` / `conv2d`;
  `gemm` (packed GEMM) and `depthwise` (vectorised over channels) build the kernels; `tune` times the GEMM's
  tiles on the device through TVM RPC into the tuning database.
- shared by both: `conv` (conv kind and geometry, the one conv `emit`, what the kernels take: `DwConv` and its
  epilogue for depthwise, `GemmConv` with the packed-GEMM stages, tiling and schedule for GEMM convs, and the
  registration of a strategy's requantize / accumulator pair) and `requant` (the fused requantize epilogue).
  The tensor intrinsics of both targets come from one builder (`intrin.common.dot_impl`).
"""

from __future__ import annotations

from typing import Any

from qcompile.backends.tvm.schedules import arm, x86
from qcompile.backends.tvm.schedules.arm import tune as _arm_tune
from qcompile.backends.tvm.schedules.x86 import tune as _x86_tune
from qcompile.backends.tvm.strategy import OpCall

__all__ = ["arm", "tune_opcall", "x86"]


def tune_opcall(call: OpCall, w: Any = None, *, trials: int | None = None,
                remote: Any = None) -> tuple[Any, float] | None:
    """Tune the kernel an OpCall will get on its target, if that kernel has knobs (`qc.lower(..., tune=True)`).

    x86 kernels are timed on this host; aarch64 GEMMs on the device behind `remote` ("host:port" of a TVM RPC
    server, or an open session; `arm.tune`). Returns `(knobs, seconds)`, or None when the call's kernel has
    nothing to tune (x86 convs and aarch64 GEMM convs have knobs).
    """
    if arm.is_arm(call.target):
        return _arm_tune.tune_opcall(call, w, remote=remote, trials=trials)
    return _x86_tune.tune_opcall(call, w, trials=trials)
