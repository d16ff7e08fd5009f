"""A tiny MobileNetV2-shaped model, its synthetic IntegerGraph and one harness run, shared by the tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qcompile.bench import BenchOptions, mobilenet_v2, run_bench, synthetic_integer_graph

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
def tiny_bench(tiny_model, tiny_input, tiny_graph, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    calls: list[tuple[str, int]] = []
    res = run_bench(tiny_model, tiny_input, integer_graph=tiny_graph,
                    runners={"reference_executor": lambda x: tiny_graph(torch.from_numpy(x)).numpy()},
                    hook=lambda name, r, dt: calls.append((name, r)),
                    options=BenchOptions(threads=1, repeats=4, warmup=1), out_dir=out)
    return res, out, calls
