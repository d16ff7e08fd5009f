"""Search spaces: sizes, validation errors, reference parameter / MAC counts, encodings."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

import qcompile as qc
from qcompile import ConfigError, QuantPolicy
from qcompile.search.cost import count_macs, count_params
from qcompile.search.encoding import choice_counts, crossover, decode, encode, encoding_size, mutate
from tests.conftest import tiny_space


def test_mobilenet_v3_largest_matches_ofa():
    """OFA's OFAMobileNetV3 (w1.0, ks 7, e 6, d 4) max subnet at 224, 1000 classes, counted with
    mit-han-lab/once-for-all @ f03b2673 (get_active_subnet, sum of numel; conv/linear MACs incl. SE):
    7,664,760 parameters and 566,170,656 MACs. The acceptance bound is 1 %; we match exactly."""
    space = qc.spaces.mobilenet_v3(num_classes=1000)
    cfg = replace(space.largest(), resolution=224)
    params, macs = count_params(space, cfg), count_macs(space, cfg)
    assert abs(params - 7_664_760) / 7_664_760 < 0.01
    assert abs(macs - 566_170_656) / 566_170_656 < 0.01
    assert (params, macs) == (7_664_760, 566_170_656)
    net = space.build_supernet()
    assert sum(p.numel() for p in net.parameters()) == params  # no kernel-transform matrices by default


def test_mobilenet_v3_smallest_matches_ofa():
    """Same source: min subnet (ks 3, e 3, d 2): 3,410,792 params; 121,278,672 MACs at 224, 41,476,224 at 128."""
    space = qc.spaces.mobilenet_v3(num_classes=1000)
    small = space.smallest()
    assert count_params(space, small) == 3_410_792
    assert count_macs(space, replace(small, resolution=224)) == 121_278_672
    assert count_macs(space, replace(small, resolution=128)) == 41_476_224


def test_qfa_space_size():
    """QFA section 4: each stage has 6561^2 (1 + 6561 (1 + 6561)) ~ 1.85e15 quantized configs; the space
    (5 stages) ~2.19e76 without resolutions. We have 4 resolutions."""
    space = qc.spaces.mobilenet_v3()
    per_block = 3 * 3 * 3 ** (3 * 2)
    stage = per_block**2 * (1 + per_block * (1 + per_block))
    assert space.size(bits=(2, 3, 4)) == 4 * stage**5
    assert math.isclose(stage**5, 2.19e76, rel_tol=0.01)
    assert space.size() == 4 * (9**2 + 9**3 + 9**4) ** 5


def test_kernel_transform_adds_ofa_matrices():
    """OFA: 20 blocks x (25x25 + 9x9) = 14,120 extra supernet parameters."""
    plain = qc.spaces.mobilenet_v3(num_classes=1000).build_supernet()
    kt = qc.spaces.mobilenet_v3(num_classes=1000, kernel_transform=True).build_supernet()
    diff = sum(p.numel() for p in kt.parameters()) - sum(p.numel() for p in plain.parameters())
    assert diff == 14_120


def test_sample_is_deterministic_and_valid(space_name):
    space = tiny_space(space_name)
    assert space.sample(seed=7) == space.sample(seed=7)
    assert len({space.sample(seed=s) for s in range(20)}) > 15
    for s in range(20):
        space.validate(space.sample(seed=s, bits=(2, 3, 4)))
    assert count_macs(space, space.smallest()) < count_macs(space, space.largest())


def test_validate_names_the_field():
    space = qc.spaces.mobilenet_v3()
    cfg = space.largest(bits=4)
    cases = {
        "kernels[0]": replace(cfg, kernels=(9,) + cfg.kernels[1:]),
        "depths[2]": replace(cfg, depths=cfg.depths[:2] + (5,) + cfg.depths[3:]),
        "expands[5]": replace(cfg, expands=cfg.expands[:5] + (2,) + cfg.expands[6:]),
        "resolution": replace(cfg, resolution=100),
        "policy": replace(cfg, policy=QuantPolicy(cfg.policy.bits[:-1])),
        "kernels": replace(cfg, kernels=cfg.kernels[:-1]),
        "weight_bits": replace(cfg, policy=QuantPolicy(((5, 4),) + cfg.policy.bits[1:])),
    }
    for field, bad in cases.items():
        with pytest.raises(ConfigError) as e:
            space.validate(bad)
        assert field in str(e.value), (field, str(e.value))
    with pytest.raises(ConfigError, match="allowed"):
        space.validate(replace(cfg, resolution=100))
    with pytest.raises(ConfigError, match="bits"):
        space.sample(seed=0, bits=(5,))


def test_set_active_validates():
    space = tiny_space("mobilenet_v3")
    net = space.build_supernet()
    bad = replace(space.largest(), kernels=(4,) * 20)
    with pytest.raises(ConfigError, match="kernels"):
        qc.set_active(net, bad)


def test_encoding_round_trip_and_mutation(space_name):
    space = tiny_space(space_name)
    n = encoding_size(space)
    for s in range(10):
        cfg = space.sample(seed=s, bits=(2, 3, 4))
        vec = encode(space, cfg)
        assert vec.shape == (n,) and set(np.unique(vec)) <= {0.0, 1.0}
        idx = encode(space, cfg, one_hot=False)
        assert decode(space, idx) == cfg
        child = mutate(space, cfg, rate=0.3, seed=s, bits=(2, 3, 4))
        space.validate(child)
        assert child.policy is not None and {b for p in child.policy.bits for b in p} <= {2, 3, 4}
        mix = crossover(space, cfg, space.sample(seed=100 + s, bits=(2, 3, 4)), seed=s)
        space.validate(mix)


def test_decode_names_an_out_of_range_gene():
    space = tiny_space("mobilenet_v3")
    idx = encode(space, space.smallest(bits=4), one_hot=False).astype(int)
    counts = choice_counts(space)
    for pos, bad in ((0, counts[0]), (len(idx) - 1, counts[-1]), (1, -1)):
        wrong = idx.copy()
        wrong[pos] = bad
        want = rf"indices\[{pos}\]: got {bad}; allowed: a choice index in \[0, {counts[pos] - 1}\]"
        with pytest.raises(ConfigError, match=want):
            decode(space, wrong)
    with pytest.raises(ConfigError, match="indices"):
        decode(space, idx[:-1])


def test_encoding_zeroes_skipped_blocks():
    """APQ 3.2: a skipped block's encoding is all zeros."""
    space = qc.spaces.mobilenet_v3()
    shallow = space.smallest(bits=4)
    vec = encode(space, shallow)
    deep = encode(space, space.largest(bits=4))
    assert vec.sum() < deep.sum()


