"""`qcompile bench`: one subnet, every peer and every qcompile lowering, each in its own worker process."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx

from qcompile.passes.float_copy import float_copy

log = logging.getLogger(__name__)

#: batches of 64 images that recompute the float twin's BatchNorm statistics
FLOAT_TWIN_BATCHES = 16


def float_twin(sub: fx.GraphModule, batches: Iterable[Any] | None, max_batches: int = FLOAT_TWIN_BATCHES,
               ) -> fx.GraphModule:
    """The float network the float peers run: `float_copy(sub)` with its BatchNorm statistics recomputed on
    `batches` (OFA's `set_running_statistics`, OQA Sec. 3.4; `qcompile.train.calibrate` with `quantizers=False`).

    The copy inherits the statistics `sub` was calibrated with under its quantizers; without them those
    statistics no longer fit the activations (the demo's 4/3-bit subnet: 21.4 % top-1 on the digits test split
    as copied, 95.3 % after recomputing over 16 batches, against 95.8 % for the quantized subnet), so float rows
    and int8 peers calibrated on the float network would be compared against a broken model.
    `batches=None` returns the plain copy (with a warning).
    """
    from qcompile.train.calibrate import calibrate

    twin = float_copy(sub)
    if batches is None:
        log.warning("float twin without calibration data: its BatchNorm statistics are the quantized subnet's")
        return twin
    return calibrate(twin, batches, max_batches=max_batches, quantizers=False)


def float_twin_batches(name: str, in_channels: int, resolution: int) -> Iterable[Any]:
    """Training-split batches of dataset `name` for `float_twin` (the loader `qcompile.cli.demo` calibrates with)."""
    from qcompile.data import load_dataset

    return _twin_batches(load_dataset(name, resolution=resolution, in_channels=in_channels), resolution)


def _twin_batches(data: Any, resolution: int) -> Iterable[Any]:
    return data.train.loader(64, shuffle=True, seed=1, resolution=resolution)


def _calibration_images(data: Any, n: int = 32) -> list[np.ndarray]:
    """`n` single training images (1 x C x H x W float32): the int8 peers' post-training calibration inputs."""
    images = data.train.images[:n].numpy().astype(np.float32)
    return [images[i : i + 1] for i in range(len(images))]


def bench_subnet(sub: fx.GraphModule, *, target: str = "x86", out: Path | None = None, repeat: int = 20,
                 threads: int = 2, batch: int = 1, calibration: list[np.ndarray] | None = None,
                 peers: tuple[str, ...] | None = None, eval_data: str | None = "digits",
                 eval_limit: int | None = None) -> str:
    """Benchmark `sub` (calibrated) against the peers; returns the markdown table (also written to `out`).

    The peers run the float twin (`float_twin`: `float_copy` with BN statistics recomputed on `eval_data`'s
    training split, or on `calibration`); the int8 peers calibrate on `calibration` (default: 32 training images of
    `eval_data` at batch 1, else random batches); onnxruntime on our export and the untuned TVM lowering
    (target "x86" = this host's LLVM mcpu, or a target dict) run its IntegerGraph, every row in its own
    worker process (`qcompile.bench.workers`), so every row gets
    fidelity vs torch fp32 and the integer rows also the code difference vs the reference executor.
    peers: subset of `qcompile.bench.PEERS` (default: all). eval_data: dataset whose test split gives each row's
    top-1 accuracy and its top-1 agreement with the fake-quant `sub` (None: no accuracy columns); eval_limit: only
    its first images.
    """
    import qcompile as qc
    from qcompile.bench import BenchOptions, run_bench
    from qcompile.bench.peers import tvm_runners, tvm_spec

    cfg = sub.subnet_config
    in_ch = next(m for m in sub.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
    x = np.random.default_rng(0).standard_normal((batch, in_ch, cfg.resolution, cfg.resolution)).astype(np.float32)
    ig = qc.to_integer(sub)
    runners: dict = {}
    targets: dict = {}
    if target in ("x86", "llvm"):
        runners, targets = tvm_runners(ig, ["host"], threads, x.shape)
    elif isinstance(target, dict):
        low = qc.lower(ig, target=target, num_threads=threads, input_shape=x.shape, batch=int(x.shape[0]))
        name = f"qcompile_tvm_{low.spec.tvm_target.get('mcpu', 'custom')}_untuned"
        runners, targets = {name: tvm_spec(low, name)}, {name: low.spec.tvm_target}
    data = None
    if eval_data is not None:
        from qcompile.data import load_dataset

        data = load_dataset(eval_data, resolution=cfg.resolution, in_channels=in_ch)
        twin = float_twin(sub, _twin_batches(data, cfg.resolution))
        if calibration is None and batch == 1:
            calibration = _calibration_images(data)
    else:
        twin = float_twin(sub, None if calibration is None else [torch.from_numpy(c) for c in calibration])
    result = run_bench(
        twin, x, integer_graph=ig, runners=runners, graph_runners=list(runners),
        options=BenchOptions(threads=threads, repeats=repeat, **({"peers": tuple(peers)} if peers else {})),
        calibration=calibration, out_dir=out, fake_quant=sub,
        eval_set=_eval_set(data, eval_limit),
        title=f"subnet {cfg.stable_hash()} at {cfg.resolution}x{cfg.resolution}, batch {batch}, {threads} threads",
        extra_meta={"tvm_targets": targets},
    )
    from qcompile.bench.report import to_markdown

    return to_markdown(result)


def _eval_set(data: Any, limit: int | None) -> tuple[np.ndarray, np.ndarray] | None:
    if data is None:
        return None
    return data.test.images[:limit].numpy(), data.test.labels[:limit].numpy()
