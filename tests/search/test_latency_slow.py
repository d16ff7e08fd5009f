"""kernel_workloads equals the kernels qc.lower emits, for random mixed-bit subnets of each space (slow sweep).

The emitted list comes from `emitted_kernels`: the real emission of `qc.lower` (strategies emit with the
subnet's own weights) stopped before the TVM build, which `test_latency.py::test_emitted_kernels_equal_lowered`
checks against real lowerings. Each space's supernet has other weights and calibration data than the skeleton
`kernel_workloads` plans on, and the per-block memo answers later subnets (so the memo is checked too).
Micro spaces (16 px, 1-2 blocks per stage, 2 kernel and expand choices), 4 subnets each in CI;
QCOMPILE_LATENCY_SWEEP=30 runs the acceptance count. The same sweep on the real demo / mobilenet_v2 / spaceevo
spaces: `python -m benchmarks.workload_sweep`.
"""

from __future__ import annotations

import os

import pytest
import torch

import qcompile as qc
import qcompile.search as qs
from qcompile.api import _integer_graph
from qcompile.backends.tvm.lowered import emitted_kernels

N = int(os.environ.get("QCOMPILE_LATENCY_SWEEP", "4"))
#: every bit class the kernels distinguish: sub-8-bit, 8-bit activations, float islands
BITS = (2, 3, 4, 8, 32)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.uname().machine not in ("x86_64", "AMD64"), reason="x86 host kernels")]


def _micro(name: str):
    kw = {"num_classes": 10, "width_mult": 0.25, "resolutions": (16,), "kernels": (3, 5)}
    if name == "spaceevo":
        kw["depths"] = [(1, 2)] * 7
    else:
        kw.update(depths=(1, 2), expands=(3, 6))
    return getattr(qc.spaces, name)(**kw)


@pytest.mark.parametrize("name", ["mobilenet_v3", "mobilenet_v2", "spaceevo"])
def test_kernel_workloads_equal_emitted_sweep(name):
    space = _micro(name)
    torch.manual_seed(5)
    qnet = qc.quantize(qc.trace(space.build_supernet()))
    g = torch.Generator().manual_seed(1)
    checked = 0
    for i in range(N):
        cfg = space.sample(seed=1000 + i, bits=BITS)
        sub = qc.extract(qnet, cfg)
        qc.calibrate(sub, [torch.rand(4, space.in_channels, cfg.resolution, cfg.resolution, generator=g) * 4 - 2])
        emitted = [k["workload"] for k in emitted_kernels(_integer_graph(sub, None), "x86")]
        assert qs.kernel_workloads(space, cfg, "x86") == emitted, f"{name} subnet {i}: {cfg.to_json()}"
        checked += len(emitted)
    assert checked > 10 * N


@pytest.mark.parametrize("name", ["mobilenet_v3", "mobilenet_v2", "spaceevo"])
def test_window_plans_equal_the_whole_plan(name):
    """Every group planned on its own window (`window_workloads`: the group, the quantizer in front of it, the
    next group behind it) has the kernels the whole config's plan gives it."""
    from qcompile.search.latency import workloads

    space = _micro(name)
    for i in range(max(1, N // 2)):
        cfg = space.sample(seed=2000 + i, bits=BITS)
        order = list(workloads.block_keys(space, cfg))
        whole = workloads._split(workloads.plan_config(space, cfg, "x86", 1))
        assert set(whole) == set(order)
        for g in order[1:]:
            for gg, ws in workloads.window_workloads(space, cfg, [g], order, "x86", 1).items():
                assert ws == whole[gg], f"{name} config {i}, group {gg}: {cfg.to_json()}"


#: the acceptance count of issue 22: random subnets per real space
N_REAL = int(os.environ.get("QCOMPILE_WORKLOADS_EXACT", "30"))


def _real_space(name: str):
    """The demo's space (`benchmarks.latency_table.demo_space`) and OQA's MobileNetV2 space at 224 px."""
    if name == "demo":
        return qc.spaces.mobilenet_v3(num_classes=10, width_mult=0.35, resolutions=(24, 32))
    return qc.spaces.mobilenet_v2(num_classes=1000, resolutions=(224,))


@pytest.mark.parametrize("name", ["demo", "mobilenet_v2_224"])
def test_kernel_workloads_exact_on_real_spaces(name, monkeypatch):
    """Issue 22's acceptance: `kernel_workloads` (skeleton weights; whole plan, windows, per-block memo as a
    caller meets them) equals the whole-config dry emission (`plan_kernels`) of the real integer graph
    (`qc.lower`'s `to_integer`) of a differently seeded supernet calibrated on other data, entry by entry, for
    `N_REAL` random subnets with bits {2, 3, 4, 8, 32} (float islands, 8-bit activations, sub-8-bit)."""
    from qcompile.backends.tvm.emitter import plan_kernels
    from qcompile.backends.tvm.targets import resolve_target
    from qcompile.search.latency import workloads

    space = _real_space(name)
    torch.manual_seed(11)
    qnet = qc.quantize(qc.trace(space.build_supernet()))
    target = resolve_target("x86", 1).target()
    g = torch.Generator().manual_seed(3)
    paths = {"plan_config": 0, "window_workloads": 0}

    def counting(fn):
        def counted(*a, **k):
            paths[fn.__name__] += 1
            return fn(*a, **k)
        return counted

    for fn in (workloads.plan_config, workloads.window_workloads):
        monkeypatch.setattr(workloads, fn.__name__, counting(fn))
    workloads._MEMO.pop((workloads.space_key(space), workloads._target("x86", 1)[1]), None)
    bits, checked = set(), 0
    for i in range(N_REAL):
        cfg = space.sample(seed=3000 + i, bits=BITS)
        sub = qc.extract(qnet, cfg)
        qc.calibrate(sub, [torch.rand(2, space.in_channels, cfg.resolution, cfg.resolution, generator=g) * 4 - 2])
        ref = [r.workload for r in plan_kernels(_integer_graph(sub, None), target)]
        assert qs.kernel_workloads(space, cfg, "x86", 1) == ref, f"{name} subnet {i}: {cfg.to_json()}"
        bits.update(b for wa in cfg.policy.bits for b in wa)
        checked += len(ref)
    assert {8, 32} <= bits and checked > 50 * N_REAL
    # the memo's answers are checked too: after the first config, unseen blocks are planned on windows
    assert paths["plan_config"] >= 1 and (N_REAL < 3 or paths["window_workloads"] >= 1), paths
