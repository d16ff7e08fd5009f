"""torchvision's ResNet-18 at 224, 8-bit, through `qc.quantize_model` against the int8 runtimes a user has.

    QCOMPILE_CACHE=/tmp/qc-bench .venv/bin/python -m benchmarks.resnet18 --threads 1,2 --repeats 30 \\
        --out runs/resnet18 --markdown runs/resnet18/table.md

What it runs: torchvision's ResNet-18 definition (`tests/models/torchvision_models.py`, He et al. 2016, Table 1;
1.8 GMAC at 224), random weights (latency only), `qc.quantize_model(model, (8, 8))` with max-abs weight steps,
`qc.calibrate(gm, batches, bn=False)` on random images, `qc.to_integer` and `qc.lower(..., "x86")` with an empty
tuning database (untuned; `--tune` adds a tuned row from the persistent database). The peers run the float
model: onnxruntime fp32 and INT8 (`quantize_static`, QDQ), OpenVINO fp32 and INT8 (the same QDQ model on its CPU
plugin), ExecuTorch XNNPACK fp32 and INT8 (PT2E `XNNPACKQuantizer`). One `qcompile.bench.run_bench` per thread
count: every runtime in its own worker process, interleaved rounds with rotating order so the machine's load hits
every row alike, median and 10th-90th percentile spread, CPU and load in the output.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PEERS = ("ort_fp32", "ort_int8_qdq", "openvino_fp32", "openvino_int8_qdq", "executorch_xnnpack_fp32",
         "executorch_xnnpack_int8")
#: the int8 peers a qcompile row is compared with (the fastest one's median)
INT8_PEERS = ("ort_int8_qdq", "openvino_int8_qdq", "executorch_xnnpack_int8")


def build(resolution: int = 224, seed: int = 0, num_classes: int = 1000):
    """(float ResNet-18, calibrated w8a8 fake-quant GraphModule, its IntegerGraph)."""
    import torch

    import qcompile as qc

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.models.torchvision_models import resnet18

    torch.manual_seed(seed)
    model = resnet18(num_classes=num_classes).eval()
    gen = torch.Generator().manual_seed(seed)
    batches = [torch.randn(2, 3, resolution, resolution, generator=gen) for _ in range(2)]
    gm = qc.quantize_model(model, (8, 8), (batches[0][:1],), weight_init="maxabs")
    qc.calibrate(gm, batches, bn=False)
    return model, gm, qc.to_integer(gm)


def comparison(res, qcompile_rows) -> str:
    """Markdown lines: each qcompile row's median over the fastest int8 peer's median."""
    by = res.by_name()
    peers = [by[n] for n in INT8_PEERS if n in by and by[n].median_ms]
    if not peers:
        return ""
    best = min(peers, key=lambda r: r.median_ms)
    lines = [f"\nFastest int8 peer: {best.name} ({best.median_ms:.2f} ms median).\n",
             "| qcompile row | median ms | p10-p90 | x fastest int8 peer |", "|---|---:|---:|---:|"]
    for n in qcompile_rows:
        r = by[n]
        if r.median_ms:
            lines.append(f"| {n} | {r.median_ms:.2f} | {r.p10_ms:.2f}-{r.p90_ms:.2f} | "
                         f"{r.median_ms / best.median_ms:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts, one harness run each")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--tune", action="store_true", help="also a tuned row (persistent tuning database)")
    ap.add_argument("--trials", type=int, default=None, help="schedules timed per kernel when tuning")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--out", default="runs/resnet18")
    ap.add_argument("--markdown", default=None)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from benchmarks.space_mbv2 import lowerings
    from qcompile.bench import BenchOptions, run_bench
    from qcompile.bench.peers import tvm_spec
    from qcompile.bench.report import to_markdown
    from qcompile.utils.io import atomic_write_text

    model, gm, ig = build(a.resolution)
    x = np.random.default_rng(0).standard_normal((1, 3, a.resolution, a.resolution)).astype(np.float32)
    out = Path(a.out)
    md = [f"# torchvision ResNet-18, w8a8, {a.resolution}x{a.resolution}, batch 1\n",
          "Command: `" + " ".join(["python -m benchmarks.resnet18", *(argv or sys.argv[1:])]) + "`\n",
          "The peers run the float ResNet-18 (their int8 rows quantize it with their own tools); the qcompile "
          "rows run its `quantize_model` integer program (max code diff: vs the reference executor). Random "
          "weights: latency only, no accuracy columns.\n"]
    for threads in (int(t) for t in a.threads.split(",")):
        lows, info = lowerings(ig, threads, tune=a.tune, trials=a.trials)
        specs = {name: tvm_spec(low, name) for name, low in lows.items()}
        opts = BenchOptions(threads=threads, repeats=a.repeats, peers=tuple(p for p in a.peers.split(",") if p))
        res = run_bench(model, x, integer_graph=ig, runners=specs, graph_runners=list(specs), options=opts,
                        out_dir=out / f"t{threads}",
                        title=f"torchvision ResNet-18 w8a8 {a.resolution}px, batch 1, {threads} threads",
                        extra_meta={"lowering": info})
        md += [f"## {threads} thread{'s' if threads > 1 else ''}\n", to_markdown(res), comparison(res, specs)]
        (out / f"t{threads}" / "lowering.json").write_text(json.dumps(info, indent=1))
    text = "\n".join(md)
    if a.markdown:
        atomic_write_text(a.markdown, text)
    log.info("\n%s", text)


if __name__ == "__main__":
    main()
