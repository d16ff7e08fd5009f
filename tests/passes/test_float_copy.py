"""Pass `float-copy`: the float twin of a fake-quant subnet equals the subnet extracted without quantizers."""

from __future__ import annotations

import torch

import qcompile as qc
from qcompile.passes import PassManager
from qcompile.passes.float_copy import float_copy
from qcompile.quant import ActQuantizer


def test_float_copy_is_the_unquantized_subnet():
    torch.manual_seed(0)
    space = qc.spaces.mobilenet_v3(num_classes=10, width_mult=0.25, resolutions=(32,))
    graph = qc.trace(space.build_supernet().eval())
    cfg = space.sample(seed=2, bits=(4, 8))
    qsub = qc.extract(qc.quantize(graph), cfg).eval()
    reference = qc.extract(graph, cfg.with_policy(None)).eval()  # same weights, never quantized
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    before = qsub.code
    f = float_copy(qsub)
    assert qsub.code == before  # the input is not modified
    assert not any(isinstance(m, ActQuantizer) for m in f.modules())
    assert all(getattr(m, "weight_quant", None) is None for m in f.modules())
    with torch.no_grad():
        torch.testing.assert_close(f(x), reference(x), rtol=1e-5, atol=1e-5)
        assert not torch.equal(qsub(x), f(x))  # the quantized subnet computes something else
    res = PassManager("float-copy", verify=True).run(qsub)
    assert res.modified and res.graph_module.code == f.code
