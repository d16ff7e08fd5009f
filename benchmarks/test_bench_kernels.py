"""Per-kernel suite: qcompile's conv+requantize kernels beside onnxruntime INT8 and torch.ao INT8, same shapes.

    .venv/bin/python -m pytest benchmarks/test_bench_kernels.py --benchmark-enable -p no:xdist \\
        --benchmark-json=benchmarks/kernels.json
"""

from __future__ import annotations

import pytest

from benchmarks.mbv2 import ConvLayer

# representative MobileNetV2-224 layers: stem, small-K expand, project, 7x7 expand/head, depthwise s1/s2
LAYERS = {
    "stem-3x3s2": ConvLayer(3, 224, 32, 3, 2, 1),
    "expand-16to96-112": ConvLayer(16, 112, 96, 1, 1, 1),
    "project-144to24-56": ConvLayer(144, 56, 24, 1, 1, 1),
    "expand-160to960-7": ConvLayer(160, 7, 960, 1, 1, 1),
    "head-320to1280-7": ConvLayer(320, 7, 1280, 1, 1, 1),
    "dw-144-56-s1": ConvLayer(144, 56, 144, 3, 1, 144),
    "dw-96-112-s2": ConvLayer(96, 112, 96, 3, 2, 96),
}


def _run(benchmark, fn, ly: ConvLayer):
    benchmark.extra_info["macs"] = ly.macs
    benchmark.pedantic(fn, rounds=50, iterations=1, warmup_rounds=3)
    if benchmark.stats is not None:  # None with --benchmark-disable
        benchmark.extra_info["gops_at_min"] = 2 * ly.macs / benchmark.stats["min"] / 1e9


@pytest.mark.parametrize("layer", sorted(LAYERS))
@pytest.mark.parametrize("runtime", ["qcompile-avx2", "qcompile-host", "onnxruntime", "torch.ao"])
def test_kernel(benchmark, runtime, layer, avx2_target, host_target):
    from benchmarks.kernels import ort_layer, qc_layer_kernel, torch_ao_layer

    ly = LAYERS[layer]
    benchmark.group = layer
    if runtime == "qcompile-avx2":
        fn, mode = qc_layer_kernel(ly, avx2_target)
        benchmark.extra_info["mode"] = mode
    elif runtime == "qcompile-host":
        fn, mode = qc_layer_kernel(ly, host_target)
        benchmark.extra_info["mode"] = mode
    elif runtime == "onnxruntime":
        fn = ort_layer(ly)
    else:
        fn = torch_ao_layer(ly)
    _run(benchmark, fn, ly)
