"""SpaceEvo search: Q-T score (Eq. 2) against direct computations, aging evolution (Algorithm 1) properties."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

import qcompile as qc
import qcompile.search as qs
from qcompile import ConfigError
from qcompile.search.cost import layers
from qcompile.search.space_evolution import (
    EvolutionSettings,
    MacLatencyModel,
    QTScorer,
    aging_evolution,
    random_search_spaces,
    subnet_config,
)
from qcompile.spaces.hyperspace import Hyperspace, HyperStage, digits_hyperspace
from qcompile.train.blockwise import LookupTable
from tests.search.spaceevo_helpers import synthetic_table


@pytest.fixture(scope="module")
def scorer():
    h = digits_hyperspace()
    return QTScorer(synthetic_table(h), (0.2, 0.3, 0.5), MacLatencyModel(), n_samples=300, top_k=10)


def test_stage_latency_sum_equals_full_subnet_prediction(scorer):
    """The per-stage precomputed latency of a sampled subnet equals the model's prediction from the
    subnet's full layer list (`layers` of the candidate's own StagedSpace)."""
    h = scorer.hyper
    rng = random.Random(1)
    for _ in range(3):
        cand = h.random(rng)
        picks, loss, lat = scorer.sample(cand)
        space = cand.build()
        for i in (0, 7, 123):
            rows = scorer.rows(cand, picks, i)
            cfg = subnet_config(space, h, rows)
            assert lat[i] == pytest.approx(scorer.latency.predict(space, cfg), rel=1e-9)
            assert loss[i] == pytest.approx(sum(r["nsr"] for r in rows))
            for s, r in enumerate(rows):
                assert r["width"] in cand.stage_widths(s)


class _ResidualHead(MacLatencyModel):
    """The MAC model plus a head cost that, as in our INT8 kernel lists, depends on whether the last stage's
    first block keeps a residual add (its input width equals its output width)."""

    def part_ms(self, space, cfg):
        parts = super().part_ms(space, cfg)
        k = space.config_stages.index(max(space.config_stages))
        parts["head"] = parts.get("head", 0.0) + (0.01 if cfg.widths[k] == cfg.widths[k + 1] else 0.0)
        return parts

    def predict(self, space, cfg):
        return float(sum(self.part_ms(space, cfg).values()))


@pytest.mark.parametrize("input_widths", ["all", "ends"])
def test_head_memo_depends_on_the_last_stage_input_width(input_widths):
    """A head whose cost depends on the last stage's input width (residual or not) is memoised per input width:
    sampled subnets cost exactly the model's prediction of the whole subnet, residual and not ("ends" too: the
    residual width of a stride-1 stage is priced, the others share the non-residual head)."""
    h = digits_hyperspace()
    sc = QTScorer(synthetic_table(h, per_width=1), (0.3,), _ResidualHead(), n_samples=400,
                  input_widths=input_widths)
    cand = h.candidate(["mbv3"] * 6, [0, 0, 0, 0, 3, 0])  # Stage5 and Stage6 windows share width 152
    picks, _, lat = sc.sample(cand)
    space = cand.build()
    k = space.config_stages.index(6)
    seen = set()
    for i in range(400):
        cfg = subnet_config(space, h, sc.rows(cand, picks, i))
        residual = cfg.widths[k] == cfg.widths[k + 1]
        if residual in seen:
            continue
        seen.add(residual)
        head = sc._head("mbv3", int(picks[-1][i]), h.stages[4].widths.index(cfg.widths[k]))
        assert head == pytest.approx(sc.latency.part_ms(space, cfg)["head"], rel=1e-12)
        if input_widths == "all":
            assert lat[i] == pytest.approx(sc.latency.predict(space, cfg), rel=1e-9)
    assert seen == {True, False}


def test_qt_score_single_subnet_space_by_hand():
    """A table with one entry per (stage, block) makes every sampled subnet the same: Eq. 2 is then
    1/loss for each constraint its latency meets and 0 otherwise (latency from `layers(space, cfg)` by hand)."""
    h = digits_hyperspace()
    cand = h.from_encoding("111111-000000")
    rows = {}
    for s, _st in enumerate(h.stages, start=1):
        w = cand.stage_widths(s - 1)[0]
        rows[s] = {b: [{"width": w, "depth": 1, "kernels": [3], "expands": [4 if b in ("mbv2", "mbv3") else 1],
                        "nsr": 0.1 * s}] for b in h.blocks}
    table = LookupTable({"hyperspace": h.to_dict(), "data": "hand"}, rows, {})
    space = cand.build()
    cfg = subnet_config(space, h, [rows[s]["mbv2"][0] for s in range(1, 7)])
    model = MacLatencyModel()
    ms = sum(model.layer_ms(layer) for layer in layers(space, cfg))
    loss = sum(0.1 * s for s in range(1, 7))
    sc = QTScorer(table, (ms * 0.99, ms * 1.01, ms * 2), model, n_samples=50, top_k=5)
    assert sc.per_constraint(cand) == pytest.approx([0.0, 1 / loss, 1 / loss])
    assert sc.score(cand) == pytest.approx(2 / loss)


def test_qt_score_is_top_k_mean_under_each_constraint(scorer):
    cand = scorer.hyper.from_encoding("151122-023231")
    _, loss, lat = scorer.sample(cand)
    acc = 1 / loss
    want = []
    for t in scorer.constraints:
        ok = sorted(acc[lat < t], reverse=True)[: scorer.top_k]
        want.append(np.mean(ok) if ok else 0.0)
    assert scorer.per_constraint(cand) == pytest.approx(want)
    assert scorer.score(cand) == pytest.approx(sum(want))
    assert sum(want) > 0


def test_evolution_is_bounded_deduplicated_and_seeded(scorer):
    st = EvolutionSettings(n_spaces=61, population=10, sample=3, seed=4)
    a = aging_evolution(scorer, st)
    b = aging_evolution(scorer, st)
    encs = [x["encoding"] for x in a.history]
    assert len(encs) == 61 and len(set(encs)) == 61
    assert a.history == b.history
    assert {x["origin"] for x in a.history[10:]} <= {"block", "width", "fill"}
    c = aging_evolution(scorer, EvolutionSettings(n_spaces=61, population=10, sample=3, seed=5))
    assert [x["encoding"] for x in c.history] != encs


def test_children_are_one_stage_mutations_of_a_population_member(scorer):
    res = aging_evolution(scorer, EvolutionSettings(n_spaces=40, population=10, sample=3, seed=0))
    h = scorer.hyper
    known = [h.from_encoding(x["encoding"]) for x in res.history]
    for i, x in enumerate(res.history[10:], start=10):
        child = known[i]
        diffs = []
        for p in known[:i]:
            db = sum(a != b for a, b in zip(p.block_ids, child.block_ids))
            dw = sum(a != b for a, b in zip(p.windows, child.windows))
            diffs.append((db, dw))
        if x["origin"] == "block":
            assert (1, 0) in diffs
        elif x["origin"] == "width":
            assert (0, 1) in diffs


def test_resume_equals_uninterrupted_run(scorer, tmp_path):
    st = EvolutionSettings(n_spaces=50, population=10, sample=3, seed=2)
    full = aging_evolution(scorer, st)
    path = tmp_path / "state.json"
    part = aging_evolution(scorer, st, state_path=path, stop_after_cycles=7)
    assert len(part.history) == 10 + 14
    doc = json.loads(path.read_text())
    assert doc["cycle"] == 7 and len(doc["history"]) == 24
    rest = aging_evolution(scorer, st, state_path=path, resume=True)
    assert rest.history == full.history
    other = EvolutionSettings(n_spaces=50, population=10, sample=3, seed=3)
    with pytest.raises(ConfigError, match="settings"):
        aging_evolution(scorer, other, state_path=path, resume=True)


def _tiny_hyper() -> Hyperspace:
    stages = tuple(HyperStage((1,), s, (16, 24), 2) for s in (2, 2, 2, 1, 2, 1))  # one window each
    return Hyperspace("tiny2", stages, first_widths=(8,), first_depths=(1,), stem_widths=(8,), kernels=(3,),
                      resolutions=(16,), num_classes=10, head_mix=32, blocks=("mbv1", "fused"))


def test_no_stall_when_children_are_known():
    """64 spaces in all (2 blocks ^ 6 stages, one window): asking for all 64 must evaluate each once,
    although late in the run both children of every parent are already known."""
    h = _tiny_hyper()
    sc = QTScorer(synthetic_table(h, per_width=1), (0.1, 1.0), n_samples=20, top_k=3)
    res = aging_evolution(sc, EvolutionSettings(n_spaces=64, population=8, sample=2, seed=0))
    assert len({x["encoding"] for x in res.history}) == 64 and not res.exhausted
    assert any(x["origin"] == "fill" for x in res.history)
    rnd = random_search_spaces(sc, 64, seed=0)
    assert len({x["encoding"] for x in rnd.history}) == 64
    with pytest.raises(ConfigError, match="n_spaces"):
        qs.evolve_space((0.1, 1.0), table=synthetic_table(h, per_width=1), n_spaces=65, latency_kind="mac")


def test_evolution_beats_random_search_on_most_seeds(scorer):
    """Acceptance (small version, synthetic table): best Q-T of aging evolution > random search at the
    same number of evaluated spaces on >= 4 of 5 seeds (benchmarks/spaceevo.py runs 20 seeds on the
    block-wise table)."""
    wins = 0
    for seed in range(5):
        e = aging_evolution(scorer, EvolutionSettings(n_spaces=150, population=15, sample=4, seed=seed))
        r = random_search_spaces(scorer, 150, seed=seed)
        wins += e.best["score"] > r.best["score"]
    assert wins >= 4


def test_evolve_space_returns_a_space_with_json_and_history():
    h = digits_hyperspace()
    space = qs.evolve_space((0.2, 0.3, 0.5), table=synthetic_table(h), n_spaces=40, seed=0, n_samples=200,
                            latency_kind="mac")
    back = qc.spaces.from_json(space.to_json())
    assert back.spec() == space.spec()
    assert json.loads(space.to_json())["encoding"] == space.candidate.encoding
    assert space.qt_score == max(x["score"] for x in space.history.history)
    assert len(space.history.history) == 40
    cfg = space.sample(seed=0, bits=(8,))
    space.validate(cfg)
    by_cycles = qs.evolve_space((0.2, 0.3, 0.5), table=synthetic_table(h), cycles=6, seed=0, n_samples=200,
                               latency_kind="mac")
    assert len(by_cycles.history.history) == 4 + 2 * 6


def test_bad_constraints_and_settings():
    h = digits_hyperspace()
    with pytest.raises(ConfigError, match="constraints"):
        QTScorer(synthetic_table(h), ())
    with pytest.raises(ConfigError, match="constraints"):
        QTScorer(synthetic_table(h), (0.2, -1))
    with pytest.raises(ConfigError, match="sample"):
        EvolutionSettings(n_spaces=10, population=5, sample=6)
    with pytest.raises(ConfigError, match="target"):
        qs.latency_model("gpu")


def test_block_latency_chains_stage_pairs_into_few_subnets():
    """Every (entry, input width) pair of every stage is priced, each from a subnet in which that stage has that
    entry and input width, with close to the largest stage's pair count of priced subnets (not their sum)."""
    h = digits_hyperspace()
    table = synthetic_table(h, per_width=2)

    class Counting(MacLatencyModel):
        calls: list = []

        def part_ms(self, space, cfg):
            self.calls.append(cfg)
            return super().part_ms(space, cfg)

    model = Counting()
    sc = QTScorer(table, (0.3,), model, n_samples=10)
    sc._stage_data(1, "fused_se")
    pairs = {s: len(table.entries[s]["fused_se"]) * len(sc._prev_widths(s)) for s in range(1, 7)}
    assert max(pairs.values()) <= len(model.calls) <= 1.25 * max(pairs.values()) < sum(pairs.values())
    space = sc._probe("fused_se")
    for s in range(1, 7):
        sd = sc._stage_data(s, "fused_se")
        assert not np.isnan(sd.lat).any()
        rows = [dict(sc._largest_row(i, "fused_se")) for i in range(1, 7)]
        for i, j in ((0, 0), (len(sd.rows) - 1, len(sc._prev_widths(s)) - 1)):
            rs = list(rows)
            rs[s - 1] = sd.rows[i]
            if s > 1:
                rs[s - 2] = dict(rs[s - 2], width=sc._prev_widths(s)[j])
            want = MacLatencyModel().part_ms(space, subnet_config(space, h, rs))[f"stage{s}"]
            assert sd.lat[i, j] == pytest.approx(want, rel=1e-12)


