"""The peer table of the demo-sized subnet: every runtime on the largest 8-bit `mobilenet_v3` at width 0.35, 32 px.

    .venv/bin/python -m benchmarks.demo_peers --threads 2 --repeats 30 --out runs/demo_peers

The subnet (`benchmarks.overhead.demo_subnet`: random weights, calibrated on random images) goes through
`qcompile.cli.bench_run.bench_subnet`, as `qcompile bench SUBNET` does: the peers (torch, onnxruntime, OpenVINO,
ExecuTorch XNNPACK; fp32 and int8) run its float twin, onnxruntime on our ONNX export and the untuned TVM lowering
run its integer program, each in its own worker process, interleaved rounds; top-1 on the digits test split
(random weights: near chance for every row; the column shows the harness's accuracy path, not a model).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default="runs/demo_peers")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from benchmarks.overhead import demo_subnet
    from qcompile.cli.bench_run import bench_subnet

    md = bench_subnet(demo_subnet(), out=Path(a.out), repeat=a.repeats, threads=a.threads)
    log.info("\n%s", md)


if __name__ == "__main__":
    main()
