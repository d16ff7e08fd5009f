"""SpaceEvo hyperspace: the paper's encodings, candidate spaces as values, JSON round trips of every space."""

from __future__ import annotations

import json
import random

import pytest

import qcompile as qc
from qcompile import ConfigError
from qcompile.search.cost import count_macs, layers
from qcompile.spaces.hyperspace import digits_hyperspace, encoding_of, vnni_hyperspace


def test_table12_space_encodes_as_the_appendix_says():
    """SpaceEvo@VNNI (Table 12): blocks MBv2, FusedMB, MBv2, MBv2, MBv3, MBv3 = ids 1,5,1,1,2,2 (Table 11);
    windows {32,48} {64,80} {112..144} {144..176} {240..304} {320..416} start at indices 0,2,3,2,3,1 of
    the Table 9 ranges in steps of 16 (32-64, 32-96, 64-144, 112-192, 192-304, 304-448)."""
    space = qc.spaces.spaceevo()
    assert encoding_of(space) == "151122-023231"
    rebuilt = vnni_hyperspace().from_encoding("151122-023231").build()
    assert rebuilt.spec() == space.spec()


def test_appendix_example_111111_000000():
    """Appendix C.1: 111111-000000 is MBv2 everywhere with widths {32,48}, {32,48}, {64,80,96},
    {112,128,144}, {192,...,256}, {304,...,400}."""
    cand = vnni_hyperspace().from_encoding("111111-000000")
    assert cand.block_names == ("mbv2",) * 6
    expect = [(32, 48), (32, 48), (64, 80, 96), (112, 128, 144), (192, 208, 224, 240, 256),
              (304, 320, 336, 352, 368, 384, 400)]
    assert [cand.stage_widths(i) for i in range(6)] == expect
    space = cand.build()
    assert [s.widths for s in space.stages[1:]] == expect


def test_hyperspace_sizes():
    # VNNI: 7 blocks x (2, 4, 4, 4, 4, 4) windows; digits keeps the same shape
    assert vnni_hyperspace().size() == 7**6 * 2 * 4**5
    assert digits_hyperspace().size() == 7**6 * 2 * 4**5


def test_mutations_change_one_stage():
    h = digits_hyperspace()
    rng = random.Random(0)
    for _ in range(50):
        parent = h.random(rng)
        s = rng.randrange(6)
        c1, c2 = parent.mutate_block(rng, s), parent.mutate_width(rng, s)
        d1 = [i for i in range(6) if c1.block_ids[i] != parent.block_ids[i]]
        assert d1 == [s] and c1.windows == parent.windows
        if h.stages[s].n_windows > 1:
            d2 = [i for i in range(6) if c2.windows[i] != parent.windows[i]]
            assert d2 == [s] and c2.block_ids == parent.block_ids
        assert h.from_encoding(c1.encoding) == c1


@pytest.mark.parametrize(
    "bad,field",
    [("151122023231", "encoding"), ("15112-023231", "encoding"), ("151122-02323x", "windows[5]"),
     ("851122-023231", "blocks[0]"), ("151122-923231", "windows[0]"), ("151122-0232!1", "encoding")],
)
def test_bad_encodings_name_the_field(bad, field):
    with pytest.raises(ConfigError) as e:
        vnni_hyperspace().from_encoding(bad)
    assert str(e.value).startswith(field)


def _spaces():
    h = digits_hyperspace()
    rng = random.Random(3)
    return [
        qc.spaces.mobilenet_v3(num_classes=10, width_mult=0.5, resolutions=(24, 32)),
        qc.spaces.mobilenet_v2(num_classes=10),
        qc.spaces.spaceevo(num_classes=10),
        *[h.random(rng).build() for _ in range(3)],
    ]


# ids without hash(): string hashes differ between processes, and xdist workers must collect the same ids
@pytest.mark.parametrize("space", _spaces(), ids=lambda s: s.name)
def test_json_round_trip_equal_specs_layers_macs(space):
    text = space.to_json()
    back = qc.spaces.from_json(text)
    assert back.spec() == space.spec()
    assert back.to_json() == text
    for seed in range(5):
        cfg = space.sample(seed=seed, bits=(2, 4, 8))
        assert layers(back, cfg) == layers(space, cfg)
        assert count_macs(back, cfg) == count_macs(space, cfg)
    assert back.num_layer_slots == space.num_layer_slots


def test_candidate_json_carries_encoding_and_rebuilds():
    cand = digits_hyperspace().from_encoding("636302-132321")
    doc = json.loads(cand.to_json())
    assert doc["encoding"] == "636302-132321"
    assert doc["args"]["blocks"][1:] == ["fused_se", "bottleneck", "fused_se", "bottleneck", "mbv1", "mbv3"]
    assert encoding_of(qc.spaces.from_json(cand.to_json())) == "636302-132321"


def test_from_json_errors_name_the_field():
    with pytest.raises(ConfigError, match="space json"):
        qc.spaces.from_json("not json")
    with pytest.raises(ConfigError, match="format"):
        qc.spaces.from_json(json.dumps({"format": "other/9", "name": "spaceevo"}))
    with pytest.raises(ConfigError, match="space"):
        qc.spaces.from_json(json.dumps({"name": "resnet"}))
    with pytest.raises(ConfigError, match="args"):
        qc.spaces.from_json(json.dumps({"name": "spaceevo", "args": {"colour": 3}}))
    good = json.loads(digits_hyperspace().from_encoding("111111-000000").to_json())
    good["encoding"] = "222222-000000"  # disagrees with its args
    with pytest.raises(ConfigError, match="encoding"):
        qc.spaces.from_json(json.dumps(good))
    with pytest.raises(ConfigError, match=r"widths\[1\]"):
        qc.spaces.spaceevo(widths=[(16, 32), (8, 16), (64, 80), (112,), (144,), (240,), (320,)])


def test_elastic_stem_and_residual_stem_widths_can_differ():
    """The residual-stem stage follows an elastic stem: with stem 8 and stage width 16 (or the reverse)
    a residual add would mismatch, so block 0 of a stage whose input width is searched separately has none."""
    import torch

    space = digits_hyperspace().from_encoding("111111-000000").build()
    net = space.build_supernet().eval()
    assert not net.stages[0].blocks[0].residual
    cfg = space.largest()
    for stem, first in ((8, 16), (16, 8), (16, 16)):
        c = cfg.__class__(**{**cfg.__dict__, "widths": (stem, first, *cfg.widths[2:])})
        qc.set_active(net, c)
        assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_probe_space_holds_every_candidates_stages():
    """`Hyperspace.probe_space(block)`: `block` in every Stage1-6 over each stage's whole width range, 8-bit or
    float layers; every candidate with that block at a stage has its stage widths inside the probe's."""
    h = digits_hyperspace()
    p = h.probe_space("fused_se")
    assert p.args["blocks"] == ["bottleneck", *["fused_se"] * 6]
    assert [tuple(w) for w in p.args["widths"][1:]] == [st.widths for st in h.stages]
    assert tuple(p.args["bit_choices"]) == (8, 32) and p.args["dropout"] == 0.0
    cand = h.from_encoding("555555-113333")
    for s in range(6):
        assert set(cand.stage_widths(s)) <= set(p.args["widths"][s + 1])
    assert list(h.probe_space("mbv1", resolutions=(16,)).args["resolutions"]) == [16]
    with pytest.raises(ConfigError, match="block"):
        h.probe_space("resnet")
