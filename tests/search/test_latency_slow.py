"""kernel_workloads equals the kernels qc.lower emits for 30 random mixed-bit subnets per space (slow sweep).

Untuned x86 lowerings of tiny-space subnets; QCOMPILE_LATENCY_SWEEP=N changes the count.
"""

from __future__ import annotations

import os

import pytest
import torch

import qcompile as qc
import qcompile.search as qs
from tests.conftest import tiny_space

N = int(os.environ.get("QCOMPILE_LATENCY_SWEEP", "30"))

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.uname().machine not in ("x86_64", "AMD64"), reason="x86 host kernels")]


@pytest.mark.parametrize("name", ["mobilenet_v3", "mobilenet_v2", "spaceevo"])
def test_kernel_workloads_equal_emitted_sweep(name):
    space = tiny_space(name)
    torch.manual_seed(5)
    qnet = qc.quantize(qc.trace(space.build_supernet()))
    g = torch.Generator().manual_seed(1)
    for i in range(N):
        cfg = space.sample(seed=1000 + i, bits=(2, 3, 4, 8))
        sub = qc.extract(qnet, cfg)
        qc.calibrate(sub, [torch.rand(4, space.in_channels, cfg.resolution, cfg.resolution, generator=g) * 4 - 2])
        low = qc.lower(sub, "x86")
        emitted = [k["workload"] for k in low.meta["kernels"]]
        assert qs.kernel_workloads(space, cfg, "x86") == emitted, f"{name} subnet {i}: {cfg.to_json()}"
