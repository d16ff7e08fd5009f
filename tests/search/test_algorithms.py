"""Search algorithms on a deterministic synthetic predictor (tests/search/synthetic.py): seconds each."""

import numpy as np
import pytest

import qcompile as qc
import qcompile.search as qs
from qcompile.errors import ConfigError
from qcompile.search.result import nondominated

from .synthetic import SyntheticPredictor


@pytest.fixture(scope="module")
def space():
    return qc.spaces.mobilenet_v3(num_classes=10, width_mult=0.35, resolutions=(24, 32))


@pytest.fixture(scope="module")
def objs(space):
    return qs.objectives.accuracy(SyntheticPredictor(space)), qs.objectives.bitops(space)


def _policy_bits(cfg):
    return {b for pair in cfg.policy.bits for b in pair}


@pytest.mark.parametrize("algo", [qs.nsga2, qs.random_search, qs.coarse_to_fine])
def test_cap_bits_canonical_and_pareto(space, objs, algo):
    res = algo(space, list(objs), n_evals=137, seed=3, bits=(2, 4))
    assert res.n_evals == 137 and len(set(res.configs)) == 137  # hard cap, each config once
    assert all(_policy_bits(c) <= {2, 4} and space.canonical(c) == c for c in res.configs)
    # F in own units and directions: recompute with the objectives themselves
    assert np.allclose(res.F[:, 0], objs[0](res.configs)) and np.allclose(res.F[:, 1], objs[1](res.configs))
    # Pareto set against brute force over every evaluation (accuracy max, bitops min)
    F = res.F
    brute = [i for i in range(len(F)) if not any(
        F[j, 0] >= F[i, 0] and F[j, 1] <= F[i, 1] and (F[j, 0] > F[i, 0] or F[j, 1] < F[i, 1]) for j in range(len(F)))]
    assert sorted(res.pareto_indices) == brute
    assert res.best == res.configs[max(brute, key=lambda i: F[i, 0])]


def test_nsga2_same_seed_same_result(space, objs):
    a = qs.nsga2(space, list(objs), n_evals=300, seed=1)
    b = qs.nsga2(space, list(objs), n_evals=300, seed=1)
    c = qs.nsga2(space, list(objs), n_evals=300, seed=2)
    assert a.configs == b.configs and np.array_equal(a.F, b.F)
    assert a.configs != c.configs
    assert a.options["pop_size"] == 15  # n_evals // 20
    assert qs.NSGA2Options().resolved(2000, 100).pop_size == 100


def test_nsga2_beats_random_search(space, objs):
    wins = 0
    for seed in range(3):
        n = qs.nsga2(space, list(objs), n_evals=400, seed=seed)
        r = qs.random_search(space, list(objs), n_evals=400, seed=seed)
        ref = [0.5, 1.2 * max(n.F[:, 1].max(), r.F[:, 1].max())]
        wins += n.hypervolume(ref) > r.hypervolume(ref)
    assert wins == 3


def test_nsga2_respects_constraints(space, objs):
    acc, bops = objs
    res = qs.nsga2(space, [acc, bops], n_evals=200, seed=0, constraints=[(bops, 2.5e7)])
    assert res.G.shape == (200, 1)
    assert all(bops([c])[0] <= 2.5e7 for c in res.pareto) and len(res.pareto) > 0


def test_evolution_constrained(space, objs):
    acc, bops = objs
    limit = 2.0e7
    res = qs.evolution(space, acc, constraints=[(bops, limit)], n_evals=250, seed=0)
    assert res.n_evals == 250
    assert (res.G[:, 0] <= limit).all()  # every candidate screened before evaluation
    assert bops([res.best])[0] <= limit
    assert res.F[res.best_index, 0] == res.F[:, 0].max()
    # evolution improves on its random initial population (APQ)
    assert res.F[:, 0].max() > res.F[res.generation == 0, 0].max()
    same = qs.evolution(space, acc, constraints=[(bops, limit)], n_evals=250, seed=0)
    assert same.configs == res.configs
    smallest = bops([space.smallest(bits=2)])[0]
    with pytest.raises(ConfigError, match="unreachable"):
        qs.evolution(space, acc, constraints=[(bops, smallest * 0.9)], n_evals=50)
    # barely reachable: only the extremes are feasible at first; best still meets the limit
    tight = qs.evolution(space, acc, constraints=[(bops, smallest)], n_evals=20, seed=0, max_tries=5)
    assert bops([tight.best])[0] <= smallest


