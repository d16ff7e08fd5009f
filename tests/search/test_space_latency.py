"""Q-T latency from our INT8 kernels (`search/space_latency.py`): the per-stage prices the scorer memoises add
up to the kernel costs of the subnet's own `kernel_workloads` (an independent path: the candidate's own
space, one dry walk over the whole subnet), for several block types; pooled kernel costs; the caches."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest

import qcompile.search as qs
from qcompile import ConfigError
from qcompile.search.latency.workloads import workload_key
from qcompile.search.space_evolution import QTScorer, latency_model, subnet_config
from qcompile.search.space_latency import (
    KernelCosts,
    KernelLatencyModel,
    TimingSettings,
    costs_key,
    group_part,
    structural_groups,
)
from qcompile.spaces.hyperspace import Hyperspace, HyperStage
from tests.search.spaceevo_helpers import synthetic_table

ALL_BLOCKS = ("mbv1", "mbv2", "mbv3", "bottleneck", "bottleneck_se", "fused", "fused_se")


def _hyper(blocks) -> Hyperspace:
    # two widths per stage, one window: a stage has 2 table entries x 2 input widths to price
    stages = tuple(HyperStage((1,), s, (8, 16), 2) for s in (2, 1, 2, 1, 2, 1))
    return Hyperspace("tinylat", stages, first_widths=(8,), first_depths=(1,), stem_widths=(8,), kernels=(3,),
                      resolutions=(16,), num_classes=10, head_mix=16, blocks=blocks)


def _synthetic_costs(hyper: Hyperspace) -> KernelCosts:
    """Kernel costs without timing: every other kernel of one probe space's largest subnet gets a made-up cost
    (growing with its FLOPs feature), the rest come from the forest; a != 1, b != 0, c != 0."""
    from qcompile.search.latency.predictor import features

    space = hyper.probe_space(hyper.blocks[-1])
    kernels = {}
    for j, w in enumerate(qs.kernel_workloads(space, space.largest(bits=8))):
        if j % 2 == 0:
            kernels[workload_key(w)] = {"workload": w, "median_ms": 1e-3 + 1e-7 * features(w)[6]}
    costs = KernelCosts(kernels, {"scale": 1.3, "per_kernel_ms": 0.002, "per_call_ms": 0.05})
    return costs


def _scorer(blocks, cache_dir) -> QTScorer:
    h = _hyper(blocks)
    model = KernelLatencyModel(_synthetic_costs(h), "x86", 1, cache_dir=cache_dir, save_every=3)
    return QTScorer(synthetic_table(h, per_width=1), (0.2, 0.5), model, n_samples=40, top_k=3)


def _check_prices(sc: QTScorer, cands, subnets=(0, 17)) -> int:
    """The scorer's latency of sampled subnets against the kernel costs of the subnets' own kernel lists."""
    h = sc.hyper
    costs = sc.latency.costs
    checked = 0
    for cand in cands:
        picks, _, lat = sc.sample(cand)
        space = cand.build()
        for i in subnets:
            cfg = subnet_config(space, h, sc.rows(cand, picks, i))
            ws = [w for group in structural_groups(space, cfg, "x86").values() for w in group]
            ms = [costs.predictor.predict(w) if workload_key(w) not in costs.kernels
                  else costs.kernels[workload_key(w)]["median_ms"] for w in ws]
            want = 1.3 * sum(ms) + 0.002 * len(ws) + 0.05
            assert lat[i] == pytest.approx(want, rel=1e-9)
            assert sc.latency.predict(space, cfg) == pytest.approx(want, rel=1e-9)
            checked += 1
    return checked


@pytest.fixture(scope="module")
def kernel_scorer(tmp_path_factory):
    return _scorer(("mbv1", "mbv3", "bottleneck_se", "fused_se"), tmp_path_factory.mktemp("lat"))


@pytest.mark.slow  # dry lowerings: ~1 s each on a quiet core
def test_stage_prices_add_up_to_the_subnets_own_kernels(kernel_scorer):
    """Candidates mixing MBv1 (depthwise), MBv3 (SE, hard-swish LUT), bottleneck + SE and FusedMB + SE stages: the
    scorer's latency of a sampled subnet (memoised per stage entry and input width, priced on the block types'
    probe spaces) equals the kernel costs of `kernel_workloads(candidate space, subnet)` priced directly: each
    kernel's timed median or forest prediction, times a, plus b per kernel, plus c."""
    sc = kernel_scorer
    cand = sc.hyper.candidate(["mbv1", "mbv3", "bottleneck_se", "fused_se", "mbv3", "mbv1"], [0] * 6)
    other = sc.hyper.candidate(["fused_se", "bottleneck_se", "mbv1", "mbv3", "fused_se", "bottleneck_se"], [0] * 6)
    assert _check_prices(sc, [cand, other], subnets=(0, 17)) == 4
    costs = sc.latency.costs
    assert 0 < len(costs.kernels) < len(costs._ms)  # timed kernels looked up, others predicted: both occur


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("QCOMPILE_SPACEEVO_SWEEP"), reason="sweep: QCOMPILE_SPACEEVO_SWEEP=1")
def test_stage_prices_add_up_for_every_block_type(tmp_path):
    """The same for all seven block types of the hyperspace (Table 11) and a random candidate (minutes)."""
    sc = _scorer(ALL_BLOCKS, tmp_path)
    cands = [sc.hyper.candidate(list(ALL_BLOCKS[:6]), [0] * 6), sc.hyper.candidate(list(ALL_BLOCKS[1:]), [0] * 6),
             sc.hyper.random(random.Random(3))]
    assert _check_prices(sc, cands, subnets=(3,)) == 3


