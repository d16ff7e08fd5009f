"""Canonical configs: configs that compile to the same network are one config."""

from dataclasses import replace

import pytest

import qcompile as qc
from qcompile.search.cost import cost_report
from qcompile.search.encoding import crossover, encode, mutate


@pytest.fixture(scope="module")
def space():
    return qc.spaces.mobilenet_v3(num_classes=10, width_mult=0.35, resolutions=(24, 32))


def _shallow(space):
    cfg = space.largest(bits=4)
    depths = tuple(min(space.stages[si].depths) for si in space.config_stages)
    return replace(cfg, depths=depths)


def test_skipped_block_genes_do_not_change_the_config(space):
    base = _shallow(space)
    active = space._active_block_slots(base)
    skipped = active.index(False)
    kernels = list(base.kernels)
    other = [k for k in space.genes() if k.field == "kernels" and k.index == skipped][0].choices
    a = replace(base, kernels=tuple(kernels))
    kernels[skipped] = other[0] if base.kernels[skipped] != other[0] else other[-1]
    b = replace(base, kernels=tuple(kernels))
    assert a != b and a.stable_hash() != b.stable_hash()
    ca, cb = space.canonical(a), space.canonical(b)
    assert ca == cb and ca.stable_hash() == cb.stable_hash()
    assert cost_report(space, a) == cost_report(space, ca)
    assert (encode(space, a) == encode(space, ca)).all()
    assert space.canonical(ca) == ca  # idempotent


def test_skipped_slots_policy_normalised_keeps_uniform_and_float(space):
    base = _shallow(space)
    bits = list(base.policy.bits)
    slot_active = space._active_layer_slots(base)
    off = slot_active.index(False)
    bits[off] = (2, 3)
    c = space.canonical(base.with_policy(qc.QuantPolicy(tuple(bits))))
    assert c == space.canonical(base) and c.policy == base.policy  # uniform 4 stays uniform 4
    assert space.canonical(base.with_policy(None)).policy is None
    assert space.canonical(space.largest(bits=3)) == space.largest(bits=3)  # nothing skipped: unchanged


def test_sample_decode_mutate_crossover_are_canonical(space):
    for s in range(15):
        cfg = space.sample(seed=s, bits=(2, 3, 4))
        assert space.canonical(cfg) == cfg
        raw = space.sample(seed=s, bits=(2, 3, 4), canonical=False)
        assert space.canonical(raw) == cfg and raw.depths == cfg.depths
        m = mutate(space, cfg, rate=0.5, seed=s, bits=(2, 3, 4))
        x = crossover(space, cfg, space.sample(seed=50 + s, bits=(2, 3, 4)), seed=s)
        assert space.canonical(m) == m and space.canonical(x) == x
