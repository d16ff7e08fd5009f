"""Tuning of the x86 kernels: time the candidate schedules of a GEMM or depthwise conv on this CPU and keep the
fastest in the tuning database (`qcompile.backends.tvm.tuning`), keyed by `workloads`.

Candidates come from `gemm_space.gemm_space` and `depthwise.dw_candidates`, the untuned default first (so a tuned
kernel is never slower than an untuned one) and the other choices of the untuned rules next (`trials=N` times the
first N). They are timed interleaved, minima, at the target's thread count (`threads.target_threads`: the
lowering's `num_threads`), by `tuning.pick_fastest`.

`x86.strategy` looks the stored knobs up (`lookup_knobs`, `lookup_dw_knobs`) when it emits a kernel;
`tune_opcall` tunes the kernel an OpCall will get (`qc.lower(..., tune=True)`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

import numpy as np
import tvm

from qcompile.backends.tvm import tuning
from qcompile.backends.tvm.intrin.x86 import has_avx512, has_vbmi, has_vnni
from qcompile.backends.tvm.schedules.conv import DwConv, GemmConv, conv_kind
from qcompile.backends.tvm.schedules.x86.depthwise import DwKnobs, depthwise_kernel, dw_candidates, dw_weights
from qcompile.backends.tvm.schedules.x86.dw_choice import depthwise_knobs_used
from qcompile.backends.tvm.schedules.x86.gemm import MODES, GemmKnobs, choose_mode, pointwise_conv_x86
from qcompile.backends.tvm.schedules.x86.gemm_space import gemm_space
from qcompile.backends.tvm.schedules.x86.workloads import depthwise_workload, gemm_workload, is_x86
from qcompile.backends.tvm.threads import target_threads
from qcompile.errors import ConfigError

__all__ = ["lookup_knobs", "lookup_dw_knobs", "tune_gemm", "tune_depthwise", "tune_opcall"]


def lookup_knobs(workload: dict, target: tvm.target.Target) -> GemmKnobs | None:
    """Tuned `GemmKnobs` for a workload on a target, or None (then the default schedule is used)."""
    return tuning.lookup(workload, target, GemmKnobs)


def lookup_dw_knobs(workload: dict, target: tvm.target.Target) -> DwKnobs | None:
    """Tuned `DwKnobs` of a depthwise workload (`workloads.depthwise_workload`), or None."""
    return tuning.lookup(workload, target, DwKnobs)


def tune_gemm(
    workload: dict,
    target: tvm.target.Target,
    candidates: Iterable[Any] | None = None,
    *,
    number: int = 20,
    repeat: int = 5,
    seed: int = 0,
    trials: int | None = None,
) -> tuple[Any, float]:
    """Time every candidate tile of a `conv_gemm` workload on this CPU; store and return the best.

    `workload` is `gemm_workload(params) | {"mode": mode}` (`workloads.gemm_workload`). Random codes are used:
    the schedule's speed does not depend on values. `candidates` default to `gemm_space(mode, k, p, o)`, of which
    `trials` keeps the first; they are timed at the target's `num-cores` threads (`tuning.pick_fastest`). Returns
    `(knobs, seconds)`.
    """
    k, p, o, mode = int(workload["k"]), int(workload["p"]), int(workload["o"]), workload["mode"]
    if mode not in MODES:
        raise ConfigError("workload.mode", mode, sorted(MODES))
    _, g, _, wdt = MODES[mode]
    rng = np.random.default_rng(seed)
    dev = tvm.cpu()
    kb = -(-k // g)
    arrays = [
        rng.integers(0, 128, (k, p)).astype(np.uint8),
        rng.integers(-64, 64, (o, kb, g)).astype(wdt),
        rng.integers(-100, 100, o).astype(np.int64) << 30,  # bias term (requant.bias_term)
        np.full(o, 1 << 30, np.int32),
        np.full(o, 40, np.int32),
        np.zeros((o, p), np.uint8),
    ]
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    if candidates is None:  # the untuned default first: tuning never makes a kernel slower
        candidates = gemm_space(mode, k, p, o, threads=target_threads(target))
    candidates = list(candidates)[:trials] if trials else list(candidates)
    libs = [(kn, tvm.compile(pointwise_conv_x86(GemmConv(k, p, o, shift_min=40), mode, kn), target=target))
            for kn in candidates]
    stats: dict = {}
    best = tuning.pick_fastest(libs, args, number, repeat, workload, threads=target_threads(target), stats=stats)
    tuning.database(target).put(workload, asdict(best[0]), best[1] * 1e6, extra=stats)
    return best


def tune_depthwise(workload: dict, target: tvm.target.Target, *, number: int = 20, repeat: int = 5,
                   seed: int = 0, trials: int | None = None) -> tuple[Any, float]:
    """Time the depthwise schedules of `workload` (`workloads.depthwise_workload`): the row kernel, tap pairs
    and (VNNI targets) tap quads and vertical quads at several rows per step (`dw_candidates`, the default first;
    `trials` keeps the first), interleaved at the target's thread count (`tuning.pick_fastest`); store and return
    `(DwKnobs, seconds)`."""
    c, h, w = int(workload["c"]), int(workload["h"]), int(workload["w"])
    (kh, kw), stride = workload["k"], tuple(workload["stride"])
    padding, dilation = tuple(workload["padding"]), tuple(workload["dilation"])
    dw = DwConv(c, h, w, kh, kw, stride, padding, dilation, shift_min=40)
    ho, wo = dw.ho, dw.wo
    rng = np.random.default_rng(seed)
    xs = rng.integers(0, 256, (c, h, w)).astype(np.uint8)
    ws = rng.integers(-100, 100, (c, kh, kw)).astype(np.int8)
    rest = [rng.integers(-100, 100, c).astype(np.int64) << 30, np.full(c, 1 << 30, np.int32), np.full(c, 40, np.int32),
            np.zeros((c, ho, wo), np.uint8)]
    candidates = dw_candidates(wo, has_avx512(target), vnni=has_vnni(target), kw=kw,
                               stride=stride[0] if dilation == (1, 1) else None, ho=ho,
                               vbmi=has_vbmi(target), threads=target_threads(target))[: trials or None]
    libs = [(kn, tvm.compile(depthwise_kernel(dw, kn, target=target), target=target)) for kn in candidates]
    operands: dict[tuple, list] = {}  # the kernels differ in weight packing: one weight operand per layout

    def args_of(kn: DwKnobs) -> list:
        layout = (kn.pairs, kn.taps, kn.vquads, kn.slide)
        if layout not in operands:
            operands[layout] = [tvm.runtime.tensor(a, tvm.cpu())
                                for a in (xs, dw_weights(ws, kh, kw, kn, stride[0]), *rest)]
        return operands[layout]

    stats: dict = {}
    best = tuning.pick_fastest(libs, [], number, repeat, workload, lib_args=[args_of(kn) for kn, _ in libs],
                               threads=target_threads(target), stats=stats)
    tuning.database(target).put(workload, asdict(best[0]), best[1] * 1e6, extra=stats)
    return best


def tune_opcall(call: Any, w: np.ndarray | None = None, x_max: int = 255, *,
                trials: int | None = None) -> tuple[Any, float] | None:
    """Tune the kernel an `OpCall` will get, if it is one of ours with knobs (conv lowered as GEMM).

    For `qc.lower(..., tune=True)`: call it for every OpCall before emitting; records already in the
    database are reused without timing (tune once for all subnets). `w` (the weight constant) decides the
    intrinsic exactly as `emit` will; without it the exact-for-all-codes mode is tuned. Returns
    `(knobs, seconds)` (`GemmKnobs` or `DwKnobs`) or None when the call has nothing to tune (including GEMMs
    that run on AMX tiles or as a GEMV, `gemv.gemv_applies`, and depthwise layers on the channel-vector or
    small-input kernel, `dw_choice.depthwise_knobs_used`).
    """
    if call.op not in ("conv2d_requant", "conv2d") or not is_x86(call.target):
        return None
    kind = conv_kind(call.params)
    if kind == "depthwise":
        if not depthwise_knobs_used(call):
            return None  # the channel-vector or small-input kernel: no knobs, a tuning space of one
        dwl = depthwise_workload(call.params)
        rec = tuning.database(call.target).get(dwl)
        knobs = lookup_dw_knobs(dwl, call.target)
        if knobs is not None:
            return knobs, rec["latency_us"] * 1e-6
        return tune_depthwise(dwl, call.target, trials=trials)
    if kind not in ("pointwise", "full"):
        return None
    from qcompile.backends.tvm.schedules.x86.amx import amx_kernel_applies

    _, c, _, _ = (int(v) for v in call.params["x_shape"])
    o, _, kh, kw = (int(v) for v in call.params["w_shape"])
    _, _, ho, wo = (int(v) for v in call.params["out_shape"])
    from qcompile.backends.tvm.schedules.x86.gemv import gemv_applies

    if gemv_applies(call.target, kind, ho * wo, c * kh * kw):
        return None  # the GEMV kernel has no knobs (its channel block follows from the shape)
    if amx_kernel_applies(call.target, o, c * kh * kw, ho * wo):
        return None  # the AMX kernel has no knobs (its blocking follows from the shape, `amx.amx_plan`)
    if w is None:
        w = np.full(tuple(call.params["w_shape"]), -128, np.int8)
    x_max = max(int(call.params.get("x_max", x_max)), int(call.params.get("pad_value", 0)))
    wl = gemm_workload(call.params) | {"mode": choose_mode(call.target, w, x_max)}
    rec = tuning.database(call.target).get(wl)
    if rec is not None:
        return GemmKnobs(**rec["knobs"]), rec["latency_us"] * 1e-6
    return tune_gemm(wl, call.target, trials=trials)
