"""Standalone QAT of one fixed subnet (`train_standalone`) and the retraining-free benchmark's plumbing.

Micro setting: MobileNetV3 width 0.25 at 16x16 with depths {1, 2}, kernel 3, expands {3, 4}; 32 digits images,
batch 32 (one step per epoch), a recipe of one float and two quantized epochs.
"""

from __future__ import annotations

import json
import statistics

import pytest
import torch

import qcompile as qc
from qcompile.data import load_dataset
from qcompile.data.base import DatasetSplits
from qcompile.errors import CheckpointError, ConfigError
from qcompile.train import (
    FixedSubnetSpace,
    Phase,
    TrainConfig,
    evaluate_subnets,
    standalone_phases,
    train_standalone,
)
from tests.conftest import tiny_space

PHASES = [Phase("float", 1), Phase("q1", 1, bits=(2, 3, 4, 32)), Phase("q2", 1, bits=(2, 3, 4))]


@pytest.fixture(scope="module")
def micro():
    space = tiny_space("mobilenet_v3", resolutions=(16,), depths=(1, 2), kernels=(3,), expands=(3, 4))
    full = load_dataset("digits", resolution=16, in_channels=3)
    idx = torch.arange(32)
    data = DatasetSplits(full.train.subset(idx), full.val.subset(idx), full.test.subset(idx))
    cfg = space.smallest(bits=3)
    tcfg = TrainConfig(batch_size=32, seed=0, evaluate=False, progress=False)
    return space, data, cfg, tcfg


def _state(tr):
    return {k: v.clone() for k, v in tr.model.state_dict().items()}


def test_fixed_space_and_phases(micro):
    space, _, cfg, _ = micro
    fs = FixedSubnetSpace(space, cfg)
    assert fs.largest() == cfg.with_policy(None) and fs.smallest(bits=32) == cfg.with_policy(None)
    assert fs.largest(bits=4) == cfg and fs.sample(seed=5, bits=(2, 3)) == cfg  # the policy is fixed
    fs.validate(cfg)
    with pytest.raises(ConfigError, match="one architecture"):
        fs.validate(space.largest(bits=3))
    ph = standalone_phases(PHASES, cfg)
    assert [(p.name, p.epochs, p.bits, p.sampler, p.teacher) for p in ph] == [
        ("float", 1, None, "largest", "none"),
        ("q1", 1, (3,), "largest", "none"),
        ("q2", 1, (3,), "largest", "none"),
    ]
    with pytest.raises(ConfigError, match="policy"):
        standalone_phases(PHASES, cfg.with_policy(None))


def _init_state(space, seed: int) -> dict[str, torch.Tensor]:
    """The quantized supernet as `train_standalone` builds it before training (the `qcompile train` way)."""
    from qcompile.train.init import zero_init_residual_bn

    torch.manual_seed(seed)
    net = space.build_supernet()
    zero_init_residual_bn(net)
    gm = qc.quantize(qc.trace(net), weight_bits=[2, 3, 4, 8, 32], act_bits=[2, 3, 4, 8, 32])
    return {k: v.clone() for k, v in gm.state_dict().items()}


