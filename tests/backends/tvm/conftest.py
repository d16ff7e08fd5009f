"""Shared artifacts for the TVM backend tests: graphs and x86 builds made once per session."""

from __future__ import annotations

import numpy as np
import pytest
import tvm_graphs as G

from qcompile.backends.tvm import lower_integer_graph


def make_input(ig, seed: int = 0, scale: float = 3.0) -> np.ndarray:
    shape = tuple(ig.program_meta["input_shape"])
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


@pytest.fixture(scope="session")
def mbv2_graph():
    return G.mbv2_like(seed=0, bits=8)


@pytest.fixture(scope="session")
def mbv2_x86(mbv2_graph):
    return lower_integer_graph(mbv2_graph, "x86")
