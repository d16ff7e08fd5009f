"""SearchResult: Pareto set, hypervolume, best, save/load against independent references."""

import itertools
import json

import numpy as np
import pytest

import qcompile as qc
from qcompile.errors import ConfigError
from qcompile.search.result import ConstraintInfo, ObjectiveInfo, SearchResult, nondominated


@pytest.fixture(scope="module")
def space():
    return qc.spaces.mobilenet_v3(num_classes=10, width_mult=0.35, resolutions=(24, 32))


def _result(space, F, G=None, constraints=()):
    cfgs = [space.sample(seed=s, bits=(2, 3, 4)) for s in range(len(F))]
    objs = (ObjectiveInfo("accuracy", "max"), ObjectiveInfo("bitops", "min"))
    return SearchResult(cfgs, np.array(F, dtype=float), objs, constraints=constraints, G=G,
                        generation=np.arange(len(F)) // 2, algorithm="test", seed=0)


def _brute_pareto(F, directions):
    """Non-dominated rows by definition, written independently of `nondominated`."""
    out = []
    for i, a in enumerate(F):
        dominated = False
        for j, b in enumerate(F):
            if i == j:
                continue
            better_eq = all((bb >= aa) if d == "max" else (bb <= aa) for aa, bb, d in zip(a, b, directions))
            strictly = any((bb > aa) if d == "max" else (bb < aa) for aa, bb, d in zip(a, b, directions))
            dominated |= better_eq and strictly
        if not dominated:
            out.append(i)
    return out


def test_nondominated_matches_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(5):
        F = rng.integers(0, 6, size=(40, 2 + trial % 2)).astype(float)  # many ties
        assert sorted(np.flatnonzero(nondominated(F)).tolist()) == _brute_pareto(F, ["min"] * F.shape[1])


def test_hypervolume_hand_computed_2d(space):
    # (accuracy max, bitops min). A=(0.9,10), B=(0.8,5), C=(0.7,8) dominated by B, D=(0.4,1) beyond ref.
    res = _result(space, [[0.9, 10], [0.8, 5], [0.7, 8], [0.4, 1]])
    assert sorted(res.pareto_indices) == [0, 1, 3]
    assert res.pareto_indices[0] == 0  # best first on accuracy
    # ref (0.5, 20): A box 0.4 x 10 = 4, B box 0.3 x 15 = 4.5, overlap 0.3 x 10 = 3 -> 5.5; D adds nothing
    assert res.hypervolume([0.5, 20]) == pytest.approx(5.5)
    assert res.hypervolume([0.0, 20]) == pytest.approx(0.9 * 10 + 0.8 * 15 - 0.8 * 10 + 0.4 * 19 - 0.4 * 15)
    assert res.best == res.configs[0]
    with pytest.raises(ConfigError, match="ref_point"):
        res.hypervolume([0.5])


def test_pareto_matches_brute_force_and_constraints(space):
    rng = np.random.default_rng(1)
    F = np.column_stack([rng.random(30), rng.integers(1, 100, 30)])
    G = rng.random((30, 1))
    res = _result(space, F, G=G, constraints=(ConstraintInfo("latency", "min", 0.5, "ms"),))
    feas = np.flatnonzero(G[:, 0] <= 0.5)
    want = sorted(feas[_brute_pareto(F[feas], ["max", "min"])].tolist())
    assert sorted(res.pareto_indices) == want
    best = max(feas, key=lambda i: (F[i, 0], -F[i, 1]))
    assert res.best_index == best and G[best, 0] <= 0.5
    res_none = _result(space, F, G=G + 1.0, constraints=(ConstraintInfo("latency", "min", 0.5, "ms"),))
    with pytest.raises(ConfigError, match="best"):
        _ = res_none.best


def test_save_load_roundtrip(space, tmp_path):
    res = _result(space, [[0.9, 10], [0.8, 5], [0.7, 8], [0.85, 4], [0.6, 3]])
    res.save(tmp_path / "s")
    doc = json.loads((tmp_path / "s" / "search.json").read_text())
    assert len(doc["evaluations"]) == 5 and doc["seed"] == 0 and doc["ref_point"] is not None
    hv = [h["hypervolume"] for h in doc["hypervolume"]]
    assert len(hv) == 3 and all(b >= a for a, b in itertools.pairwise(hv))
    assert hv[-1] == pytest.approx(res.hypervolume())
    files = sorted((tmp_path / "s" / "pareto").glob("*.json"))
    assert [f.name for f in files] == [f"{k:03d}.json" for k in range(len(res.pareto))]
    assert [qc.SubnetConfig.from_json(f.read_text()) for f in files] == res.pareto
    assert (tmp_path / "s" / "pareto.png").stat().st_size > 1000
    back = SearchResult.load(tmp_path / "s")
    assert back.configs == res.configs and np.array_equal(back.F, res.F)
    assert back.pareto == res.pareto and back.best == res.best
    assert back.hypervolume([0.5, 20]) == pytest.approx(res.hypervolume([0.5, 20]))
