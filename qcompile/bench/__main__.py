"""`python -m qcompile.bench`: the peer comparison on the standard MobileNetV2 (Sandler et al. 2018,
Table 2; the network ARCHITECTURE.md's peer figures were measured on), random weights; with `--model`, on the
largest `mobilenet_v3` space subnet at 224 or on the demo-sized subnet (`qcompile.bench.models.SPACE_MODELS`).

Rows: the built-in peers (torch, torch.ao, onnxruntime, ExecuTorch XNNPACK, OpenVINO) on the float network, and
qcompile on the same-shaped 8-bit integer program (`synthetic_integer_graph`): onnxruntime on our ONNX
exports and our own untuned TVM lowerings (`qc.lower(ig, target, num_threads=threads)`), one row per
LLVM mcpu or kernel family (`host` = this CPU as LLVM detects it; `avx2` = this CPU limited to AVX2, the ISA of
ARCHITECTURE.md's machine; code for another CPU is not run here). For a real subnet of a space use
`qcompile bench <subnet.json | checkpoint>`.

`--model mobilenet_v3-largest` / `--model demo`: the largest 8-bit subnet of the MobileNetV3 space (random
weights, calibrated on random images; `models.space_model`): the peers run its float copy (`float_copy`:
quantizers removed), the qcompile rows its own IntegerGraph (`qc.to_integer`), so every row computes the same
network. `--tuned` adds one `qcompile_tvm_<mcpu>_tuned` row per `--tvm` entry, lowered with `tune=True` against
the persistent tuning database (`$QCOMPILE_CACHE/tuning`; warm it first with the same command, or
`qcompile tune`); the untuned rows are lowered with an empty database. `--lowered DIR` keeps every lowering
exported in DIR and reuses it while the program, target and settings match, so a rerun only times.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qcompile.bench.harness import PEERS, BenchOptions, run_bench
from qcompile.bench.models import SPACE_MODELS, harness_program
from qcompile.bench.peers import tvm_runners
from qcompile.bench.report import load_result, peers_doc, to_markdown

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the harness, write bench.json / bench.md / bench.png into --out (and --doc)."""
    p = argparse.ArgumentParser(prog="python -m qcompile.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilenet_v2", choices=("mobilenet_v2", *SPACE_MODELS),
                   help="mobilenet_v2: the standard network (qcompile rows: a same-shaped synthetic integer program);"
                        " mobilenet_v3-largest: the space's largest subnet, 224 px, 1000 classes; demo: that "
                        "architecture at width 0.35, 32 px, 10 classes (the size `make demo` deploys)")
    p.add_argument("--resolution", type=int, default=None, help="default: 224, the demo's 32")
    p.add_argument("--width", type=float, default=None, help="width multiplier (default: 1.0, the demo's 0.35)")
    p.add_argument("--classes", type=int, default=None, help="default: 1000, the demo's 10")
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
    p.add_argument("--host-probe-mb", type=float, default=d.host_probe_mb,
                   help="MiB of the host memory probe's buffer, gathered and streamed at the start of every round "
                        "(0: no probe)")
    p.add_argument("--quiet-pct", type=float, default=d.quiet_pct,
                   help="a round is quiet when its probe's line rate is within this many %% of the run's best")
    p.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of " + ",".join(PEERS))
    p.add_argument("--tvm", default="host,avx2",
                   help="comma-separated untuned qcompile TVM rows: 'host' (this CPU), a kernel family (avx2, avx512, "
                        "avx-vnni, avx512-vnni) or an LLVM mcpu this CPU can execute; '' for none")
    p.add_argument("--tuned", action="store_true",
                   help="also a tuned row per --tvm entry (tune=True against $QCOMPILE_CACHE's tuning database)")
    p.add_argument("--trials", type=int, default=12, help="schedules timed per kernel where --tuned must tune")
    p.add_argument("--lowered", default=None, metavar="DIR",
                   help="export the qcompile lowerings here and reuse them on later runs (settings must match)")
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
    if a.trials < 1:
        p.error(f"--trials {a.trials}: a positive number of schedules per kernel")
    _, _, _, resolution, _ = SPACE_MODELS.get(a.model, ("", 1000, 1.0, 224, 0))
    resolution = a.resolution if a.resolution is not None else resolution
    model, ig, title = harness_program(a.model, classes=a.classes, width=a.width, resolution=resolution)
    title = f"{title}, batch {a.batch}"
    x = np.random.default_rng(0).standard_normal((a.batch, 3, resolution, resolution)).astype(np.float32)
    opts = BenchOptions(threads=a.threads, repeats=a.repeats, warmup=a.warmup, settle_ms=a.settle_ms,
                        lead_in=a.lead_in, lead_in_ms=a.lead_in_ms, host_probe_mb=a.host_probe_mb,
                        quiet_pct=a.quiet_pct, peers=tuple(n for n in a.peers.split(",") if n))
    t0 = time.perf_counter()
    runners, targets = tvm_runners(ig, [m for m in a.tvm.split(",") if m], a.threads, x.shape, tuned=a.tuned,
                                   trials=a.trials, lowered_dir=a.lowered,
                                   batch_modes=[b for b in a.tvm_batch.split(",") if b])
    lower_s = round(time.perf_counter() - t0, 1)
    command = " ".join(["python -m qcompile.bench", *map(shlex.quote, argv if argv is not None else sys.argv[1:])])
    res = run_bench(model, x, integer_graph=ig, runners=runners, graph_runners=list(runners), options=opts,
                    out_dir=a.out, title=title,
                    extra_meta={"command": command, "tvm_targets": targets, "model": a.model,
                                "qcompile_lowering_s": lower_s})
    if a.doc:
        Path(a.doc).write_text(peers_doc(res))
    log.info("wrote %s/bench.{json,md,png}\n%s", a.out, to_markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
