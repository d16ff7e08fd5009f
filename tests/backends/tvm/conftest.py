"""Shared artifacts for the TVM backend tests: graphs and x86 builds made once per session."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tvm_graphs as G

from qcompile.backends.tvm import lower_integer_graph


def vm_calls(low, x) -> collections.Counter:
    """Calls per `main` by symbol (the VM's instrument hook): kernels, VM builtins, or the native driver."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(low._exec, tvm.cpu())
    counts: collections.Counter = collections.Counter()

    def instrument(func, symbol, before, ret, *args):
        counts[symbol] += before
        return 0

    vm.set_instrument(instrument)
    vm["main"](tvm.runtime.tensor(x))
    return counts


def vm_pipeline(**kw):
    """The default pipeline with one VM instruction per kernel (no native driver) and `finalize_passes(**kw)`."""
    import dataclasses
    import functools

    from qcompile.backends.tvm.pipeline import default_pipeline, finalize_passes

    return dataclasses.replace(default_pipeline(), finalize=functools.partial(finalize_passes, native_driver=False,
                                                                              **kw))


def make_input(ig, seed: int = 0, scale: float = 3.0) -> np.ndarray:
    shape = tuple(ig.program_meta["input_shape"])
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


@pytest.fixture(scope="session")
def mbv2_graph():
    return G.mbv2_like(seed=0, bits=8)


@pytest.fixture(scope="session")
def mbv2_x86(mbv2_graph):
    return lower_integer_graph(mbv2_graph, "x86")


@pytest.fixture(scope="session")
def mbv2_dynamic(mbv2_graph):
    """`mbv2_like` in one library for any batch size (`batch="dynamic"`), built once per session."""
    return lower_integer_graph(mbv2_graph, "x86", batch="dynamic")


@pytest.fixture(scope="session")
def mbv2_arm(mbv2_graph):
    """`mbv2_like` cross-compiled for `arm_cpu` (aarch64), built once per session: ~5-20 s a build here, and three
    test files (lower_arm, profile, tune_arm) only read or run it."""
    return lower_integer_graph(mbv2_graph, "arm_cpu")


def fresh(low):
    """A new `Lowered` over `low`'s compiled library: its run-time state (the VM, bound input buffers, the
    directly called driver) starts empty, as after `lower_integer_graph`, without compiling the program again
    (a warm mbv2_like lowering costs ~5 s here). For tests that need a Lowered no earlier call has bound."""
    import copy

    from qcompile.backends.tvm.lowered import Lowered

    return Lowered(low._lib_path, low._exec, low.spec, copy.deepcopy(low.meta), low.program, low.num_threads,
                   low._workdir)
