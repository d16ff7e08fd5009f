"""Session fixtures for the benchmark suites: targets and compiled peers are built once per run."""

from __future__ import annotations

import pytest

tvm = pytest.importorskip("tvm")


@pytest.fixture(scope="session")
def avx2_target():
    return tvm.target.Target({"kind": "llvm", "mcpu": "core-avx2", "num-cores": 2})


@pytest.fixture(scope="session")
def host_target():
    """The host's best x86 target (AVX-512 VNNI here when the CPU has it, else AVX2)."""
    from tvm.target import codegen

    from qcompile.backends.tvm.intrin.x86 import has_avx2

    # LLVM aborts on mcpu="native": name the host CPU explicitly
    host = tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": 2})
    return host if has_avx2(host) else tvm.target.Target({"kind": "llvm", "mcpu": "core-avx2", "num-cores": 2})


@pytest.fixture(scope="session")
def mbv2_input():
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (1, 3, 224, 224)).astype(np.uint8), rng.standard_normal((1, 3, 224, 224)).astype(
        np.float32
    )
