"""MobileNetV2 224's pointwise GEMMs with an earlier session's untuned knobs against today's, at the threads you give.

    TVM_NUM_THREADS=2 OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.gemm_defaults [--rounds 40]
        [--variants s13 new] [--shift 36]

`--variants` picks two of: "s12", `gemm.default_knobs(mode, K, P)` as session 12 left it (6 x 32 where today's
takes 2 x 64 with `GemmKnobs.store64`; no `pack_tiles`); "new", today's `default_knobs(mode, K, P, O)` (issue 20,
docs/peers.md sessions 13 and 14); "s13", today's without `GemmKnobs.vshift` (session 14's per-lane requantize
shift). Both built for this host (`host_x86_target`), every channel's shift `--shift`, multiplier 2^30 (as
`lowered.kernel_timing_args`), outputs compared equal, timed with `time_evaluator` (single calls) in interleaved
rounds, rotating order, as `benchmarks.pack_axis` does: minima over the rounds during which other processes used at
most `--max-others` cores (/proc/stat), or over all rounds when none was that quiet (then it says so). Prints the
layers whose knobs differ and the sum over all 19 GEMMs x calls per inference.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np

from benchmarks.pack_axis import MBV2_GEMMS

VARIANTS = ("s12", "s13", "new")


def knobs(variant: str, k: int, p: int, o: int) -> Any:
    """`variant`'s untuned "vnni512" knobs for the `k x p -> o` GEMM."""
    import dataclasses

    from qcompile.backends.tvm.schedules.x86.gemm import GemmKnobs, default_knobs

    if variant == "new":
        return default_knobs("vnni512", k, p, o)
    if variant == "s13":
        return dataclasses.replace(default_knobs("vnni512", k, p, o), vshift=False)
    kn = default_knobs("vnni512", k, p)
    return GemmKnobs(6, 32) if kn.store64 else kn


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--per-round", type=int, default=20)
    ap.add_argument("--max-others", type=float, default=0.2)
    ap.add_argument("--variants", nargs=2, choices=VARIANTS, default=["s12", "new"], help="the two knob sets")
    ap.add_argument("--shift", type=int, default=40, help="every channel's shift (>= 32: the int32 tail)")
    args = ap.parse_args(argv)
    import tvm

    from qcompile.backends.tvm.schedules.conv import GemmConv
    from qcompile.backends.tvm.schedules.x86.gemm import pointwise_conv_x86
    from qcompile.backends.tvm.targets import host_x86_target
    from qcompile.bench.harness import _cpu_snapshot, _other_load

    threads = int(os.environ.get("TVM_NUM_THREADS", 2))
    target = tvm.target.Target(host_x86_target(threads))
    rng = np.random.default_rng(0)
    variants = tuple(args.variants)
    old, new = variants
    evs = {}
    for shape in MBV2_GEMMS:
        k, p, o, _ = shape
        arrays, outs = None, []
        for v in variants:
            func = pointwise_conv_x86(GemmConv(k, p, o, shift_min=args.shift), "vnni512", knobs(v, k, p, o))
            mod = tvm.compile(func, target=target)
            mod = mod.mod if hasattr(mod, "mod") else mod
            if arrays is None:  # the same inputs for both; every shift `--shift` (as shift_min says)
                arrays = [rng.integers(0, 8, [int(s) for s in b.shape]).astype(str(b.dtype)) for b in func.params]
                arrays[3][:] = 1 << 30  # `lowered.kernel_timing_args`' multiplier
                arrays[4][:] = args.shift
            buf = [tvm.runtime.tensor(a) for a in arrays]
            mod["main"](*buf)
            outs.append(buf[-1].numpy())
            evs[(shape, v)] = (mod.time_evaluator("main", tvm.cpu(), number=1, repeat=args.per_round), buf)
        if not np.array_equal(outs[0], outs[1]):
            raise RuntimeError(f"{shape[:3]}: the two kernels disagree")
    keys = list(evs)
    rounds = []
    for r in range(args.rounds):
        before = _cpu_snapshot()
        mins = {}
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            ev, buf = evs[key]
            mins[key] = min(ev(*buf).results) * 1e6
        rounds.append((_other_load(before, _cpu_snapshot()).get("other_load_cores", 0.0), mins))
    quiet = [m for o, m in rounds if o <= args.max_others]
    use = quiet or [m for _, m in rounds]
    print(f"TVM_NUM_THREADS={threads}: {len(quiet)} of {len(rounds)} rounds with others <= {args.max_others} cores"
          f"{'' if quiet else ' (none: minima over all rounds, loaded)'}; load {os.getloadavg()[0]:.2f}")
    tot = dict.fromkeys(variants, 0.0)
    for shape in MBV2_GEMMS:
        k, p, o, calls = shape
        t = {v: min(m[(shape, v)] for m in use) for v in variants}
        for v in variants:
            tot[v] += calls * t[v]
        if knobs(old, k, p, o) != knobs(new, k, p, o):
            print(f"{k} x {p} -> {o} (x{calls}): {old} {t[old]:.1f} us, {new} {t[new]:.1f} us "
                  f"({t[new] / t[old]:.3f}), {knobs(new, k, p, o)}")
    print(f"all {len(MBV2_GEMMS)} GEMMs x calls: {old} {tot[old]:.0f} us, {new} {tot[new]:.0f} us "
          f"({tot[new] / tot[old]:.3f})")


if __name__ == "__main__":
    main()
