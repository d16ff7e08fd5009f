"""A tiny MobileNetV2-shaped model, its synthetic IntegerGraph and one harness run, shared by the tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qcompile.bench import BenchOptions, mobilenet_v2, run_bench, synthetic_integer_graph
from qcompile.bench.fidelity import output_scale

RES = 32


@pytest.fixture(scope="session")
def tiny_model():
    return mobilenet_v2(num_classes=10, width=0.25, depth=1, seed=0)


@pytest.fixture(scope="session")
def tiny_input():
    return np.random.default_rng(1).standard_normal((1, 3, RES, RES)).astype(np.float32)


@pytest.fixture(scope="session")
def tiny_graph(tiny_model):
    return synthetic_integer_graph(tiny_model, RES, seed=0)


@pytest.fixture(scope="session")
def tiny_tvm(tiny_graph):
    """The untuned host TVM lowering of the tiny graph, as the CLI builds it: ({name: RunnerSpec}, targets)."""
    from qcompile.bench.peers import tvm_runners

    return tvm_runners(tiny_graph, ["host"], 1)


@pytest.fixture(scope="session")
def noise():
    return np.random.default_rng(7).standard_normal((1, 10)).astype(np.float32)


@pytest.fixture(scope="session")
def tiny_bench(tiny_model, tiny_input, tiny_graph, tiny_tvm, noise, tmp_path_factory):
    """One run with every peer plus runners whose fidelity numbers are known in closed form."""
    out = tmp_path_factory.mktemp("bench")
    calls: list[tuple[str, int]] = []
    scale = output_scale(tiny_graph)

    def reference(x):
        return tiny_graph(torch.from_numpy(x)).numpy()

    def off_by_3(x):  # the reference with channel 2 moved by 3 accumulator codes
        y = reference(x).copy()
        y[:, 2] += 3 * scale[2]
        return y

    def fp32(x):
        with torch.inference_mode():
            return tiny_model(torch.from_numpy(x)).numpy()

    runners = {"reference_executor": reference, "reference_off_by_3": off_by_3,
               "fp32_scaled": lambda x: 1.1 * fp32(x), "fp32_noisy": lambda x: fp32(x) + noise, **tiny_tvm[0]}
    res = run_bench(tiny_model, tiny_input, integer_graph=tiny_graph, runners=runners,
                    graph_runners=["reference_executor", "reference_off_by_3", *tiny_tvm[0]],
                    hook=lambda name, r, dt: calls.append((name, r)),
                    options=BenchOptions(threads=1, repeats=4, warmup=1), out_dir=out,
                    extra_meta={"tvm_targets": tiny_tvm[1]})
    return res, out, calls