def test_trains_its_subnet_and_shares_the_float_phase_bit_identically(micro, tmp_path):
    space, data, cfg, tcfg = micro
    before = _init_state(space, tcfg.seed)
    whole = train_standalone(space, cfg, data, PHASES, tcfg)
    after = _state(whole)
    assert whole.global_step == 3
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # The weights of a block the smallest depth skips get no gradient (the graph still runs it, so its BN
    # statistics and lazily initialised LSQ steps move); the 3-bit LSQ steps train, the 2- and 4-bit ones not.
    skipped = f"stages.1.blocks.{cfg.depths[1]}."
    weights = {n for n, p in whole.model.named_parameters() if n.startswith(skipped) and ".steps." not in n}
    assert weights and not weights & changed
    assert "stages.1.blocks.0.units.0.conv.weight" in changed
    assert "stages.1.blocks.0.units.0.conv.weight_quant.steps.3" in changed
    assert not any(k.endswith(("weight_quant.steps.2", "weight_quant.steps.4")) for k in changed)

    # The float phase alone, checkpointed, then continued: the same run as the uninterrupted one.
    first = train_standalone(space, cfg, data, PHASES, tcfg, stop_after=1)
    assert first.global_step == 1 and first.phase_index == 1
    ckpt = first.save(tmp_path / "float")
    # Another init seed: the checkpoint must overwrite the init, RNG and optimiser state.
    rest = train_standalone(space, cfg, data, PHASES, tcfg, start=ckpt, init_seed=7)
    assert [h["loss"] for h in rest.history] == [h["loss"] for h in whole.history]
    b = _state(rest)
    assert all(torch.equal(after[k], b[k]) for k in after)

    first.batch_in_epoch = 1  # a checkpoint inside an epoch cannot start another policy's phases
    with pytest.raises(CheckpointError, match="phase boundary"):
        train_standalone(space, cfg, data, PHASES, tcfg, start=first.save(tmp_path / "mid"))
    with pytest.raises(CheckpointError, match="differ"):
        train_standalone(space, cfg, data, PHASES[1:], tcfg, start=ckpt)
    with pytest.raises(ConfigError, match="stop_after"):
        train_standalone(space, cfg, data, PHASES, tcfg, stop_after=4)


def test_benchmark_plumbing(micro, tmp_path, monkeypatch):
    import qcompile.train as qt
    from benchmarks import retraining_free as rf

    space, data, _, tcfg = micro
    mid = space.sample(seed=3)
    picks = rf.pick_subnets(space, [space.largest(bits=4), mid.with_policy(space.uniform_policy(2)), space.smallest()])
    assert picks == {"small": space.smallest(), "middle": space.canonical(mid), "large": space.largest()}
    subnets = {"small": picks["small"]}
    recipe = rf.Recipe(tuple(PHASES), tcfg.to_dict(), None)
    torch.manual_seed(0)
    qnet = qc.quantize(qc.trace(space.build_supernet()))
    kw = dict(seeds=[0], inits=["float"], out=tmp_path, calib_batches=1, progress=False)
    units = rf.run(space, qnet, data, recipe, subnets, bits=[3], **kw)
    assert sorted(units) == ["standalone-small-w3-float-s0", "supernet-seed0-small-w3"]
    sup = units["supernet-seed0-small-w3"]
    cfg3 = space.smallest(bits=3)
    assert sup["accuracy"] == evaluate_subnets(qnet, space, data, [cfg3], calib_batches=1)[0]
    assert sup["accuracy_by_calib_seed"][0] == sup["accuracy"] and len(sup["accuracy_by_calib_seed"]) == 3
    std = units["standalone-small-w3-float-s0"]
    assert std["steps"] == 3 and std["trained_float"] and [p["name"] for p in std["phases"]] == ["float", "q1", "q2"]
    assert [p.name for p in (tmp_path / "float").iterdir()] == ["small-s0"]
    on_disk = {f.stem: json.loads(f.read_text()) for f in (tmp_path / "units").glob("*.json")}
    assert on_disk == json.loads(json.dumps(units))

    # Resume: finished units are not rerun; a new bit-width starts from the stored float phase.
    calls = []
    orig = qt.train_standalone

    def spy(*a, **k):
        calls.append((k.get("stop_after"), k.get("start")))
        return orig(*a, **k)

    monkeypatch.setattr(qt, "train_standalone", spy)
    units = rf.run(space, qnet, data, recipe, subnets, bits=[3, 2], **kw)
    assert len(calls) == 1 and calls[0][0] is None and calls[0][1].parent == tmp_path / "float" / "small-s0"
    assert len(units) == 4 and not units["standalone-small-w2-float-s0"]["trained_float"]
    with pytest.raises(ConfigError, match="--init"):
        rf.run(space, qnet, data, recipe, subnets, bits=[3], seeds=[0], inits=["warm"], out=tmp_path)

    # A second supernet in the same OUT: its own units beside the first's; other architectures are refused.
    more = rf.run_supernet(space, qnet, data, subnets, bits=[3], out=tmp_path, calib_batches=1, label="seed1")
    assert more["supernet-seed1-small-w3"]["accuracy_by_calib_seed"] == sup["accuracy_by_calib_seed"]
    assert "| 3/3 | " in rf.summarize(more) and " (2) | seed0 " in rf.summarize(more)
    with pytest.raises(ConfigError, match="--pareto"):
        rf.run_supernet(space, qnet, data, {"small": space.largest()}, bits=[3], out=tmp_path, label="seed2")


