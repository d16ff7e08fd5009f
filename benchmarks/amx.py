"""AMX-INT8 against AVX512-VNNI GEMM conv kernels in one process: MobileNetV2's 1x1 convs at 224 one by one, and
whole networks (the largest `mobilenet_v2` space subnet and MobileNetV2 1.0, both 8-bit at 224, batch 1).

    QCOMPILE_CACHE=$(mktemp -d) TVM_NUM_THREADS=1 OMP_NUM_THREADS=1 nice -n 19 \\
        .venv/bin/python -m benchmarks.amx --threads 1 --out runs/amx/bench_t1.json

(`--threads 2` with `TVM_NUM_THREADS=2` for two threads: TVM sizes its pool once per process.) The VNNI side is
the same lowering with AMX switched off in the target (`-amx-tile`), untuned both (an empty `QCOMPILE_CACHE`);
both libraries' outputs must be identical. Calls of the two alternate in rounds; each figure is the median of
`--repeats` calls. Results are written after each part, and parts already in `--out` are skipped (resumable).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _targets(threads: int) -> dict[str, dict]:
    from qcompile.backends.tvm.targets import host_x86_target

    amx = host_x86_target(threads)
    vnni = dict(amx, mattr=[*amx.get("mattr", []), "-amx-tile"])
    return {"amx": amx, "vnni": vnni}


def _alternate(fns: dict[str, Any], repeats: int, number: int = 1, warmup: int = 3) -> dict[str, float]:
    """Median time (ms) of each `fns[name]()` over `repeats` rounds, names alternating within a round."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for k in names:
        for _ in range(warmup):
            fns[k]()
    for r in range(repeats):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            for _ in range(number):
                fns[k]()
            times[k].append((time.perf_counter() - t0) / number * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def layer_rows(threads: int, repeats: int) -> list[dict]:
    """Every distinct 1x1 conv of MobileNetV2 1.0 at 224: the AMX kernel and the AVX512-VNNI kernel (default tile)."""
    import tvm

    from benchmarks.mbv2 import mbv2_layers
    from qcompile.backends.tvm.intrin.amx import enable_amx
    from qcompile.backends.tvm.schedules.conv import GemmConv, pack_weights
    from qcompile.backends.tvm.schedules.requant import bias_term
    from qcompile.backends.tvm.schedules.x86.amx import amx_plan, conv_amx, pack_amx_weights, use_amx
    from qcompile.backends.tvm.schedules.x86.gemm import default_knobs, pointwise_conv_x86

    enable_amx()
    tg = {k: tvm.target.Target(v) for k, v in _targets(threads).items()}
    rng = np.random.default_rng(0)
    seen, rows = set(), []
    for name, ly, _, _ in mbv2_layers(224):
        if ly.kind != "pointwise" or (ly.c, ly.h, ly.o) in seen:
            continue
        seen.add((ly.c, ly.h, ly.o))
        k, p, o = ly.c, ly.h * ly.h, ly.o
        gc = GemmConv(k, p, o, 0, 255, 38)
        w = rng.integers(-128, 128, (o, k)).astype(np.int8)
        x = rng.integers(0, 256, (k, p)).astype(np.uint8)
        mult, shift = np.full(o, 1 << 28, np.int32), np.full(o, 38, np.int32)
        bterm = bias_term(rng.integers(-1000, 1000, o).astype(np.int32), mult, shift)
        plan = amx_plan(o, k, p, threads)
        built = {
            "amx": (tvm.compile(conv_amx(gc, plan), target=tg["amx"]), pack_amx_weights(w, plan)),
            "vnni": (
                tvm.compile(pointwise_conv_x86(gc, "vnni512", default_knobs("vnni512")), target=tg["vnni"]),
                pack_weights(w, 4, "int8"),
            ),
        }
        fns, outs = {}, {}
        for v, (lib, wp) in built.items():
            args = [tvm.runtime.tensor(a) for a in (x, wp, bterm, mult, shift, np.zeros((o, p), np.uint8))]
            lib(*args)
            outs[v] = args[-1].numpy()
            fns[v] = lambda lib=lib, args=args: lib(*args)
        assert np.array_equal(outs["amx"], outs["vnni"]), f"{name}: AMX and VNNI outputs differ"
        ms = _alternate(fns, repeats, number=10)
        row = {
            "layer": name,
            "o": o,
            "k": k,
            "p": p,
            "macs": o * k * p,
            "amx_us": round(ms["amx"] * 1e3, 1),
            "vnni_us": round(ms["vnni"] * 1e3, 1),
            "speedup": round(ms["vnni"] / ms["amx"], 2),
            "strategy_uses_amx": use_amx(o, k, p),
            "plan": str(plan),
        }
        log.info("%s", row)
        rows.append(row)
    return rows


def network_row(name: str, ig: Any, threads: int, repeats: int) -> dict:
    """One network lowered with and without AMX: medians (ms), kernel counts, identical outputs checked."""
    import qcompile as qc

    lows, lower_s = {}, {}
    for v, tgt in _targets(threads).items():
        t0 = time.perf_counter()
        lows[v] = qc.lower(ig, target=tgt, num_threads=threads)
        lower_s[v] = round(time.perf_counter() - t0, 1)
    shape, dtype = lows["amx"].input_shape, np.dtype(lows["amx"].input_dtype)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 2).astype(dtype) if dtype.kind == "f" else rng.integers(0, 256, shape, dtype)
    outs = {v: np.asarray(low(x)).copy() for v, low in lows.items()}
    assert np.array_equal(outs["amx"], outs["vnni"]), f"{name}: AMX and VNNI outputs differ"
    ms = _alternate({v: (lambda low=low: low(x)) for v, low in lows.items()}, repeats)
    n_amx = sum(1 for kr in lows["amx"].kernels if kr.get("workload", {}).get("mode") == "amx")
    return {
        "network": name,
        "threads": threads,
        "amx_ms": round(ms["amx"], 3),
        "vnni_ms": round(ms["vnni"], 3),
        "speedup": round(ms["vnni"] / ms["amx"], 3),
        "amx_kernels": n_amx,
        "kernels": len(lows["amx"].kernels),
        "lower_s": lower_s,
        "repeats": repeats,
    }


def networks(resolution: int = 224) -> dict[str, Any]:
    from benchmarks.space_mbv2 import build_subnet
    from qcompile.bench.models import mobilenet_v2, synthetic_integer_graph

    return {
        "mbv2_space_largest": lambda: build_subnet(resolution)[1],
        "mobilenet_v2_1.0": lambda: synthetic_integer_graph(mobilenet_v2(), resolution),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--parts", default="layers,mbv2_space_largest,mobilenet_v2_1.0")
    ap.add_argument("--out", default="runs/amx/bench.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    res = json.loads(out.read_text()) if out.exists() else {}
    res.setdefault("cpu", _cpu())
    res["threads"] = args.threads
    res.setdefault("parts", {})
    builders = networks()

    def save() -> None:
        tmp = out.with_suffix(".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(res, indent=1))
        os.replace(tmp, out)

    for part in args.parts.split(","):
        if part in res["parts"]:
            log.info("%s: already measured, skipped", part)
            continue
        load0 = os.getloadavg()[0]
        rows = (
            layer_rows(args.threads, args.repeats)
            if part == "layers"
            else network_row(part, builders[part](), args.threads, args.repeats)
        )
        res["parts"][part] = {"rows": rows, "load": [round(load0, 2), round(os.getloadavg()[0], 2)]}
        save()
        print(json.dumps(res["parts"][part]), flush=True)


if __name__ == "__main__":
    main()
