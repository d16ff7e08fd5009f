"""`benchmarks.pack_axis`: the three packings of a pointwise GEMM parallelise the loop they name and compute the
same codes as the reference integer GEMM (`requant` formula of integer_semantics.md)."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from benchmarks.pack_axis import VARIANTS, build  # noqa: E402
from benchmarks.parallel_split import parallel_loops  # noqa: E402
from qcompile.backends.tvm.schedules import parallel as par  # noqa: E402
from qcompile.backends.tvm.schedules.conv import pack_weights  # noqa: E402
from qcompile.backends.tvm.schedules.requant import bias_term  # noqa: E402
from tests import kernel_isa as isa  # noqa: E402


def _gemm_ref(x, w, bias, mult, shift):
    acc = w.astype(np.int64) @ x.astype(np.int64) + bias[:, None]
    s = shift.astype(np.int64)[:, None]
    return np.clip((acc * mult.astype(np.int64)[:, None] + (np.int64(1) << (s - 1))) >> s, 0, 255)


def test_pack_variants_parallel_loops_and_bit_exact(monkeypatch):
    monkeypatch.setenv(par.ENV_MIN_US, "0")  # every region, whatever the size
    monkeypatch.delenv(par.ENV_MIN_WORK, raising=False)
    k, p, o = 32, 784, 192  # MobileNetV2's 28x28 expand: 8 blocks of 4, 49 pixel tiles of 16, 16 channel tiles of 12
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (k, p)).astype(np.uint8)
    w = rng.integers(-128, 128, (o, k)).astype(np.int8)
    bias = rng.integers(-20000, 20000, o).astype(np.int32)
    mult = rng.integers(2**29, 2**31, o).astype(np.int32)
    shift = rng.integers(34, 42, o).astype(np.int32)
    ref = _gemm_ref(x, w, bias, mult, shift)
    assert len(np.unique(ref)) > 50
    expect = {"blocks": [("b", 8), ("j_0_c_0_fused", 784)], "pixels": [("j_0", 49), ("j_0_c_0_fused", 784)],
              "serial": [("j_0_c_0_fused", 784)]}
    for v in VARIANTS:
        func, mod = build(k, p, o, v)
        assert [(lp.var, lp.extent) for lp in parallel_loops(func)] == expect[v], v
        if not isa.should_execute("avx512-vnni"):
            continue
        out = tvm.runtime.tensor(np.zeros((o, p), np.uint8))
        args = (x, pack_weights(w, 4, "int8"), bias_term(bias, mult, shift), mult, shift)
        mod["main"](*(tvm.runtime.tensor(a) for a in args), out)
        np.testing.assert_array_equal(out.numpy(), ref, err_msg=v)


def test_gemm_defaults_compares_session_12_knobs_with_todays():
    """`benchmarks.gemm_defaults`: "s12" is session 12's untuned tile (6 x 32, block packing), "new" today's
    `default_knobs(mode, K, P, O)`; they differ exactly on MobileNetV2's two small-K expands and three large
    projects."""
    from benchmarks.gemm_defaults import knobs
    from benchmarks.pack_axis import MBV2_GEMMS
    from qcompile.backends.tvm.schedules.x86.gemm import GemmKnobs

    assert knobs("s12", 16, 12544, 96) == GemmKnobs(6, 32)
    assert knobs("new", 16, 12544, 96) == GemmKnobs(2, 64, store64=True, vshift=True)
    assert knobs("s12", 96, 3136, 24) == GemmKnobs(12, 16)
    assert knobs("new", 96, 3136, 24) == GemmKnobs(2, 64, pack_tiles=1, store64=True, vshift=True)
    differ = [s[:3] for s in MBV2_GEMMS if knobs("s12", *s[:3]) != knobs("new", *s[:3])]
    assert differ == [(32, 12544, 16), (16, 12544, 96), (96, 3136, 24), (24, 3136, 144), (144, 3136, 24)]