def test_benchmark_summary_table():
    from scipy import stats

    from benchmarks import retraining_free as rf

    units = {}
    sup_accs = {"seed0": (0.95, 0.94, 0.96), "seed1": (0.93, 0.93, 0.92), "seed2": (0.96, 0.95, 0.95)}
    for label, by_calib in sup_accs.items():
        units[f"supernet-{label}"] = {
            "kind": "supernet",
            "supernet": label,
            "subnet": "middle",
            "bits": 3,
            "macs": 123,
            "accuracy": by_calib[0],
            "accuracy_by_calib_seed": list(by_calib),
            "cpu_s": 1.0,
            "load": [2.0, 0, 0],
        }
    for seed, acc in enumerate((0.90, 0.92, 0.97)):
        units[f"s{seed}"] = {
            "kind": "standalone",
            "subnet": "middle",
            "bits": 3,
            "init": "float",
            "seed": seed,
            "accuracy": acc,
            "cpu_s": 10.0,
            "float_phase_cpu_s": 4.0,
            "trained_float": True,
            "load": [3.0, 0, 0],
        }
    table = rf.summarize(units)
    row = next(r for r in table.splitlines() if r.startswith("| middle |"))
    sup, std = [95.0, 93.0, 96.0], [90.0, 92.0, 97.0]
    # Reference: scipy's Welch t-test (unequal variances) interval for the difference of means.
    ci = stats.ttest_ind(sup, std, equal_var=False).confidence_interval(0.95)
    d = statistics.fmean(sup) - statistics.fmean(std)
    assert rf.welch_interval(sup, std) == pytest.approx((d, ci.low, ci.high), rel=1e-9)
    assert row == (
        f"| middle | 123 | 3/3 | {statistics.fmean(sup):.1f} ± {statistics.stdev(sup):.1f} (3) "
        "| seed0 95.0 (95.0), seed1 93.0 (92.7), seed2 96.0 (95.3) | float "
        f"| {statistics.fmean(std):.1f} ± {statistics.stdev(std):.1f} (3) | s0 90.0, s1 92.0, s2 97.0 "
        f"| {d:+.1f} [{ci.low:+.1f}, {ci.high:+.1f}] | undecided |"
    )
    assert "CPU time 33 s" in table and "2.0-3.0" in table
    # The verdict on "within 1 point": decided only when the whole interval is on one side of -1.
    assert [rf.verdict(lo, hi) for lo, hi in ((-0.9, 2.0), (-3.0, -1.1), (-1.5, 0.5))] == ["yes", "no", "undecided"]
    assert rf.welch_interval([95.0], std)[1] != rf.welch_interval([95.0], std)[1]  # one supernet: no interval
    assert rf.welch_interval([95.0, 95.0], [94.0, 94.0]) == (1.0, 1.0, 1.0)


def test_benchmark_runs_of_one_recipe():
    from benchmarks import retraining_free as rf

    base = rf.Recipe(tuple(PHASES), TrainConfig(seed=0).to_dict(), None)
    # Another seed and other bookkeeping (checkpoints, progress, per-epoch validation) are the same recipe.
    other = rf.Recipe(tuple(PHASES), TrainConfig(seed=2, checkpoint_every=5, evaluate=False).to_dict(), None)
    base.check_same(other, "b")
    with pytest.raises(ConfigError, match="train.lr"):
        base.check_same(rf.Recipe(tuple(PHASES), TrainConfig(seed=0, lr=0.1).to_dict(), None), "c")
    with pytest.raises(ConfigError, match="phases"):
        base.check_same(rf.Recipe(tuple(PHASES[:2]), TrainConfig(seed=0).to_dict(), None), "d")
