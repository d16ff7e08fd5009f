"""TVM backend for arm_cpu: aarch64 libraries, bit-exact under qemu-aarch64, export/load."""

from __future__ import annotations

import numpy as np
import pytest
import tvm_graphs as G
from conftest import make_input

from qcompile.backends.tvm import load, lower_integer_graph
from qcompile.backends.tvm.qemu import qemu_available

pytestmark = [pytest.mark.qemu,
              pytest.mark.skipif(not qemu_available(), reason="needs qemu-aarch64 and aarch64-linux-gnu-g++")]


@pytest.fixture(scope="module")
def arm_mbv2(mbv2_arm):
    return mbv2_arm


def test_arm_library_is_aarch64_elf(arm_mbv2, tmp_path):
    lib = arm_mbv2.export(tmp_path / "arm") / "lib.so"
    head = lib.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and head[4] == 2  # 64-bit ELF
    assert int.from_bytes(head[18:20], "little") == 183  # e_machine EM_AARCH64


def test_arm_bit_exact_under_qemu(arm_mbv2, mbv2_graph):
    for seed in range(2):
        x = make_input(mbv2_graph, seed)
        np.testing.assert_array_equal(arm_mbv2(x), G.reference(mbv2_graph, x))


@pytest.mark.parametrize("build", [G.float_island, lambda: G.mbv2_like(seed=2, bits=2), G.unfused_acc,
                                   G.epilogue_chains, G.se_island])
def test_arm_other_graphs_exact(build):
    ig = build()
    x = make_input(ig, 3, scale=0.5)
    np.testing.assert_array_equal(lower_integer_graph(ig, "arm_cpu")(x), G.reference(ig, x))


def test_arm_export_load_and_benchmark(arm_mbv2, mbv2_graph, tmp_path):
    x = make_input(mbv2_graph, 5)
    again = load(arm_mbv2.export(tmp_path / "arm"))
    assert again.target == "arm_cpu" and not again.spec.native
    np.testing.assert_array_equal(again(x), G.reference(mbv2_graph, x))
    res = again.benchmark(repeat=3)
    assert res.repeat == 3 and res.min_ms > 0 and "qemu" in res.where


def test_arm_dynamic_batch_exact_under_qemu(mbv2_graph):
    """One `batch="dynamic"` aarch64 library (sdot/NEON kernels in the per-image loop), run under qemu at batch 1
    and 3: bit-exact with the reference integer executor."""
    low = lower_integer_graph(mbv2_graph, "arm_cpu", batch="dynamic")
    assert low.dynamic_batch
    for n in (1, 3):
        x = (np.random.default_rng(n).standard_normal((n, 3, 17, 15)) * 3).astype(np.float32)
        y = low(x)
        assert y.shape[0] == n
        np.testing.assert_array_equal(y, G.reference(mbv2_graph, x))