def test_coarse_to_fine_stages(space, objs):
    res = qs.coarse_to_fine(space, list(objs), n_evals=200, seed=0)
    coarse = [c for c, g in zip(res.configs, res.generation) if g == 0]
    fine = [c for c, g in zip(res.configs, res.generation) if g > 0]
    assert len(coarse) == 100 and len(fine) == 100
    assert all(len(_policy_bits(c)) == 1 for c in coarse)  # one bit-width per coarse candidate
    skeletons = {(c.resolution, c.depths) for c in coarse}
    assert all((c.resolution, c.depths) in skeletons for c in fine)  # fine keeps coarse skeletons
    assert res.hypervolume() > res.hypervolume(upto=0)


@pytest.mark.parametrize("call, match", [
    (lambda s, o: qs.nsga2(s, [], n_evals=10), "objectives"),
    (lambda s, o: qs.nsga2(s, list(o), n_evals=0), "n_evals"),
    (lambda s, o: qs.nsga2(s, list(o), n_evals="10"), "n_evals"),
    (lambda s, o: qs.nsga2(s, list(o), n_evals=10, bits=(5,)), "bits"),
    (lambda s, o: qs.nsga2(s, ["accuracy"], n_evals=10), "objectives"),
    (lambda s, o: qs.nsga2(s, [o[0], o[0]], n_evals=10), "distinct"),
    (lambda s, o: qs.nsga2(s, list(o), n_evals=10, pop=5), "option"),
    (lambda s, o: qs.random_search(s, list(o), n_evals=10, seed=1.5), "seed"),
    (lambda s, o: qs.evolution(s, o[0], constraints=[("bitops", 1)], n_evals=10), "constraints"),
    (lambda s, o: qs.evolution(s, o[0], n_evals=10, parents=200), "parents"),
    (lambda s, o: qs.objectives.accuracy(object()), "predict"),
])
def test_bad_input(space, objs, call, match):
    with pytest.raises(ConfigError, match=match):
        call(space, objs)


def test_float_search_without_bits(space, objs):
    res = qs.random_search(space, [qs.objectives.qfa_flops(space)], n_evals=20, seed=0, bits=None)
    assert all(c.policy is None for c in res.configs)
    assert nondominated(res.Fmin).sum() >= 1


def test_max_direction_constraint(space, objs):
    acc, bops = objs
    floor = float(np.median(acc([space.sample(seed=s, bits=(2, 3, 4)) for s in range(20)])))
    res = qs.coarse_to_fine(space, [bops], n_evals=120, seed=0, constraints=[(acc, floor)])
    assert (res.G[:, 0] >= floor).all()  # screened before evaluation
    assert acc([res.best])[0] >= floor and res.F[res.best_index, 0] == res.F[:, 0].min()
    with pytest.raises(ConfigError, match="unreachable"):
        qs.random_search(space, [bops], n_evals=10, constraints=[(acc, 5.0)])


@pytest.mark.parametrize("call, match", [
    (lambda s, o: qs.nsga2(s, list(o), n_evals=10, crossover_prob=1.5), "crossover_prob.*probability"),
    (lambda s, o: qs.nsga2(s, list(o), n_evals=10, max_stall=0), "max_stall.*integer >= 1"),
    (lambda s, o: qs.coarse_to_fine(s, list(o), n_evals=10, perturb_prob=0.0), "perturb_prob.*fraction"),
    (lambda s, o: qs.coarse_to_fine(s, list(o), n_evals=10, pop=5), "coarse_to_fine option 'pop'"),
    (lambda s, o: qs.evolution(s, o[0], n_evals=10, mutation_prob=-0.1), "mutation_prob.*probability"),
    (lambda s, o: qs.evolution(s, o[0], n_evals=10, pop=5), "evolution option 'pop'"),
    (lambda s, o: qs.random_search(s, list(o), n_evals=10, batch=0), "batch.*integer >= 1"),
])
def test_bad_options_share_one_check(space, objs, call, match):
    """Every algorithm's options go through `SearchOptions`: one message per kind of field."""
    with pytest.raises(ConfigError, match=match):
        call(space, objs)
