"""Tuning of the aarch64 GEMM kernel (`gemm.gemm_conv_arm`) on the device itself, through TVM RPC.

A board is the only place where an aarch64 kernel's speed means anything, so every candidate tile is
cross-compiled here, uploaded to the board's RPC server, checked bit-exact there against the reference integer
conv (`qcompile.ops.reference`), and timed there with `time_evaluator` (`tuning.pick_fastest_on`: minima,
finalists re-timed in interleaved rounds). The fastest goes into the tuning database of the target
(`qcompile.backends.tvm.tuning`, one file per target key, so ARM records never mix with x86 ones), keyed by
`gemm_workload`; `arm.strategy` looks it up (`lookup_knobs`) like `x86.strategy` does.

Emulated remotes. A server that says it is emulated (`rpc.remote_emulation`: qcompile's aarch64 server under
qemu, `qemu.QemuRpcServer`) times instruction emulation, not an ARM core: such records are stored with
`"emulated": true` and the emulator's name, logged as such, and rank below any board record: a board timing
always replaces an emulated record, an emulated timing never replaces a board record, and a tuning run against a
board re-tunes workloads whose record is emulated. They still pick the knobs of lowerings (every candidate is
bit-exact, so knobs change speed only), which is what lets the tuned path be tested end to end under qemu;
no latency claim comes from them (docs/latency.md).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import tvm

from qcompile.backends.tvm import tuning
from qcompile.backends.tvm.schedules.arm.gemm import (
    ARM_GROUP,
    ARM_MODES,
    K_MAX,
    ArmGemmKnobs,
    arm_mode,
    fold_code_offset,
    gemm_conv_arm,
    is_arm,
)
from qcompile.backends.tvm.schedules.conv import GemmConv, conv_kind, pack_weights
from qcompile.backends.tvm.schedules.requant import bias_term
from qcompile.errors import ConfigError, LoweringError

log = logging.getLogger(__name__)

__all__ = [
    "REGISTERS",
    "arm_gemm_candidates",
    "gemm_workload",
    "lookup_knobs",
    "registers_used",
    "tune_gemm",
    "tune_opcall",
]

#: NEON/AdvSIMD vector registers of AArch64 (v0..v31, 128 bits each)
REGISTERS = 32
#: live vector registers of one micro-kernel step besides the accumulators and the activation vectors:
#: `sdot` needs the broadcast weights (1); the NEON sequence (`intrin.arm`) also its two `smull` int16x8 products
#: and two `saddlp` int32x4 partial sums (1 + 4); `smmla` the two weight rows combined, and the next ones (2)
OPERAND_REGS = {"sdot": 1, "neon": 5, "i8mm": 2}
#: version of the ARM GEMM schedule space, part of the tuning key (as `x86.workloads.SCHEDULE_SPACE`)
SCHEDULE_SPACE = 1
_TO = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16)
_TP = (4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64)
#: accumulator count tried first (`trials`): about half the registers, like the untuned 4 x 16 tile
_BEST_ACC = 16


def gemm_workload(params: dict, mode: str) -> dict:
    """The tuning key of a conv lowered as the ARM GEMM: what its schedule depends on (shapes and the mode, not
    the weights)."""
    if mode not in ARM_MODES:
        raise ConfigError("mode", mode, sorted(ARM_MODES))
    _, c, _, _ = (int(v) for v in params["x_shape"])
    o, _, kh, kw = (int(v) for v in params["w_shape"])
    _, _, ho, wo = (int(v) for v in params["out_shape"])
    return {"op": "conv_gemm_arm", "k": c * kh * kw, "p": ho * wo, "o": o, "im2col": (kh, kw) != (1, 1),
            "mode": mode, "space": SCHEDULE_SPACE}


def lookup_knobs(workload: dict, target: tvm.target.Target) -> ArmGemmKnobs | None:
    """Tuned `ArmGemmKnobs` of a workload on a target, or None (then `arm.strategy` uses the default tile)."""
    return tuning.lookup(workload, target, ArmGemmKnobs)


def registers_used(knobs: ArmGemmKnobs, mode: str) -> int:
    """Vector registers one step of the `to x tp` tile keeps live: `to * tp/4` int32x4 accumulators (4 lanes of
    one channel, or a 2x2 channel x pixel block with `smmla`), the activation vectors (`tp/4` of 4 pixels x 4
    reduction values, or `tp/2` of 2 x 8 with `smmla`) and the mode's operands (`OPERAND_REGS`)."""
    if mode not in ARM_MODES:
        raise ConfigError("mode", mode, sorted(ARM_MODES))
    # smmla: 2 pixels x 8 reduction values per activation vector, sdot/NEON 4 x 4
    act = knobs.tp // 2 if mode == "i8mm" else knobs.tp // 4
    return knobs.to * knobs.tp // 4 + act + OPERAND_REGS[mode]


