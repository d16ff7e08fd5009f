"""Fixtures of the search tests: a tiny real MobileNetV3 space and its quantized supernet."""

import pytest
import torch

import qcompile as qc


def tiny_space():
    return qc.spaces.mobilenet_v3(num_classes=10, width_mult=0.25, resolutions=(16,), kernels=(3, 5),
                                  expands=(3,), depths=(1, 2))


@pytest.fixture(scope="session")
def tspace():
    return tiny_space()


@pytest.fixture(scope="session")
def tqnet(tspace):
    torch.manual_seed(0)
    q = qc.quantize(qc.trace(tspace.build_supernet()), weight_bits=(2, 3, 4, 8, 32), act_bits=(2, 3, 4, 8, 32))
    # an untrained supernet initialises its LSQ steps lazily (its first forward at a bit-width, or each
    # extracted copy); fix them once for every bit-width from the full weights, as a trained run has them
    with torch.no_grad():
        for m in q.modules():
            wq = getattr(m, "weight_quant", None)
            if wq is None:
                continue
            active = wq.active_bits
            for b in (b for b in wq.bits if b != 32 and not wq.is_initialized(b)):
                wq.active_bits = b
                wq(m.weight)
            wq.active_bits = active
    return q


@pytest.fixture(scope="session")
def tdigits():
    import qcompile.data as qd

    return qd.digits(resolution=16, in_channels=3, seed=0)
