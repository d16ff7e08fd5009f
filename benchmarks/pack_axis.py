"""Which loop should a pointwise GEMM's activation packing be parallel over? MobileNetV2 224's GEMMs three ways.

    TVM_NUM_THREADS=2 OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.pack_axis [--rounds 40]

Issue 20: at 2 threads MobileNetV2's depthwise kernels (one parallel region each, over channels) run 1.96x
faster than at 1 thread, its GEMMs only 1.49-1.89x (project layers with O = 16-32 worst; `benchmarks.mbv2_threads`,
docs/peers.md). A GEMM kernel is two regions (`conv.schedule_gemm_pack` + `schedule_gemm_tiles`): the packing
is parallel over reduction blocks, the tiles over pixel tiles x channel tiles, so each thread reads about half of
its packed activations from the other core's cache. Variants, all the same blocks and arithmetic (bit-exact):

- `blocks`: the packing parallel over reduction blocks (the schedule as it is);
- `pixels`: parallel over pixel tiles of `tp`, the GEMM's outer loop order, so with an even tile count each
  thread packs the pixels it then multiplies;
- `serial`: the packing on the calling thread (one region fewer).

Each is built for this host (`host_x86_target`, `default_knobs("vnni512")`), the variants' outputs compared
equal, and timed with `time_evaluator` (single calls) in interleaved rounds, rotating order; minima over the
rounds during which other processes used at most `--max-others` cores (/proc/stat), or over all rounds when none
was that quiet (then say so: the minima of a loaded 2-thread run mostly measure the other jobs).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np

VARIANTS = ("blocks", "pixels", "serial")

#: MobileNetV2 224's pointwise GEMMs: (K, P, O, calls per inference)
MBV2_GEMMS = ((32, 12544, 16, 1), (16, 12544, 96, 1), (96, 3136, 24, 1), (24, 3136, 144, 2), (144, 3136, 24, 1),
              (144, 784, 32, 1), (32, 784, 192, 3), (192, 784, 32, 2), (192, 196, 64, 1), (64, 196, 384, 4),
              (384, 196, 64, 3), (384, 196, 96, 1), (96, 196, 576, 3), (576, 196, 96, 2), (576, 49, 160, 1),
              (160, 49, 960, 3), (960, 49, 160, 2), (960, 49, 320, 1), (320, 49, 1280, 1))


def _pack_schedule(variant: str, original: Any) -> Any:
    """A replacement for `schedule_gemm_pack` that parallelises the packing over `variant`'s loop."""
    from qcompile.backends.tvm.schedules.parallel import parallel_if_worth

    def schedule(sch: Any, tile: Any, conv: Any, kind: str, pack_tiles: int = 0) -> None:
        if variant == "blocks" or conv is not None:
            original(sch, tile, conv, kind, pack_tiles=pack_tiles)
            return
        b, j, i = sch.get_loops(sch.get_sblock("xpack"))
        if variant == "pixels":
            jo, ji = sch.split(j, [None, tile.tp])
            sch.reorder(jo, b, ji, i)
            parallel_if_worth(sch, jo, tile.o * tile.pp * tile.kb * tile.g, kind)
        sch.unroll(i)

    return schedule


def build(k: int, p: int, o: int, variant: str) -> Any:
    """The VNNI-512 pointwise GEMM `k x p -> o` with `variant`'s packing, built for this host."""
    import tvm

    import qcompile.backends.tvm.schedules.x86.gemm as gemm
    from qcompile.backends.tvm.schedules.conv import GemmConv
    from qcompile.backends.tvm.targets import host_x86_target

    original = gemm.schedule_gemm_pack
    gemm.schedule_gemm_pack = _pack_schedule(variant, original)
    try:
        func = gemm.pointwise_conv_x86(GemmConv(k, p, o), "vnni512", gemm.default_knobs("vnni512"))
    finally:
        gemm.schedule_gemm_pack = original
    lib = tvm.compile(func, target=tvm.target.Target(host_x86_target(int(os.environ.get("TVM_NUM_THREADS", 2)))))
    return func, (lib.mod if hasattr(lib, "mod") else lib)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--per-round", type=int, default=20)
    ap.add_argument("--max-others", type=float, default=0.2)
    args = ap.parse_args(argv)
    import tvm

    from qcompile.bench.harness import _cpu_snapshot, _other_load

    rng = np.random.default_rng(0)
    evs = {}
    for shape in MBV2_GEMMS:
        arrays = None
        outs = []
        for v in VARIANTS:
            func, mod = build(*shape[:3], v)
            if arrays is None:  # the same inputs for every variant; the last parameter is the output
                arrays = [rng.integers(0, 8, [int(s) for s in b.shape]).astype(str(b.dtype)) for b in func.params]
            buf = [tvm.runtime.tensor(a) for a in arrays]
            mod["main"](*buf)
            outs.append(buf[-1].numpy())
            evs[(shape, v)] = (mod.time_evaluator("main", tvm.cpu(), number=1, repeat=args.per_round), buf)
        if any(not np.array_equal(outs[0], o) for o in outs[1:]):
            raise RuntimeError(f"{shape[:3]}: the packing variants disagree")
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
    best = {key: min(m[key] for m in use) for key in keys}
    print(f"TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS')}: {len(quiet)} of {len(rounds)} rounds with others <= "
          f"{args.max_others} cores{'' if quiet else ' (none: minima over all rounds, loaded)'}")
    print("| K x P -> O | calls | " + " | ".join(f"{v} us" for v in VARIANTS)
          + " | pixels / blocks | serial / blocks |")
    print("|---|---:|" + "---:|" * (len(VARIANTS) + 2))
    tot = dict.fromkeys(VARIANTS, 0.0)
    for shape in MBV2_GEMMS:
        t = {v: best[(shape, v)] for v in VARIANTS}
        for v in VARIANTS:
            tot[v] += shape[3] * t[v]
        print(f"| {shape[0]} x {shape[1]} -> {shape[2]} | {shape[3]} | " + " | ".join(f"{t[v]:.1f}" for v in VARIANTS)
              + f" | {t['pixels'] / t['blocks']:.3f} | {t['serial'] / t['blocks']:.3f} |")
    print("| **x calls** | | " + " | ".join(f"{tot[v]:.0f}" for v in VARIANTS)
          + f" | {tot['pixels'] / tot['blocks']:.3f} | {tot['serial'] / tot['blocks']:.3f} |")


if __name__ == "__main__":
    main()
