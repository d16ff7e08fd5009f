"""Whole-network suite: MobileNetV2 1.0, 224, 8-bit, batch 1, 2 threads, side by side in one run.

    .venv/bin/python -m pytest benchmarks/test_bench_network.py --benchmark-enable -p no:xdist \\
        --benchmark-json=benchmarks/network.json

qcompile rows use the tuning database in `$QCOMPILE_CACHE` as it is (run `python -m benchmarks.tune_mbv2`
first for the tuned numbers); `benchmarks.report` measures untuned and tuned in one go.
"""

from __future__ import annotations

import pytest

tvm = pytest.importorskip("tvm")


@pytest.fixture(scope="module")
def qc_vm_factory():
    from tvm import relax

    from benchmarks.mbv2 import build_relax_mbv2

    def make(target):
        ex = tvm.compile(build_relax_mbv2(target), target=target)
        return relax.VirtualMachine(ex, tvm.cpu())

    return make


@pytest.mark.parametrize("runtime", ["qcompile-avx2", "qcompile-host", "onnxruntime", "torch.ao"])
def test_mobilenet_v2(benchmark, runtime, qc_vm_factory, mbv2_input, avx2_target, host_target):
    x_u8, x_f32 = mbv2_input
    benchmark.group = "mobilenet_v2-224-int8"
    if runtime.startswith("qcompile"):
        vm = qc_vm_factory(avx2_target if runtime == "qcompile-avx2" else host_target)
        xt = tvm.runtime.tensor(x_u8)
        f = vm["main"]

        def fn():
            return f(xt)

        out_shape = tuple(fn().shape)
    elif runtime == "onnxruntime":
        from benchmarks.mbv2 import float_twin, ort_int8

        run = ort_int8(float_twin(), x_f32.shape, threads=2)

        def fn():
            return run(x_f32)

        out_shape = fn().shape
    else:
        import torch

        from benchmarks.mbv2 import float_twin, torch_ao_int8

        torch.set_num_threads(2)
        run = torch_ao_int8(float_twin(), x_f32.shape)

        def fn():
            return run(x_f32)

        out_shape = tuple(fn().shape)
    assert tuple(out_shape) == (1, 1000)
    benchmark.pedantic(fn, rounds=30, iterations=1, warmup_rounds=3)
