"""Acceptance figures of the "qdq" flavour: random subnets of a trained run, integer program vs onnxruntime and
OpenVINO on the plain QDQ export, on the whole digits test split.

For each of `--subnets` random mixed-precision ({2,3,4}-bit) configs (plus the largest and smallest at 4 / 2
bits): extract, calibrate (8 batches), `to_integer`, export QDQ, then per runtime the share of test images whose
top-1 equals the integer program's, and the accuracies of the fake-quant subnet, the integer program and each
runtime. Results are appended to `--out` (JSON lines) one subnet at a time; a rerun skips the subnets already
there (resumable).

    qcompile train --space mobilenet_v3 --width-mult 0.25 --resolutions 32 --epochs 1,0,1 \\
        --flavour qdq --out runs/qdq_q0 --threads 1
    python -m benchmarks.qdq_flavour --run runs/qdq_q0 --out runs/qdq_q0/agreement.jsonl --subnets 20
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

log = logging.getLogger(__name__)


def _configs(space, n: int, seed: int) -> list[tuple[str, object]]:
    out = [("largest 4/4", space.largest(bits=4)), ("smallest 2/2", space.smallest(bits=2))]
    return out + [(f"random #{i}", space.sample(seed=seed * 1000 + i, bits=(2, 3, 4))) for i in range(n)]


def evaluate(qnet, name: str, cfg, data, calib_batches: int, threads: int) -> dict:
    import qcompile as qc
    from qcompile.backends.onnx.export import OnnxExportOptions, build_onnx_model
    from qcompile.backends.onnx.openvino_runner import OpenVinoRunner
    from qcompile.backends.onnx.session import OnnxRunner
    from qcompile.quant import flavour_of

    sub = qc.extract(qnet, cfg)
    qc.calibrate(sub, data.train.loader(64, shuffle=True, seed=1, resolution=cfg.resolution),
                 max_batches=calib_batches)
    ig = qc.to_integer(sub)
    x, y = data.test.images, data.test.labels.numpy()
    with torch.no_grad():
        fq = sub(x).argmax(1).numpy()
        ref = ig(x).numpy().argmax(1)
    model = build_onnx_model(ig, OnnxExportOptions(format="qdq", input_shape=(1, *x.shape[1:])))
    ort = OnnxRunner(model, threads=threads)(x.numpy()).argmax(1)
    ov = OpenVinoRunner(model, threads=threads)(x.numpy()).argmax(1)
    return {
        "name": name, "config": cfg.to_dict(), "flavour": flavour_of(sub), "n": int(len(y)),
        "acc_fake_quant": float((fq == y).mean()), "acc_integer": float((ref == y).mean()),
        "acc_onnxruntime": float((ort == y).mean()), "acc_openvino": float((ov == y).mean()),
        "agree_onnxruntime": float((ort == ref).mean()), "agree_openvino": float((ov == ref).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    from qcompile.artifacts import load_run
    from qcompile.data import load_dataset

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, type=Path, help="run directory of `qcompile train`")
    p.add_argument("--out", required=True, type=Path, help="JSON lines, one subnet per line (appended)")
    p.add_argument("--subnets", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calib-batches", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    space, qnet, _ = load_run(args.run)
    done = set()
    if args.out.is_file():
        done = {json.loads(line)["name"] for line in args.out.read_text().splitlines() if line.strip()}
    data = load_dataset("digits", resolution=max(space.resolutions), in_channels=space.in_channels)
    for name, cfg in tqdm(_configs(space, args.subnets, args.seed), desc="subnets"):
        if name in done:
            continue
        row = evaluate(qnet, name, cfg, data, args.calib_batches, args.threads)
        with args.out.open("a") as f:  # one complete line per subnet: a killed run loses at most one
            f.write(json.dumps(row) + "\n")
        log.info("%s: integer %.2f %%, onnxruntime agree %.2f %%, openvino agree %.2f %%", name,
                 100 * row["acc_integer"], 100 * row["agree_onnxruntime"], 100 * row["agree_openvino"])
    rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    rand = [r for r in rows if r["name"].startswith("random")]
    for key in ("agree_onnxruntime", "agree_openvino"):
        v = np.array([r[key] for r in rand])
        log.info("%s over %d random subnets: min %.2f %%, mean %.2f %%", key, len(v), 100 * v.min(), 100 * v.mean())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
