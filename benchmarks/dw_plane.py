"""The sliding tap-quad depthwise kernel with its padded plane whole or per channel, at 1 and 2 threads.

`TVM_NUM_THREADS=2 OMP_NUM_THREADS=1 python -m benchmarks.dw_plane [--rounds 7 --number 30] [--net mbv2|mbv3|both]`:
every depthwise layer shape of MobileNetV2 224 (and MobileNetV3's 5x5 / 7x7 shapes) is built with this target's
default `DwKnobs` (the sliding quads, `plane="whole"`: one `(C, Hp, Wpad)` plane filled in its own parallel loop,
then the compute loop) and the same knobs with `plane="channel"` (each channel group's planes padded inside the
compute loop: one parallel region); the two outputs are compared equal, and each kernel's time is the minimum
over `rounds` rounds of `time_min(number)` calls, the kernels and the thread counts (1 and 2, TVM's pool resized with
`threads.pool_threads`) interleaved in every round; only rounds during which other processes used at most
`--max-others` cores count (all of them if none was that quiet; the log says how many). The sums are weighted by how
often MobileNetV2 calls each shape (MobileNetV3's shapes once each).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

import numpy as np

from benchmarks.kernels import qc_layer_kernel, time_min
from benchmarks.mbv2 import ConvLayer, mbv2_depthwise_layers

log = logging.getLogger("benchmarks.dw_plane")

#: MobileNetV3's 7x7 and 5x5 depthwise shapes of docs/peers.md session 13: (C, H, stride, k)
MBV3_SHAPES = [(144, 56, 2, 7), (240, 28, 1, 7), (240, 28, 2, 7), (480, 14, 1, 7), (672, 14, 1, 7), (672, 14, 2, 7),
               (960, 7, 1, 7), (96, 112, 2, 7), (480, 14, 1, 5), (960, 7, 1, 5)]


def _shapes(net: str) -> tuple[dict, dict]:
    calls, shapes = {}, {}
    if net in ("mbv2", "both"):
        c2, s2 = mbv2_depthwise_layers()
        calls |= {(*k, 3): v for k, v in c2.items()}
        shapes |= {(*k, 3): ly for k, ly in s2.items()}
    if net in ("mbv3", "both"):
        for c, h, s, k in MBV3_SHAPES:
            calls[c, h, s, k] = 1
            shapes[c, h, s, k] = ConvLayer(c, h, c, k, s, c)
    return calls, shapes


def main(argv: list[str] | None = None) -> dict:
    import tvm

    from qcompile.backends.tvm.schedules.x86.depthwise import target_dw_knobs
    from qcompile.backends.tvm.targets import host_x86_target
    from qcompile.backends.tvm.threads import pool_threads
    from qcompile.bench.harness import _cpu_snapshot, _other_load

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--number", type=int, default=30)
    ap.add_argument("--net", choices=("mbv2", "mbv3", "both"), default="mbv2")
    ap.add_argument("--max-others", type=float, default=0.2, help="rounds count only if other processes used at "
                    "most this many cores (all rounds if none did)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    target = tvm.target.Target(host_x86_target(2))
    calls, shapes = _shapes(args.net)
    runs, knobs = {}, {}
    for key, ly in shapes.items():
        base = target_dw_knobs(ly.ho, target, ly.k, ly.stride)
        if not base.slide:
            log.info("%s: default %s is not the sliding kernel, skipped", key, base)
            continue
        knobs[key, "whole"] = dataclasses.replace(base, plane="whole")  # whatever QCOMPILE_DW_PLANE says
        knobs[key, "channel"] = dataclasses.replace(base, plane="channel")
        for which in ("whole", "channel"):
            run, _, out = qc_layer_kernel(ly, target, knobs=knobs[key, which], with_out=True)
            run()
            runs[key, which] = (run, out)
        if not np.array_equal(runs[key, "whole"][1](), runs[key, "channel"][1]()):
            raise AssertionError(f"depthwise {key}: outputs differ between the two planes")
    # per round and thread count: each kernel's minimum, and the cores other processes used meanwhile (/proc/stat);
    # a 2-thread kernel whose second core is taken waits for it (milliseconds), so only quiet rounds count
    rounds: dict[int, list] = {1: [], 2: []}
    for r in range(args.rounds):
        for t in (1, 2):
            with pool_threads(t):
                a = _cpu_snapshot()
                names = list(runs)[r % len(runs):] + list(runs)[:r % len(runs)]
                kmin = {k: time_min(runs[k][0], number=args.number, warmup=2) for k in names}
                rounds[t].append((_other_load(a, _cpu_snapshot()).get("other_load_cores", 0.0), kmin))
    best, quiet = {}, {}
    for t in (1, 2):
        ok = [km for others, km in rounds[t] if others <= args.max_others]
        quiet[t] = len(ok)
        for k in runs:
            best[k, t] = min(km[k] for km in (ok or [km for _, km in rounds[t]]))
    log.info("rounds with others <= %.2f cores: %d (1 thread), %d (2 threads) of %d", args.max_others, quiet[1],
             quiet[2], args.rounds)
    total = {(w, t): 0.0 for w in ("whole", "channel") for t in (1, 2)}
    rows = []
    log.info("| C, H, stride, k | calls | knobs | whole 1t | channel 1t | ratio | whole 2t | channel 2t | ratio |")
    for key in shapes:
        if (key, "whole") not in runs:
            continue
        us = {(w, t): best[(key, w), t] * 1e6 for w in ("whole", "channel") for t in (1, 2)}
        for wt in us:
            total[wt] += us[wt] * calls[key]
        kn = knobs[key, "whole"]
        rows.append({"layer": key, "calls": calls[key], "knobs": f"slide{kn.vec}x{kn.rows}",
                     **{f"{w}_{t}t_us": v for (w, t), v in us.items()}})
        log.info("| %d, %d, %d, %d | x%d | %s | %.1f | %.1f | %.2f | %.1f | %.1f | %.2f |", *key, calls[key],
                 rows[-1]["knobs"], us["whole", 1], us["channel", 1], us["channel", 1] / us["whole", 1],
                 us["whole", 2], us["channel", 2], us["channel", 2] / us["whole", 2])
    for t in (1, 2):
        log.info("sum x calls, %d thread(s): whole %.0f us, channel %.0f us (%.3f)", t, total["whole", t],
                 total["channel", t], total["channel", t] / total["whole", t])
    return {"rows": rows, "totals": {f"{w}_{t}t_us": v for (w, t), v in total.items()}, "quiet_rounds": quiet}


if __name__ == "__main__":
    main()
