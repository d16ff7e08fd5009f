"""Block-wise distillation (SpaceEvo Sec. 3.3, App. C.3): NSR loss, elastic stage students, lookup table keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qcompile import ConfigError
from qcompile.quant import LSQ
from qcompile.search.cost import layers
from qcompile.spaces.hyperspace import digits_hyperspace
from qcompile.train.blockwise import (
    BKDSettings,
    ElasticStageTrainer,
    LookupTable,
    Teacher,
    build_or_load_table,
    nsr_loss,
    table_key,
)
from tests.search.spaceevo_helpers import synthetic_table


def test_nsr_loss_matches_eq3_in_numpy():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(4, 3, 5, 5)) * np.array([1.0, 2.0, 0.5])[None, :, None, None]
    f = y + rng.normal(size=y.shape) * 0.3
    var = y.var(axis=(0, 2, 3))
    want = np.mean([((y[:, c] - f[:, c]) ** 2).mean() / var[c] for c in range(3)])
    got = nsr_loss(torch.tensor(f), torch.tensor(y), torch.tensor(var))
    assert float(got) == pytest.approx(want, rel=1e-12)


@pytest.fixture(scope="module")
def stage_data():
    torch.manual_seed(0)
    h = digits_hyperspace()
    teacher = Teacher(h).eval()
    x = torch.randn(96, 3, 16, 16)
    with torch.no_grad():
        feats = teacher.features(x)
    return h, teacher, feats


def test_teacher_splits_at_the_hyperspace_strides(stage_data):
    h, teacher, feats = stage_data
    assert [f.shape[1] for f in feats] == teacher.widths == [16, 16, 32, 48, 72, 96, 152, 224]
    assert [f.shape[-1] for f in feats] == [8, 8, 4, 2, 1, 1, 1, 1]  # 16 px input, strides 2,1,2,2,2,1,2,1


def test_elastic_stage_learns_its_teacher_stage_in_int8(stage_data):
    h, teacher, feats = stage_data
    s = 2
    tr = ElasticStageTrainer(h, s, "mbv2", teacher.widths, seed=0)
    x, y = feats[s][:64], feats[s + 1][:64]
    xv, yv = feats[s][64:], feats[s + 1][64:]
    var = y.var(dim=(0, 2, 3)).clamp_min(1e-6)
    settings = BKDSettings(float_epochs=6, int8_epochs=2, batch_size=32, lr=1e-2)
    big, small = tr.largest(), tr.smallest()
    before = tr.measure(big, x, x, y, var, settings)
    curve = tr.fit(x, y, var, settings)
    after = tr.measure(big, x, x, y, var, settings)
    assert len(curve) == 8 and curve[-1] < curve[0]
    assert after < 0.7 * before, (before, after)
    assert np.isfinite(tr.measure(small, x, xv, yv, var, settings))
    # INT8 with qcompile's quantizers: 8-bit LSQ on every stage conv, adapters float
    import qcompile as qc

    qc.set_active(tr.gm, tr.config(big, int8=True))
    lsq = {n: m for n, m in tr.gm.named_modules() if isinstance(m, LSQ)}
    assert lsq and all(m.active_bits == 8 for m in lsq.values())
    assert all(n.startswith("stage.") for n in lsq)
    assert tr.gm.adapt_out.weight_quant is None


def test_stage_configs_follow_the_arch(stage_data):
    h, teacher, _ = stage_data
    tr = ElasticStageTrainer(h, 4, "fused", teacher.widths, seed=0)
    import random

    arch = tr.random_arch(random.Random(0), width=72)
    cfg = tr.config(arch, int8=False)
    k = tr.probe.config_stages.index(4)
    assert cfg.widths[k + 1] == 72 and cfg.depths[k] == arch.depth and cfg.policy is None
    assert tr.config(arch, int8=True).policy.bits[0] == (8, 8)
    stage4 = [x for x in layers(tr.probe, cfg) if x.name.startswith("stages.4.")]
    assert stage4[0].in_ch == tr.stage_in == max(h.stages[2].widths)
    assert stage4[-1].out_ch == 72


def test_table_round_trip_and_key_refusal(tmp_path):
    h = digits_hyperspace()
    settings = BKDSettings()
    table = synthetic_table(h)
    table.key = table_key(h, "digits", 0, settings)
    path = table.save(tmp_path / "table.json")
    back = LookupTable.load(path, expect_key=table_key(h, "digits", 0, settings))
    assert back.entries == table.entries and back.hyper == h
    # reused as is (no training: this returns at once)
    again = build_or_load_table(path, h, "digits", seed=0, settings=settings)
    assert again.entries == table.entries
    with pytest.raises(ConfigError, match="'seed'"):
        build_or_load_table(path, h, "digits", seed=1, settings=settings)
    with pytest.raises(ConfigError, match="'data'"):
        LookupTable.load(path, expect_key=table_key(h, "cifar10", 0, settings))
    with pytest.raises(ConfigError, match="'settings'"):
        build_or_load_table(path, h, "digits", seed=0, settings=BKDSettings(float_epochs=3))
    with pytest.raises(ConfigError, match="'hyperspace'"):
        LookupTable.load(path, expect_key=table_key(digits_hyperspace(resolution=24), "digits", 0, settings))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="bad.json"):
        LookupTable.load(tmp_path / "bad.json")


@pytest.mark.parametrize("field,value", [("float_epochs", -1), ("batch_size", 0), ("lr", 2.0), ("archs_per_stage", 0)])
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        BKDSettings(**{field: value})