def arm_gemm_candidates(o: int, p: int, mode: str) -> list[ArmGemmKnobs]:
    """Tiles worth timing for an `O`-channel, `P`-pixel GEMM in `mode`: `to` dividing O (and even for 'i8mm'),
    `tp` up to P rounded up to 4 (what `conv.gemm_tile` would clamp it to), every live value in the 32 vector registers
    (`registers_used`). The untuned default (`ArmGemmKnobs()`, as the kernel would use it) comes first, then
    the tiles nearest `_BEST_ACC` accumulators, most pixels first."""
    if mode not in ARM_MODES:
        raise ConfigError("mode", mode, sorted(ARM_MODES))
    if o < 1 or p < 1:
        raise ConfigError("o, p", (o, p), "positive channel and pixel counts")
    p4 = -(-p // 4) * 4
    default = ArmGemmKnobs()
    step = 2 if mode == "i8mm" else 1  # smmla fills 2 channels per call
    if o % step:
        raise ConfigError("o", o, f"a multiple of {step} for mode {mode!r}")
    first = ArmGemmKnobs(max(t for t in range(step, default.to + 1, step) if o % t == 0), min(default.tp, p4))
    out = {first}
    for to in _TO:
        for tp in _TP:
            kn = ArmGemmKnobs(to, tp)
            if o % to == 0 and to % step == 0 and tp <= p4 and registers_used(kn, mode) <= REGISTERS:
                out.add(kn)
    rest = sorted(out - {first}, key=lambda kn: (abs(kn.to * kn.tp // 4 - _BEST_ACC), -kn.tp, kn.to))
    return [first, *rest]


@contextlib.contextmanager
def _session(remote: Any) -> Iterator[tuple[Any, str]]:
    """`(session, address)` for `remote`: a "host:port" string (connected here) or an open RPC session."""
    if isinstance(remote, str):
        from qcompile.backends.tvm.rpc import remote_session

        with remote_session(remote) as sess:
            try:
                yield sess, remote
            finally:
                # end the session now: remote tensors and modules (also in a traceback) would keep it open, and a
                # server serving one session at a time (TVM's, ours) would hold the next one until the timeout
                with contextlib.suppress(Exception):
                    sess._sess.get_function("CloseRPCConnection")()
    elif remote is None:
        raise ConfigError("remote", None, "'host:port' of a TVM RPC server on the aarch64 device",
                          "ARM kernels are tuned on the device itself")
    else:
        yield remote, getattr(remote, "qcompile_address", "rpc session")


def _problem(k: int, p: int, o: int, seed: int, group: int = 4) -> tuple[list[np.ndarray], np.ndarray, int]:
    """Random operands of a `K x P -> O` requantizing GEMM (codes 0..255 with both extremes, full-range int8
    weights, shifts that spread the outputs over the code range), the kernel's arguments and the reference
    output from `qcompile.ops.reference`; returns `(arguments, expected, shift_min)`."""
    import torch

    from qcompile.ops import reference as R

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (k, p)).astype(np.uint8)
    x.reshape(-1)[:4] = (0, 255, 255, 0)
    w = rng.integers(-128, 128, (o, k)).astype(np.int8)
    w[0, : min(k, 8)] = -128  # the extreme products (-128 * 255) in the first channel
    mult = rng.integers(1 << 30, (1 << 31) - 1, o).astype(np.int32)
    sigma = np.sqrt(k) * np.sqrt(255.0**2 / 3 * 128.0**2 / 3)  # std of the accumulator of uniform codes
    # 3 sigma onto about 128 codes, and a bias that centres the outputs at 128: few clamp at 0 or 255
    shift = (31 + int(np.floor(np.log2(3 * sigma / 128))) + rng.integers(-1, 2, o)).clip(1, 62).astype(np.int32)
    centre = np.round(128.0 * 2.0 ** shift.astype(np.float64) / mult.astype(np.float64))
    bias = np.clip(centre + rng.integers(-1000, 1000, o), -(2**31), 2**31 - 1).astype(np.int32)
    acc = R.conv2d(torch.from_numpy(x.reshape(1, k, 1, p)), torch.from_numpy(w.reshape(o, k, 1, 1)),
                   torch.from_numpy(bias))
    ref = R.requantize(acc, torch.from_numpy(mult), torch.from_numpy(shift), lo=0, hi=255).numpy().reshape(o, p)
    args = [x, pack_weights(w, group, "int8"), bias_term(fold_code_offset(bias, w), mult, shift), mult, shift]
    return args, ref.astype(np.uint8), int(shift.min())


def _export(lib: Any, path: Path, target: tvm.target.Target) -> None:
    """Write a compiled kernel as a shared library for the target (cross-linked for aarch64)."""
    from qcompile.backends.tvm.targets import CROSS_CXX

    kw = {"cc": CROSS_CXX} if is_arm(target) else {}
    lib.export_library(str(path), **kw)


def tune_gemm(
    workload: dict,
    target: tvm.target.Target,
    remote: Any,
    candidates: Iterable[ArmGemmKnobs] | None = None,
    *,
    number: int = 5,
    repeat: int = 3,
    seed: int = 0,
    trials: int | None = None,
) -> tuple[ArmGemmKnobs, float]:
    """Time the candidate tiles of a `gemm_workload` on the device behind `remote` ("host:port" or an open RPC
    session); store and return the fastest as `(knobs, seconds)`.

    Each candidate is checked bit-exact on the device against `qcompile.ops.reference` before it is timed
    (`LoweringError` naming the tile otherwise: a wrong kernel is never recorded). Like x86 tuning, the GEMM
    is timed as a pointwise GEMM of the workload's `K x P -> O` (the tile knobs do not touch the im2col
    packing). `trials` caps the candidates (the default tile always among them).
    """
    k, p, o, mode = int(workload["k"]), int(workload["p"]), int(workload["o"]), workload["mode"]
    if mode not in ARM_MODES:
        raise ConfigError("workload.mode", mode, sorted(ARM_MODES))
    if trials is not None and int(trials) < 1:
        raise ConfigError("trials", trials, "a positive number of schedules to time, or None for all")
    if k > K_MAX:
        raise ConfigError("workload.k", k, f"at most {K_MAX} (the shifted int32 accumulator of gemm.K_MAX)")
    cands = list(candidates) if candidates is not None else arm_gemm_candidates(o, p, mode)
    cands = cands[: int(trials)] if trials else cands
    if not cands:
        raise ConfigError("candidates", [], "at least one ArmGemmKnobs")
    arrays, ref, shift_min = _problem(k, p, o, seed, ARM_GROUP[mode])
    gc = GemmConv(k, p, o, shift_min=shift_min)
    from qcompile.backends.tvm.rpc import remote_emulation

    with _session(remote) as (sess, where), tempfile.TemporaryDirectory(prefix="qcompile-armtune-") as tmp:
        emulated = remote_emulation(sess)
        dev = sess.cpu()
        args = [tvm.runtime.tensor(a, dev) for a in arrays]
        mods = []
        for i, kn in enumerate(cands):
            lib = tvm.compile(gemm_conv_arm(gc, mode, kn), target=target)
            name = f"qc_armtune_{i}.so"
            _export(lib, Path(tmp) / name, target)
            sess.upload(str(Path(tmp) / name), name)
            mod = sess.load_module(name)
            out = tvm.runtime.tensor(np.full((o, p), 0xA5, np.uint8), dev)  # a kernel that skips a write shows
            mod["main"](*args, out)
            got = out.numpy()
            if not np.array_equal(got, ref):
                bad = int(np.count_nonzero(got != ref))
                raise LoweringError(f"ARM GEMM {workload} tile {kn}",
                                    f"not bit-exact on the remote {where} ({bad} of {ref.size} codes differ from "
                                    "qcompile.ops.reference)", "report the workload and tile")
            mods.append((kn, mod))
        args.append(tvm.runtime.tensor(np.zeros((o, p), np.uint8), dev))
        best, seconds = tuning.pick_fastest_on(dev, mods, args, number, repeat, workload)
    _store(workload, target, best, seconds, where, emulated)
    return best, seconds


def _store(workload: dict, target: tvm.target.Target, knobs: ArmGemmKnobs, seconds: float, where: str,
           emulated: str | None) -> None:
    """Record a remote timing; board records outrank emulated ones (module doc)."""
    db = tuning.database(target)
    old = db.get(workload)
    if emulated:
        log.warning("ARM tile %s of %s timed under %s at %s: emulated, not ARM latency (record tagged emulated)",
                    knobs, workload, emulated, where)
        if old is not None and not old.get("emulated"):
            log.info("keeping the board record of %s; not replaced by an emulated timing", workload)
            return
    extra = {"remote": where, "emulated": bool(emulated), **({"emulation": emulated} if emulated else {})}
    db.put(workload, asdict(knobs), seconds * 1e6, extra=extra,
           replace=not emulated and old is not None and bool(old.get("emulated")))


def tune_opcall(call: Any, w: np.ndarray | None = None, *, remote: Any = None,
                trials: int | None = None) -> tuple[ArmGemmKnobs, float] | None:
    """Tune the ARM GEMM an `OpCall` will get (`qc.lower(..., target="arm_cpu", tune=True, remote=...)`).

    Returns `(knobs, seconds)`, or None when the call has no tuned kernel (not a conv on an aarch64 target,
    depthwise, or K above `K_MAX`). A stored record is reused without contacting the remote, except an
    emulated record when `remote` is a board (then the board re-tunes). `w` is accepted for symmetry with
    `x86.tune.tune_opcall`: the ARM mode does not depend on the weights.
    """

    del w
    if call.op not in ("conv2d_requant", "conv2d") or not is_arm(call.target):
        return None
    kind = conv_kind(call.params)
    _, cg, kh, kw = (int(v) for v in call.params["w_shape"])
    if kind not in ("pointwise", "full") or cg * kh * kw > K_MAX:
        return None
    wl = gemm_workload(call.params, arm_mode(call.target, int(call.params["w_shape"][0])))
    rec = tuning.database(call.target).get(wl)
    knobs = lookup_knobs(wl, call.target) if rec is not None else None
    if knobs is not None and not rec.get("emulated"):
        return knobs, rec["latency_us"] * 1e-6  # a board record: nothing to do
    with _session(remote) as (sess, _where):
        if knobs is not None and _is_emulated(sess):
            return knobs, rec["latency_us"] * 1e-6  # emulated record, emulated remote: as good as it gets
        return tune_gemm(wl, call.target, sess, trials=trials)


def _is_emulated(sess: Any) -> bool:
    from qcompile.backends.tvm.rpc import remote_emulation

    return remote_emulation(sess) is not None