@pytest.mark.slow
def test_kernel_lists_are_cached_and_reused(kernel_scorer):
    """The kernel lists are written to JSON shards; a new model over the same cache prices a block type without a
    single dry walk, with equal prices."""
    sc = kernel_scorer
    sc._stage_data(1, "mbv3")
    sc.latency.flush()
    shards = sorted((sc.latency.cache_dir / "kernels").glob("*.json"))
    assert shards and all(json.loads(p.read_text())["configs"] for p in shards)
    again = KernelLatencyModel(sc.latency.costs, "x86", 1, cache_dir=sc.latency.cache_dir)
    sc2 = QTScorer(sc.table, sc.constraints, again, n_samples=40, top_k=3)
    for s in range(1, 7):
        np.testing.assert_array_equal(sc2._stage_data(s, "mbv3").lat, sc._stage_data(s, "mbv3").lat)
    assert again.dry_walks == 0
    assert not np.isnan(sc2._stage_data(6, "mbv3").lat).any()


def test_pooled_costs_take_the_median_of_all_samples():
    class T:
        def __init__(self, kernels):
            self.kernels = kernels

    w1 = {"op": "add", "strategy": "topi", "shapes": [[1, 8, 4, 4]] * 2, "out_shape": [1, 8, 4, 4]}
    w2 = dict(w1, shapes=[[1, 16, 4, 4]] * 2, out_shape=[1, 16, 4, 4])
    k1, k2 = workload_key(w1), workload_key(w2)
    a = T({k1: {"workload": w1, "samples_ms": [1.0, 2.0, 9.0]}, k2: {"workload": w2, "samples_ms": [4.0]}})
    b = T({k1: {"workload": w1, "samples_ms": [3.0, 4.0]}})
    costs = KernelCosts.pool([a, b])
    assert costs.kernel_ms(w1) == 3.0 and costs.kernel_ms(w2) == 4.0
    assert costs.network_ms([w1, w2, w1]) == 10.0  # a = 1, b = c = 0 before a fit
    # timed in rounds by every table: rmin over the pooled rounds (median of per-round minima 1, 5, 3)
    a = T({k1: {"workload": w1, "samples_ms": [1.0, 2.0, 5.0], "rounds_ms": [[1.0, 2.0], [5.0]]}})
    b = T({k1: {"workload": w1, "samples_ms": [3.0, 4.0], "rounds_ms": [[3.0, 4.0]]}})
    assert KernelCosts.pool([a, b]).kernel_ms(w1) == 3.0
    # one burst table among them: the median of all samples (1, 2, 5, 9, 10), not the rounds of `a` alone
    c = T({k1: {"workload": w1, "samples_ms": [9.0, 10.0]}})
    assert KernelCosts.pool([a, c]).kernel_ms(w1) == 5.0 and KernelCosts.pool([c, a]).kernel_ms(w1) == 5.0


def test_group_parts():
    assert group_part("stem") == "fixed" and group_part((0, 1)) == "fixed"
    assert group_part((3, 0)) == "stage3" and group_part("head") == "head"


def test_latency_kind_is_checked():
    with pytest.raises(ConfigError, match="latency"):
        latency_model("x86", "flops")
    with pytest.raises(ConfigError, match="cache_dir"):
        latency_model("x86", "kernels")
    assert "stand-in" in latency_model("x86", "mac").describe()


def test_the_kernel_costs_key_survives_its_file(tmp_path):
    """`kernel_costs.json` is reused only when its stored key equals the wanted one: the key read back from the
    file equals a freshly computed key (tuples in the settings included), and another setting does not."""
    key = costs_key({"mbv1": "ab12"}, TimingSettings(bits=(4, 8)), "x86")
    path = tmp_path / "kernel_costs.json"
    path.write_text(json.dumps({"key": key}))
    assert json.loads(path.read_text())["key"] == costs_key({"mbv1": "ab12"}, TimingSettings(bits=(4, 8)), "x86")
    assert json.loads(path.read_text())["key"] != costs_key({"mbv1": "ab12"}, TimingSettings(bits=(8,)), "x86")
