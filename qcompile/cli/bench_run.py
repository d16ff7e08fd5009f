"""`qcompile bench`: one subnet, every peer and every qcompile lowering, each in its own worker process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import fx

from qcompile.passes.float_copy import float_copy


def bench_subnet(sub: fx.GraphModule, *, target: str = "x86", out: Path | None = None, repeat: int = 20,
                 threads: int = 2, batch: int = 1, calibration: list[np.ndarray] | None = None,
                 peers: tuple[str, ...] | None = None, eval_data: str | None = "digits",
                 eval_limit: int | None = None) -> str:
    """Benchmark `sub` (calibrated) against the peers; returns the markdown table (also written to `out`).

    The peers run the float twin (`float_copy`); onnxruntime on our export and the untuned TVM lowering
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
        low = qc.lower(ig, target=target, num_threads=threads, input_shape=x.shape)
        name = f"qcompile_tvm_{low.spec.tvm_target.get('mcpu', 'custom')}_untuned"
        runners, targets = {name: tvm_spec(low, name)}, {name: low.spec.tvm_target}
    result = run_bench(
        float_copy(sub), x, integer_graph=ig, runners=runners, graph_runners=list(runners),
        options=BenchOptions(threads=threads, repeats=repeat, **({"peers": tuple(peers)} if peers else {})),
        calibration=calibration, out_dir=out, fake_quant=sub,
        eval_set=_eval_set(eval_data, in_ch, cfg.resolution, eval_limit),
        title=f"subnet {cfg.stable_hash()} at {cfg.resolution}x{cfg.resolution}, batch {batch}, {threads} threads",
        extra_meta={"tvm_targets": targets},
    )
    from qcompile.bench.report import to_markdown

    return to_markdown(result)


def _eval_set(name: str | None, in_channels: int, resolution: int,
              limit: int | None) -> tuple[np.ndarray, np.ndarray] | None:
    if name is None:
        return None
    from qcompile.data import load_dataset

    test = load_dataset(name, resolution=resolution, in_channels=in_channels).test
    return test.images[:limit].numpy(), test.labels[:limit].numpy()
