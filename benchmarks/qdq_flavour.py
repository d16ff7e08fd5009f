"""Acceptance figures of the "qdq" flavour: random subnets of a trained run, integer program vs onnxruntime and
OpenVINO on the plain QDQ export, on the whole digits test split.

For each of `--subnets` random mixed-precision ({2,3,4}-bit) configs (plus the largest and smallest at 4 / 2
bits): extract, calibrate (8 batches), `to_integer`, export QDQ, then per runtime the share of test images whose
top-1 equals the integer program's, and the accuracies of the fake-quant subnet, the integer program and each
runtime. Results are appended to `--out` (JSON lines) one subnet at a time; a rerun skips the subnets already
there (resumable). `--accuracy-only` measures the fake-quant accuracy alone (in both flavours it is the integer
program's: fixed-point exactly, qdq through the `bias_grid` hooks), for the per-seed accuracy table;
`--summary A.jsonl ...` prints the docs table (largest, smallest, median of the random subnets) of finished files.

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


def evaluate(qnet, name: str, cfg, data, calib_batches: int, threads: int, accuracy_only: bool = False) -> dict:
    import qcompile as qc
    from qcompile.backends.onnx.export import OnnxExportOptions, build_onnx_model
    from qcompile.backends.onnx.openvino_runner import OpenVinoRunner
    from qcompile.backends.onnx.session import OnnxRunner
    from qcompile.data.base import resize
    from qcompile.quant import flavour_of

    sub = qc.extract(qnet, cfg)
    qc.calibrate(sub, data.train.loader(64, shuffle=True, seed=1, resolution=cfg.resolution),
                 max_batches=calib_batches)
    # The test split at the config's resolution, as `evaluate_subnets` (and the trainer's report) evaluates it:
    # a subnet calibrated at 24 px but fed the 32 px source images is another, much less accurate, model.
    x, y = resize(data.test.images, cfg.resolution), data.test.labels.numpy()
    with torch.no_grad():
        fq = sub(x).argmax(1).numpy()
    row = {"name": name, "config": cfg.to_dict(), "flavour": flavour_of(sub), "n": int(len(y)),
           "resolution": int(x.shape[-1]),
           "acc_fake_quant": float((fq == y).mean())}
    if accuracy_only:
        return row
    ig = qc.to_integer(sub)
    with torch.no_grad():
        ref = ig(x).numpy().argmax(1)
    model = build_onnx_model(ig, OnnxExportOptions(format="qdq", input_shape=(1, *x.shape[1:])))
    ort = OnnxRunner(model, threads=threads)(x.numpy()).argmax(1)
    ov = OpenVinoRunner(model, threads=threads)(x.numpy()).argmax(1)
    return row | {
        "agree_fake_quant": float((fq == ref).mean()), "acc_integer": float((ref == y).mean()),
        "acc_onnxruntime": float((ort == y).mean()), "acc_openvino": float((ov == y).mean()),
        "agree_onnxruntime": float((ort == ref).mean()), "agree_openvino": float((ov == ref).mean()),
    }


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize(paths: list[Path]) -> str:
    """Markdown rows: per file, flavour, fake-quant accuracy of the largest / smallest / median of the random
    subnets, and where the runtimes were measured the lowest agreement of onnxruntime and OpenVINO."""
    lines = ["| file | flavour | largest % | smallest % | median of random % (n) | min ORT agree % | "
             "min OV agree % |", "|---|---|---|---|---|---|---|"]
    for path in paths:
        rows = _rows(path)
        by = {r["name"]: r for r in rows}
        rand = [r["acc_fake_quant"] for r in rows if r["name"].startswith("random")]

        def pct(v):
            return "-" if v is None else f"{100 * v:.2f}"

        agree = [[r[k] for r in rows if k in r] for k in ("agree_onnxruntime", "agree_openvino")]
        lines.append(f"| {path} | {rows[0]['flavour']} | {pct(by.get('largest 4/4', {}).get('acc_fake_quant'))} | "
                     f"{pct(by.get('smallest 2/2', {}).get('acc_fake_quant'))} | "
                     f"{pct(float(np.median(rand)) if rand else None)} ({len(rand)}) | "
                     f"{pct(min(agree[0]) if agree[0] else None)} | {pct(min(agree[1]) if agree[1] else None)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from qcompile.artifacts import load_run
    from qcompile.data import load_dataset

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="run directory of `qcompile train`")
    p.add_argument("--out", type=Path, help="JSON lines, one subnet per line (appended)")
    p.add_argument("--accuracy-only", action="store_true", help="fake-quant accuracy only (no export, no runtimes)")
    p.add_argument("--summary", type=Path, nargs="+", help="print the docs table of these JSON lines files and exit")
    p.add_argument("--subnets", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calib-batches", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.summary:
        print(summarize(args.summary))
        return 0
    if args.run is None or args.out is None:
        p.error("--run and --out are required unless --summary is given")
    space, qnet, _ = load_run(args.run)
    done = set()
    if args.out.is_file():
        done = {json.loads(line)["name"] for line in args.out.read_text().splitlines() if line.strip()}
    data = load_dataset("digits", resolution=max(space.resolutions), in_channels=space.in_channels)
    for name, cfg in tqdm(_configs(space, args.subnets, args.seed), desc="subnets"):
        if name in done:
            continue
        row = evaluate(qnet, name, cfg, data, args.calib_batches, args.threads, args.accuracy_only)
        with args.out.open("a") as f:  # one complete line per subnet: a killed run loses at most one
            f.write(json.dumps(row) + "\n")
        if args.accuracy_only:
            log.info("%s: fake-quant %.2f %%", name, 100 * row["acc_fake_quant"])
            continue
        log.info("%s: integer %.2f %%, onnxruntime agree %.2f %%, openvino agree %.2f %%", name,
                 100 * row["acc_integer"], 100 * row["agree_onnxruntime"], 100 * row["agree_openvino"])
    rows = _rows(args.out)
    rand = [r for r in rows if r["name"].startswith("random") and "agree_openvino" in r]
    for key in ("agree_onnxruntime", "agree_openvino"):
        if not rand:
            break
        v = np.array([r[key] for r in rand])
        log.info("%s over %d random subnets: min %.2f %%, mean %.2f %%", key, len(v), 100 * v.min(), 100 * v.mean())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
