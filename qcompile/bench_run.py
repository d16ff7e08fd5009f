"""`qcompile bench`: one subnet, every peer and every qcompile lowering, interleaved in one process."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import fx

from qcompile.quant import ActQuantizer


def float_copy(sub: fx.GraphModule) -> fx.GraphModule:
    """The same subnet with every quantizer removed (the float model peers run)."""
    f = copy.deepcopy(sub)
    for node in list(f.graph.nodes):
        if node.op == "call_module" and isinstance(f.get_submodule(node.target), ActQuantizer):
            node.replace_all_uses_with(node.args[0])
            f.graph.erase_node(node)
    for m in f.modules():
        if hasattr(m, "weight_quant"):
            m.weight_quant = None
    f.delete_all_unused_submodules()
    f.recompile()
    return f.eval()


def bench_subnet(sub: fx.GraphModule, *, target: str = "x86", out: Path | None = None, repeat: int = 20,
                 threads: int = 2, batch: int = 1, calibration: list[np.ndarray] | None = None) -> str:
    """Benchmark `sub` (calibrated) against the peers; returns the markdown table (also written to `out`)."""
    import qcompile as qc
    from qcompile.bench import BenchOptions, run_bench

    cfg = sub.subnet_config
    in_ch = next(m for m in sub.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
    x = np.random.default_rng(0).standard_normal((batch, in_ch, cfg.resolution, cfg.resolution)).astype(np.float32)
    ig = qc.to_integer(sub)
    runners = {}
    if target in ("x86", "llvm") or isinstance(target, dict):
        low = qc.lower(ig, target=target, num_threads=threads)
        runners[f"qcompile_tvm_{target if isinstance(target, str) else 'custom'}"] = low
    result = run_bench(
        float_copy(sub), x, integer_graph=ig, runners=runners,
        options=BenchOptions(threads=threads, repeats=repeat), calibration=calibration, out_dir=out,
        title=f"subnet {cfg.stable_hash()} at {cfg.resolution}x{cfg.resolution}, batch {batch}, {threads} threads",
    )
    from qcompile.bench.report import to_markdown

    return to_markdown(result)
