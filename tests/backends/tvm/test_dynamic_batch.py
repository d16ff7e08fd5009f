"""`lower_integer_graph(..., batch="dynamic")`: one library for any batch size, bit-exact with the reference
integer executor at every batch (the reference runs the whole batch at once, the library its batch-1 kernels once
per image), and identical to the static batch-1 library at batch 1."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import tvm_graphs as G

from qcompile import ops
from qcompile.backends.tvm import load, lower_integer_graph
from qcompile.backends.tvm.targets import family_target
from qcompile.errors import ConfigError, LoweringError
from qcompile.ops import IntegerGraphBuilder
from tests import kernel_isa as isa

BATCHES = (1, 3, 8)


def batch_input(ig, n: int, seed: int = 0, scale: float = 3.0) -> np.ndarray:
    shape = (n, *ig.program_meta["input_shape"][1:])
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def assert_every_batch_exact(low, ig, batches=BATCHES) -> None:
    for n in batches:
        x = batch_input(ig, n, seed=n)
        y, r = low(x), G.reference(ig, x)
        assert y.shape == r.shape and y.shape[0] == n and y.dtype == r.dtype
        np.testing.assert_array_equal(y, r)


def test_dynamic_library_exact_at_every_batch(mbv2_dynamic, mbv2_graph, mbv2_x86):
    """mbv2_like has every integer kernel family: the stem conv and pointwise GEMMs, a depthwise conv with its LUT,
    squeeze-excite (integer mean and gate multiply), a residual add fused into a GEMM epilogue, rescale, the
    global pool and the linear head. One library, called at 1, 3 and 8 images, in an order that changes size."""
    assert mbv2_dynamic.dynamic_batch and not mbv2_x86.dynamic_batch
    assert "[n, 3, 17, 15]" in repr(mbv2_dynamic)
    assert_every_batch_exact(mbv2_dynamic, mbv2_graph, (1, 3, 8, 1, 3))
    x = batch_input(mbv2_graph, 1, seed=5)
    np.testing.assert_array_equal(mbv2_dynamic(x), mbv2_x86(x))
    # the same kernels as the static build (each one runs per image), with a symbolic batch in their signatures
    assert [k["primfuncs"] for k in mbv2_dynamic.kernels] == [k["primfuncs"] for k in mbv2_x86.kernels]
    assert [k["workload"].get("mode") for k in mbv2_dynamic.kernels] == \
        [k["workload"].get("mode") for k in mbv2_x86.kernels]
    sigs = mbv2_dynamic.meta["signatures"]
    assert all(any("n" in shape for shape, _ in sigs[f]) for k in mbv2_dynamic.kernels for f in k["primfuncs"])


def test_dynamic_library_keeps_few_input_buffers(mbv2_dynamic, mbv2_graph):
    """Each new batch size binds an aligned input buffer; only the last four stay bound (memory stays bounded), and
    an evicted size is bound again correctly."""
    for n in (1, 2, 4, 5, 6, 7, 1):
        x = batch_input(mbv2_graph, n, seed=20 + n)
        np.testing.assert_array_equal(mbv2_dynamic(x), G.reference(mbv2_graph, x))
    assert len(mbv2_dynamic._bound) == 4 and (1, 3, 17, 15) in mbv2_dynamic._bound


def test_dynamic_float_island_se_exact():
    """Squeeze-excite as one float-island kernel (float64 mean, two 1x1 convs, hardsigmoid, quantize, gate)."""
    ig = G.se_island(seed=0)
    low = lower_integer_graph(ig, "x86", batch="dynamic")
    assert any(k["op"] == "float_island" for k in low.kernels)
    assert_every_batch_exact(low, ig)


def test_dynamic_export_load_keeps_the_batch(mbv2_dynamic, mbv2_graph, tmp_path):
    path = mbv2_dynamic.export(tmp_path / "lib")
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["batch"] == "dynamic" and meta["input"]["shape"] == [1, 3, 17, 15]
    again = load(path)
    assert again.dynamic_batch
    assert_every_batch_exact(again, mbv2_graph, (8, 3))


def test_dynamic_benchmark_times_the_batch(mbv2_dynamic, mbv2_x86):
    res = mbv2_dynamic.benchmark(repeat=3, batch=8)
    assert res.repeat == 3 and res.median_ms > 0
    names = {r["name"] for r in res.kernels}
    assert {f for k in mbv2_dynamic.kernels for f in k["primfuncs"]} <= names
    with pytest.raises(ConfigError, match="batch"):
        mbv2_x86.benchmark(repeat=2, batch=8)
    with pytest.raises(ConfigError, match="batch"):
        mbv2_dynamic.benchmark(repeat=2, batch=0)


def test_input_shape_errors(mbv2_dynamic, mbv2_x86, mbv2_graph):
    with pytest.raises(ConfigError, match=r"static-shaped: lower with batch='dynamic'"):
        mbv2_x86(batch_input(mbv2_graph, 3))
    with pytest.raises(ConfigError, match=r"\(N, 3, 17, 15\) for any batch N >= 1"):
        mbv2_dynamic(np.zeros((2, 3, 17, 14), np.float32))
    with pytest.raises(ConfigError, match=r"any batch"):
        mbv2_dynamic(np.zeros((0, 3, 17, 15), np.float32))
    with pytest.raises(ConfigError, match="batch"):
        lower_integer_graph(mbv2_graph, "x86", batch="any")
    with pytest.raises(ConfigError, match="batch"):
        lower_integer_graph(mbv2_graph, "x86", batch=0)


def _flatten_over_batch() -> object:
    """quantize -> dequantize -> torch.flatten(x, 0) (the batch folded into the features) -> quantize."""
    b = IntegerGraphBuilder()
    q = b.call(ops.quantize, b.input("x"), 1 / 0.05, 100.5, 255)
    d = b.call(ops.dequantize, q, 0.05, 100.0)
    f = b.call(torch.flatten, d, 0)
    return b.build(b.call(ops.quantize, f, 1 / 0.05, 100.5, 255), {"input_shape": [1, 2, 3, 3]})


def test_graph_that_mixes_images_is_refused():
    ig = _flatten_over_batch()
    with pytest.raises(LoweringError, match=r"node flatten: .*\(18,\) at batch 1 but \(36,\) at batch 2"):
        lower_integer_graph(ig, "x86", batch="dynamic")
    # the analysis leaves the graph's shapes as they were
    assert all(n.meta.get("tensor_meta") is None or n.meta["tensor_meta"].shape[0] != 2 for n in ig.graph.nodes)


def test_custom_finalize_without_dynamic_batch_is_refused(mbv2_graph):
    import dataclasses

    from qcompile.backends.tvm.pipeline import default_pipeline

    pipe = dataclasses.replace(default_pipeline(), finalize=lambda target: [])
    with pytest.raises(LoweringError, match="pipeline.finalize"):
        lower_integer_graph(mbv2_graph, "x86", batch="dynamic", pipeline=pipe)


@pytest.mark.slow
@pytest.mark.parametrize("graph", ["float_island", "epilogue_chains"])
def test_dynamic_more_graphs_exact(graph):
    """The float stem/island kernel (float64 convs, activations, mean, linear) and the fused epilogue chains
    (LUT, residual add with swapped operands, rescale, ragged GEMM tiles)."""
    ig = getattr(G, graph)(seed=0)
    assert_every_batch_exact(lower_integer_graph(ig, "x86", batch="dynamic"), ig)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["avx2", "avx512", "avx-vnni", "avx512-vnni"])
def test_dynamic_every_isa_family_exact(family):
    """mbv2_like on each x86 kernel family's target (the AVX2 pmaddubsw/pmaddwd GEMMs, AVX-512 vpmaddwd,
    256- and 512-bit VNNI): built for each, executed where this CPU has the family."""
    ig = G.mbv2_like(seed=1, bits=4 if family == "avx2" else 8)
    low = lower_integer_graph(ig, family_target(family), batch="dynamic")
    if not isa.should_execute(family):
        pytest.skip(f"built the {family} library; this CPU cannot execute it")
    assert_every_batch_exact(low, ig)


@pytest.mark.slow
def test_dynamic_amx_kernels_exact():
    """Large 1x1 convs on AMX-INT8 tiles (with a fused LUT and residual add), one tile configuration per image."""
    ig = G.amx_residual()
    if not isa.should_execute("amx-int8"):
        pytest.skip("this CPU has no AMX-INT8: the host lowering has no AMX kernel")
    low = lower_integer_graph(ig, "x86", batch="dynamic")
    assert [k["workload"].get("mode") for k in low.kernels if k["op"] == "conv2d_requant"] == ["amx", "amx"]
    assert_every_batch_exact(low, ig, (1, 3))


@pytest.mark.slow
def test_static_batch_n_library_exact(mbv2_graph, mbv2_x86):
    """`batch=N` builds a static library for N images: the batch-1 kernels (the strategies') looped N times, where
    `input_shape=(N, ...)` would emit naive convs."""
    low = lower_integer_graph(mbv2_graph, "x86", batch=3)
    assert low.input_shape == (3, 3, 17, 15) and low.meta["output"]["shape"] == [3, 10] and not low.dynamic_batch
    assert [k["strategy"] for k in low.kernels] == [k["strategy"] for k in mbv2_x86.kernels]
    assert_every_batch_exact(low, mbv2_graph, (3,))
    with pytest.raises(ConfigError, match="static-shaped"):
        low(batch_input(mbv2_graph, 1))


@pytest.mark.parametrize("graph,batch", [("mbv2_like", "dynamic"), ("mbv2_like", 3)])
def test_one_region_gemms_exact_at_every_batch(monkeypatch, graph, batch):
    """The one-region pointwise GEMM (`GemmKnobs.chunks`, issue 20: a packing buffer allocated inside the parallel
    loop) under the per-image batch loop, dynamic and static: every kernel parallel (`QCOMPILE_PARALLEL_MIN_US=0`)
    on the 2-thread VNNI-512 target, so the default takes it on these small maps; bit-exact with the reference
    executor at every batch (mbv2_like: its fused residual add and LUT included)."""
    import qcompile.backends.tvm.schedules.x86.gemm as gemm
    from qcompile.backends.tvm.schedules.parallel import ENV_MIN_US

    if not isa.should_execute("avx512-vnni"):
        pytest.skip("this CPU cannot execute AVX-512 VNNI")
    monkeypatch.setenv(ENV_MIN_US, "0")
    taken = []
    real = gemm.schedule_gemm_chunks

    def spy(*args, **kwargs):
        taken.append(real(*args, **kwargs))
        return taken[-1]

    monkeypatch.setattr(gemm, "schedule_gemm_chunks", spy)
    ig = getattr(G, graph)(seed=2)
    low = lower_integer_graph(ig, family_target("avx512-vnni", 2), batch=batch)
    assert any(taken)
    if batch == "dynamic":
        assert_every_batch_exact(low, ig)
    else:
        assert_every_batch_exact(low, ig, (batch,))