def test_spaceevo_hyperspace_points():
    vnni = qc.spaces.spaceevo()
    assert vnni.stages[2].block == "fused" and vnni.stages[5].block == "mbv3"
    other = qc.spaces.spaceevo(
        blocks=[3, 0, 1, 2, 4, 5, 6], widths=[(16,), (32,), (48,), (64,), (112,), (192,), (304,)]
    )
    assert [s.block for s in other.stages] == [
        "bottleneck",
        "mbv1",
        "mbv2",
        "mbv3",
        "bottleneck_se",
        "fused",
        "fused_se",
    ]
    with pytest.raises(ConfigError, match="blocks"):
        qc.spaces.spaceevo(blocks=["mbv9"] * 7)
    with pytest.raises(ConfigError, match=r"widths\[1\]"):
        qc.spaces.spaceevo(widths=[(16,), (1000,), (64,), (112,), (144,), (240,), (320,)])


def test_mobilenet_v2_fine_grained_channels():
    """APQ 3.1: middle channels from 4x to 6x the block input in steps of 8."""
    space = qc.spaces.mobilenet_v2(fine_grained=True, num_classes=10)
    cfg = space.sample(seed=0)
    assert cfg.channels is not None and len(cfg.channels) == space.num_block_slots == 21
    gene = [g for g in space.genes() if g.field == "channels"][1]
    assert gene.choices == tuple(range(96, 145, 8))  # block input 24: 96..144
    space.validate(cfg)
    assert space.size() > qc.spaces.mobilenet_v2().size()


def test_bad_space_arguments():
    with pytest.raises(ConfigError, match="num_classes"):
        qc.spaces.mobilenet_v3(num_classes=0)
    with pytest.raises(ConfigError, match="resolutions"):
        qc.spaces.mobilenet_v3(resolutions=())
