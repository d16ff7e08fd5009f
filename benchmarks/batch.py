"""Per-image latency of static and dynamic-batch libraries (`lower_integer_graph(..., batch=...)`), batch 1 and 8.

Workloads: the demo-sized subnet (`qcompile.bench.models.space_model("demo")`: largest `mobilenet_v3` at width
0.35, 32 px, every layer 8-bit, random weights) and MobileNetV2 1.0 at 224 px
(`qcompile.bench.models.synthetic_integer_graph`, the network of `python -m qcompile.bench`). Per workload four
untuned x86 libraries: static batch 1, two static batch 8 (`emit8`, `static8`) and one `batch="dynamic"` library,
called at batch 1 and at batch 8. Each figure is the median wall time of `rounds` back-to-back `low(x)` calls (the
public call path: input copy, VM, output), divided by the batch.
`emit8` is the library of `input_shape=(8, ...)` (every kernel emitted for 8 images: the conv strategies take
batch 1 only, so its convs are naive), `static8` the one of `batch=8` (the batch-1 kernels looped 8 times).

Resumable: every finished (workload, library) is written to `--out` (JSON, atomically) and skipped on a rerun.
Run: `OMP_NUM_THREADS=1 nice -n 19 python -m benchmarks.batch --threads 1 --out runs/batch/measure.json`.
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

from qcompile.bench.harness import _cpu_info

log = logging.getLogger(__name__)

#: (name, `batch=` argument, input batch of the lowering, batches called): `emit8` emits every kernel for 8 images
#: (`input_shape`), `static8` loops the batch-1 kernels 8 times (`batch=8`), `dynamic` takes any batch
LIBRARIES = (("static1", None, 1, (1,)), ("emit8", None, 8, (8,)), ("static8", 8, 1, (8,)),
             ("dynamic", "dynamic", 1, (1, 8)))


def _graph(name: str) -> Any:
    import qcompile as qc

    if name == "demo":
        from qcompile.bench.models import space_model

        return qc.to_integer(space_model("demo")), 32
    from qcompile.bench.models import mobilenet_v2, synthetic_integer_graph

    return synthetic_integer_graph(mobilenet_v2(num_classes=1000), 224), 224


def _save(path: Path, res: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, path)


def median_ms(fn: Any, n: int) -> float:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e3)


def cpu_ab(low_static: Any, low_dynamic: Any, rounds: int, batch: int = 8) -> dict[str, float]:
    """CPU ms per image (`time.process_time`: preemption on a loaded machine does not inflate it) and wall ms per
    image, in one process, of: the static batch-1 library called `batch` times, the dynamic library called once
    with `batch` images, and the dynamic library called `batch` times with one image."""
    px = low_static.input_shape[-1]
    xb = np.random.default_rng(0).standard_normal((batch, 3, px, px)).astype(np.float32)
    xs = [xb[i : i + 1].copy() for i in range(batch)]
    runs = {
        f"static1_x{batch}": lambda: [low_static(x) for x in xs],
        f"dynamic_at_{batch}": lambda: low_dynamic(xb),
        f"dynamic_at_1_x{batch}": lambda: [low_dynamic(x) for x in xs],
    }
    out = {}
    for name, fn in runs.items():
        fn()
        t, w = time.process_time(), time.perf_counter()
        for _ in range(rounds):
            fn()
        out[f"{name}_cpu_ms_per_image"] = round((time.process_time() - t) / rounds * 1e3 / batch, 4)
        out[f"{name}_wall_ms_per_image"] = round((time.perf_counter() - w) / rounds * 1e3 / batch, 4)
    return out


def main(argv: list[str] | None = None) -> None:
    from tqdm import tqdm

    from qcompile.backends.tvm import lower_integer_graph

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default="demo,mbv2_224")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--out", default="runs/batch/measure.json")
    p.add_argument("--cpu-ab", action="store_true",
                   help="instead: per workload, static batch-1 vs dynamic library by CPU time in one process")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cpu = _cpu_info("model name") or platform.processor()
    res = json.loads(out.read_text()) if out.exists() else {"cpu": cpu, "threads": a.threads, "rows": {}}
    if a.cpu_ab:
        for w in a.workloads.split(","):
            ig, px = _graph(w)
            libs = [lower_integer_graph(ig, "x86", num_threads=a.threads, input_shape=(1, 3, px, px), batch=b)
                    for b in (None, "dynamic")]
            res.setdefault("cpu_ab", {})[w] = {**cpu_ab(*libs, rounds=a.rounds), "load1": os.getloadavg()[0]}
            _save(out, res)
            log.info("%s: %s", w, res["cpu_ab"][w])
        return
    todo = [(w, lib) for w in a.workloads.split(",") for lib in LIBRARIES if f"{w}/{lib[0]}" not in res["rows"]]
    graphs: dict[str, Any] = {}
    for w, (lib, batch, emit_batch, calls) in tqdm(todo, desc="libraries"):
        if w not in graphs:
            graphs[w] = _graph(w)
        ig, px = graphs[w]
        load0 = os.getloadavg()[0]
        t = time.perf_counter()
        low = lower_integer_graph(ig, "x86", num_threads=a.threads, input_shape=(emit_batch, 3, px, px), batch=batch)
        build_s = time.perf_counter() - t
        row: dict[str, Any] = {"build_s": round(build_s, 1)}
        rng = np.random.default_rng(0)
        for n in calls:
            x = rng.standard_normal((n, 3, px, px)).astype(np.float32)
            for _ in range(3):
                low(x)
            ms = median_ms(lambda x=x, low=low: low(x), max(5, a.rounds // n))
            row[f"batch{n}_call_ms"] = round(ms, 4)
            row[f"batch{n}_per_image_ms"] = round(ms / n, 4)
        row["load1"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        res["rows"][f"{w}/{lib}"] = row
        _save(out, res)
        log.info("%s/%s: %s", w, lib, row)


if __name__ == "__main__":
    main()
