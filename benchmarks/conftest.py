"""Session fixtures for the benchmark suites: targets and compiled peers are built once per run."""

from __future__ import annotations

import pytest

tvm = pytest.importorskip("tvm")


@pytest.fixture(scope="session")
def avx2_target():
    """The host's mcpu limited to AVX2 (never another CPU's: its code may SIGILL here)."""
    from qcompile.backends.tvm.targets import family_target, runs_on_host

    tgt = family_target("avx2", num_cores=2)
    if not runs_on_host(tgt):
        pytest.skip("this CPU cannot execute AVX2 kernels")
    return tvm.target.Target(tgt)


@pytest.fixture(scope="session")
def host_target():
    """The host's best x86 target (AVX-512 VNNI here when the CPU has it, else AVX2)."""
    from qcompile.backends.tvm.targets import host_x86_target

    return tvm.target.Target(host_x86_target(num_threads=2))  # mcpu and features of this CPU


@pytest.fixture(scope="session")
def mbv2_input():
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (1, 3, 224, 224)).astype(np.uint8), rng.standard_normal((1, 3, 224, 224)).astype(
        np.float32
    )