def test_input_width_ends_interpolates_and_known_configs_are_reused():
    """`input_widths="ends"` prices the smallest and largest input width of each entry exactly (same as "all"), in
    stride-1 stages also the entry's own width (residual), and interpolates linearly in between; a model's
    already-priced subnets (`known_configs`) are reused, not priced again."""
    h = digits_hyperspace()
    table = synthetic_table(h, per_width=1)

    class Known(MacLatencyModel):
        def __init__(self, known=()):
            self.known, self.calls = list(known), []

        def part_ms(self, space, cfg):
            self.calls.append(cfg)
            return super().part_ms(space, cfg)

        def known_configs(self, space):
            return self.known

    exact = QTScorer(table, (0.3,), Known(), n_samples=10)
    first = Known()
    ends = QTScorer(table, (0.3,), first, n_samples=10, input_widths="ends")
    n_own = 0
    for s in range(1, 7):
        sd = exact._stage_data(s, "mbv3")
        a, b = sd.lat, ends._stage_data(s, "mbv3").lat
        np.testing.assert_allclose(b[:, [0, -1]], a[:, [0, -1]], rtol=1e-12)
        w = np.array(exact._prev_widths(s), dtype=float)
        for i, width in enumerate(sd.widths):
            for j in range(1, len(w) - 1):
                if w[j] == width and h.stages[s - 1].stride == 1:  # residual: priced exactly
                    assert b[i, j] == pytest.approx(a[i, j], rel=1e-12)
                    n_own += 1
                else:
                    t = (w[j] - w[0]) / (w[-1] - w[0])
                    assert b[i, j] == pytest.approx(b[i, 0] + (b[i, -1] - b[i, 0]) * t, rel=1e-12)
    assert n_own > 0
    assert len(first.calls) < len(exact.latency.calls)
    again = Known(first.calls)
    reuse = QTScorer(table, (0.3,), again, n_samples=10, input_widths="ends")
    for s in range(1, 7):
        np.testing.assert_allclose(reuse._stage_data(s, "mbv3").lat, ends._stage_data(s, "mbv3").lat, rtol=1e-12)
    assert all(any(c == k for k in first.calls) for c in again.calls)  # only known subnets were priced
    with pytest.raises(ConfigError, match="input_widths"):
        QTScorer(table, (0.3,), MacLatencyModel(), input_widths="some")
