"""`python -m qcompile.bench`: the peer comparison on a MobileNetV2-shaped model (until spaces land)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import numpy as np

from qcompile.bench.harness import PEERS, BenchOptions, run_bench
from qcompile.bench.models import mobilenet_v2, synthetic_integer_graph
from qcompile.bench.report import to_markdown

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the harness, write bench.json / bench.md / bench.png into --out."""
    p = argparse.ArgumentParser(prog="qcompile bench", description=__doc__)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of " + ",".join(PEERS))
    p.add_argument("--out", default="runs/bench")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model = mobilenet_v2(num_classes=a.classes, width=a.width)
    ig = synthetic_integer_graph(model, a.resolution)
    x = np.random.default_rng(0).standard_normal((a.batch, 3, a.resolution, a.resolution)).astype(np.float32)
    opts = BenchOptions(threads=a.threads, repeats=a.repeats, warmup=a.warmup, peers=tuple(a.peers.split(",")))
    res = run_bench(model, x, integer_graph=ig, options=opts, out_dir=a.out,
                    title=f"MobileNetV2-shaped (width {a.width}) {a.resolution}px")
    log.info("wrote %s/bench.{json,md,png}\n%s", a.out, to_markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
