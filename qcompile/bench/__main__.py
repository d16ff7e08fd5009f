"""`python -m qcompile.bench`: the peer comparison on the standard MobileNetV2 (Sandler et al. 2018,
Table 2; the network ARCHITECTURE.md's peer figures were measured on), random weights.

Rows: the built-in peers (torch, torch.ao, onnxruntime, ExecuTorch XNNPACK, OpenVINO) on the float network, and
qcompile on the same-shaped 8-bit integer program (`synthetic_integer_graph`): onnxruntime on our ONNX
exports and our own untuned TVM lowerings (`qc.lower(ig, target, num_threads=threads)`), one row per
LLVM mcpu or kernel family (`host` = this CPU as LLVM detects it; `avx2` = this CPU limited to AVX2, the ISA of
ARCHITECTURE.md's machine; code for another CPU is not run here). For a real subnet of a space use
`qcompile bench <subnet.json | checkpoint>`.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qcompile.bench.harness import PEERS, BenchOptions, run_bench
from qcompile.bench.models import mobilenet_v2, synthetic_integer_graph
from qcompile.bench.peers import tvm_runners
from qcompile.bench.report import load_result, peers_doc, to_markdown

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the harness, write bench.json / bench.md / bench.png into --out (and --doc)."""
    p = argparse.ArgumentParser(prog="python -m qcompile.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    d = BenchOptions()
    p.add_argument("--settle-ms", type=float, default=d.settle_ms,
                   help="max wait for the previous runtime's spinning threads before each timed call (0: none)")
    p.add_argument("--lead-in", type=int, default=d.lead_in, help="untimed calls right before each timed call")
    p.add_argument("--lead-in-ms", type=float, default=d.lead_in_ms,
                   help="and untimed calls go on until this many ms have passed (0: exactly --lead-in calls)")
    p.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of " + ",".join(PEERS))
    p.add_argument("--tvm", default="host,avx2",
                   help="comma-separated untuned qcompile TVM rows: 'host' (this CPU), a kernel family (avx2, avx512, "
                        "avx-vnni, avx512-vnni) or an LLVM mcpu this CPU can execute; '' for none")
    p.add_argument("--tvm-batch", default="static",
                   help="comma-separated 'static' (a library for --batch) and/or 'dynamic' (one library for any batch "
                        "size, called with --batch; rows *_dynbatch_*)")
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--doc", default=None, help="also write the docs section (e.g. docs/peers.md)")
    p.add_argument("--from-json", default=None, metavar="BENCH_JSON",
                   help="run nothing: write --doc from a previous run's bench.json")
    a = p.parse_args(argv)
    if a.from_json:
        if not a.doc:
            p.error("--from-json needs --doc")
        Path(a.doc).write_text(peers_doc(load_result(a.from_json)))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("qcompile").setLevel(logging.INFO)  # not the INFO chatter of onnxruntime.quantization
    model = mobilenet_v2(num_classes=a.classes, width=a.width)
    ig = synthetic_integer_graph(model, a.resolution)
    x = np.random.default_rng(0).standard_normal((a.batch, 3, a.resolution, a.resolution)).astype(np.float32)
    opts = BenchOptions(threads=a.threads, repeats=a.repeats, warmup=a.warmup, settle_ms=a.settle_ms,
                        lead_in=a.lead_in, lead_in_ms=a.lead_in_ms, peers=tuple(n for n in a.peers.split(",") if n))
    runners, targets = tvm_runners(ig, [m for m in a.tvm.split(",") if m], a.threads, x.shape,
                                   [b for b in a.tvm_batch.split(",") if b])
    command = " ".join(["python -m qcompile.bench", *map(shlex.quote, argv if argv is not None else sys.argv[1:])])
    title = f"MobileNetV2 (width {a.width}) {a.resolution}x{a.resolution}, batch {a.batch}"
    res = run_bench(model, x, integer_graph=ig, runners=runners, graph_runners=list(runners), options=opts,
                    out_dir=a.out, title=title,
                    extra_meta={"command": command, "tvm_targets": targets})
    if a.doc:
        Path(a.doc).write_text(peers_doc(res))
    log.info("wrote %s/bench.{json,md,png}\n%s", a.out, to_markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
