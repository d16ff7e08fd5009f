"""Per-kernel time of a lowered MobileNetV2, aggregated by layer type (issue 20, docs/peers.md "AMD EPYC Zen 4").

`python -m benchmarks.mbv2_profile LOWERED_DIR [--repeat N]` loads an exported `Lowered` (e.g. the peer harness's
`runs/peers/lowered/mobilenet_v2/host_untuned`), times every PrimFunc with `Lowered.benchmark` (minimum of its
calls) and multiplies it by how often the network calls it: kernels of repeated layers are emitted once and
listed in the metadata without a PrimFunc, so they are matched to the emitted one by workload.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)


def network_primfuncs(meta: dict) -> list[str | None]:
    """The PrimFunc each network kernel calls, in the network's order (repeated layers share one PrimFunc and are
    listed in the metadata without one: matched to the emitted one by workload); None where none matches."""
    by_workload = {json.dumps(k["workload"], sort_keys=True): k["primfuncs"][0]
                   for k in meta["kernels"] if k["primfuncs"] and "workload" in k}
    return [k["primfuncs"][0] if k["primfuncs"] else by_workload.get(json.dumps(k.get("workload"), sort_keys=True))
            for k in meta["kernels"]]


def calls_per_primfunc(meta: dict) -> collections.Counter:
    """PrimFunc name -> number of network kernels that call it (repeated layers share one PrimFunc)."""
    return collections.Counter(n for n in network_primfuncs(meta) if n is not None)


def layer_type(name: str) -> str:
    """MobileNetV2 layer type of a qcompile x86 kernel name (`qc_gemm_<mode>_rq_CxHxW_Ox1x1...`, `qc_dw_...`)."""
    m = re.match(r"qc_gemm_\w+?_rq_(\d+)x(\d+)x\d+_(\d+)x(\d)x\d", name)
    if m:
        c, h, o, k = (int(v) for v in m.groups())
        if k > 1:
            return f"full {k}x{k} conv ({h} px in)"
        return f"{'expand' if o > c else 'project'} 1x1 ({h} px)" + (" +add" if name.endswith("_add") else "")
    m = re.match(r"qc_dwv?_rq_\d+x(\d+)x\d+_\d+x(\d)x\d_s(\d)", name)
    if m:
        return f"depthwise {m.group(2)}x{m.group(2)} s{m.group(3)} ({m.group(1)} px in)"
    return "_".join(name.split("_")[:2])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lowered", type=Path)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args(argv)
    from qcompile import api as qc

    low = qc.load(args.lowered)
    res = low.benchmark(repeat=args.repeat)
    calls = calls_per_primfunc(json.loads((args.lowered / "metadata.json").read_text()))
    agg: dict[str, float] = collections.defaultdict(float)
    for r in res.kernels:
        agg[layer_type(r["name"])] += r["min_ms"] * 1e3 * calls.get(r["name"], 1)
    total = sum(agg.values()) or 1.0
    print(f"end to end: median {res.median_ms:.3f} ms, min {res.min_ms:.3f} ms; kernel sum {total:.0f} us")
    for kind, us in sorted(agg.items(), key=lambda kv: -kv[1]):
        print(f"{kind:40} {us:8.1f} us {100 * us / total:5.1f} %")


if __name__ == "__main__":
    main()
