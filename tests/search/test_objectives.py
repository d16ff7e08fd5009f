"""Objective factories against the cost model computed by hand from the layer list."""

import numpy as np
import pytest

import qcompile as qc
import qcompile.search as qs
from qcompile.config import FLOAT_BITS
from qcompile.errors import ConfigError
from qcompile.search.cost import layers


@pytest.fixture(scope="module")
def space():
    return qc.spaces.mobilenet_v3(num_classes=10, width_mult=0.35, resolutions=(24, 32))


def _by_hand(space, cfg):
    """(BitOPs, float MACs, weight bits) from the layer list and the default fixed bits, independently."""
    fixed = {"stem": FLOAT_BITS, "classifier": 8, "head": 8, "se": FLOAT_BITS}
    bops = fmacs = wbits = 0
    for layer in layers(space, cfg):
        if layer.slot is not None:
            w, a = cfg.policy[layer.slot]
        else:
            w = a = fixed["head" if layer.role == "block" else layer.role]
        wbits += layer.params * w
        if FLOAT_BITS in (w, a):
            fmacs += layer.macs
        else:
            bops += layer.macs * w * a
    return bops, fmacs, wbits


def test_cost_objectives_match_hand_counts(space):
    cfgs = [space.sample(seed=s, bits=(2, 3, 4, 32)) for s in range(4)] + [space.largest(bits=4)]
    want = np.array([_by_hand(space, c) for c in cfgs], dtype=float)
    b, q, m = qs.objectives.bitops(space), qs.objectives.qfa_flops(space), qs.objectives.model_bits(space)
    assert (b.name, b.direction, q.direction, m.direction) == ("bitops", "min", "min", "min")
    assert np.array_equal(b(cfgs), want[:, 0])
    assert np.allclose(q(cfgs), want[:, 1] + want[:, 0] / 64)  # QFA Sec. 5
    assert np.array_equal(m(cfgs), want[:, 2])
    # largest at 4 bits: every block layer 16 BitOPs per MAC
    big = space.largest(bits=4)
    block_macs = sum(layer.macs for layer in layers(space, big) if layer.slot is not None)
    assert b([big])[0] >= 16 * block_macs


def test_accuracy_objective_uses_predict_and_is_maximised(space):
    class P:
        def predict(self, configs):
            return np.array([c.resolution / 100 for c in configs])

    acc = qs.objectives.accuracy(P())
    assert acc.direction == "max" and acc.name == "accuracy"
    cfgs = [space.largest(), space.smallest()]
    assert np.allclose(acc(cfgs), [0.32, 0.24])
    assert acc.minimised(acc(cfgs))[0] < acc.minimised(acc(cfgs))[1]
    with pytest.raises(ConfigError, match="predict"):
        qs.objectives.accuracy(lambda c: c)
    with pytest.raises(ConfigError, match="space"):
        qs.objectives.bitops("mobilenet_v3")
    assert qs.Objective is qs.objectives.Objective
