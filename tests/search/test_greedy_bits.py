"""greedy_bits: Eq. 9 checked against exhaustive search on toys; the supernet side checked for side effects."""

import hashlib
import itertools

import numpy as np
import pytest
import torch

import qcompile as qc
import qcompile.search as qs
from qcompile import ConfigError
from qcompile.search.algorithms.greedy_bits import GreedyOptions, _minmax, greedy_search

BITS = (2, 3, 4)


def toy(n_layers, seed):
    """Additive loss (per layer and per side sensitivity x 2^-bits) and MAC-weighted BitOPs."""
    rng = np.random.RandomState(seed)
    sens = rng.uniform(0.0, 1.0, (n_layers, 2))
    macs = rng.randint(1, 10, n_layers).astype(float)

    def loss(p):
        return float(sum(sens[i, 0] * 2.0 ** -w + sens[i, 1] * 2.0 ** -a for i, (w, a) in enumerate(p)))

    def cost(p):
        return float(sum(macs[i] * w * a for i, (w, a) in enumerate(p)))

    return loss, cost


def all_policies(n):
    grid = list(itertools.product(BITS, repeat=n))
    return [tuple(zip(ws, as_)) for ws in grid for as_ in grid]


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("n_layers,seed", [(2, 0), (2, 1), (3, 2), (3, 3), (3, 4)])
def test_greedy_search_meets_budget_and_is_near_exhaustive(n_layers, seed, lazy):
    loss, cost = toy(n_layers, seed)
    pols = all_policies(n_layers)
    budget = cost(((3, 3),) * n_layers)  # the cost of uniform 3/3
    feasible = sorted(loss(p) for p in pols if cost(p) <= budget)
    got, hist = greedy_search(((4, 4),) * n_layers, range(n_layers), BITS, loss, cost, budget,
                              GreedyOptions(lazy=lazy))
    assert cost(got) <= budget
    assert hist and hist[-1]["cost"] == cost(got)
    rank = sum(v < loss(got) - 1e-12 for v in feasible) / len(feasible)
    # greedy is not exact, but on these separable toys it lands in the best 10 % of feasible policies
    # and never worse than uniform 3/3
    assert rank <= 0.10, (rank, loss(got), feasible[:5])
    assert loss(got) <= loss(((3, 3),) * n_layers) + 1e-12


def test_greedy_search_finds_the_exhaustive_optimum_when_one_side_is_free():
    # layer 0's weights cost a lot and do not matter; the optimum puts them at 2 bits, all else at 4
    def loss(p):
        return sum(2.0 ** -a for _, a in p) + 2.0 ** -p[1][0]

    def cost(p):
        return 100 * p[0][0] * p[0][1] + p[1][0] * p[1][1]

    budget = 100 * 2 * 4 + 16
    best = min((p for p in all_policies(2) if cost(p) <= budget), key=loss)
    got, _ = greedy_search(((4, 4), (4, 4)), [0, 1], BITS, loss, cost, budget, GreedyOptions(lazy=False))
    assert got == best == ((2, 4), (4, 4))


def test_greedy_search_bounded_and_reaches_cheapest():
    loss, cost = toy(3, 7)
    cheapest = cost(((2, 2),) * 3)
    got, hist = greedy_search(((4, 4),) * 3, range(3), BITS, loss, cost, cheapest, GreedyOptions(max_steps=2))
    assert got == ((2, 2),) * 3
    assert len(hist) <= 2 + 3 * 2 * 3 + 1


def test_minmax_constant_is_zero_not_nan():
    assert np.all(_minmax(np.array([3.0, 3.0, 3.0])) == 0)
    assert np.allclose(_minmax(np.array([1.0, 2.0, 3.0])), [0, 0.5, 1])


# ------------------------------------------------------------------------------------------------
# on a (tiny, untrained) quantized supernet
# ------------------------------------------------------------------------------------------------


def state_hash(m):
    h = hashlib.sha256()
    for k, v in sorted(m.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def bops_objective(space):
    return qs.Objective("bitops", lambda cfgs: np.array([qs.cost.bitops(space, c) for c in cfgs]), direction="min")


def batches_of(data, n=1, bs=48):
    return [b for _, b in zip(range(n), data.val.loader(bs, resolution=16))]


def test_quantize_keeps_the_space(tspace, tqnet):
    assert tqnet.space_info == tspace.to_dict()


def test_greedy_bits_meets_budget_and_leaves_qnet_unchanged(tspace, tqnet, tdigits):
    arch = tspace.smallest()
    bops = bops_objective(tspace)
    top = float(bops([arch.with_policy(tspace.uniform_policy(4))])[0])
    low = float(bops([arch.with_policy(tspace.uniform_policy(2))])[0])
    budget = low + 0.85 * (top - low)  # a few steps down from 4/4 (keeps the test fast)
    before = state_hash(tqnet)
    active_before = {n: getattr(m, "active_bits", None) for n, m in tqnet.named_modules()}
    cfg, hist = qs.greedy_bits(tqnet, arch, batches_of(tdigits), budget=budget, cost=bops, bits=BITS,
                               return_history=True, max_steps=40)
    assert len(hist) <= 40 + sum(tspace._active_layer_slots(arch)) * 2 * 3 + 1
    assert state_hash(tqnet) == before
    assert {n: getattr(m, "active_bits", None) for n, m in tqnet.named_modules()} == active_before
    assert isinstance(cfg, qc.SubnetConfig)
    tspace.validate(cfg)
    assert float(bops([cfg])[0]) <= budget
    assert (cfg.resolution, cfg.depths, cfg.kernels, cfg.expands) == (arch.resolution, arch.depths, arch.kernels,
                                                                      arch.expands)
    active = tspace._active_layer_slots(arch)
    assert all(w in BITS and a in BITS for (w, a), on in zip(cfg.policy.bits, active) if on)
    assert hist and hist[0]["cost"] < top and len(hist) >= 2


def test_greedy_bits_generous_budget_keeps_top_bits(tspace, tqnet, tdigits):
    arch = tspace.largest()
    cfg = qs.greedy_bits(tqnet, arch, batches_of(tdigits, 1), budget=1e15, cost=bops_objective(tspace), bits=BITS)
    assert all(p == (4, 4) for p in cfg.policy.bits)


def test_greedy_bits_errors(tspace, tqnet, tdigits):
    arch = tspace.largest()
    bops = bops_objective(tspace)
    b = batches_of(tdigits, 1)
    cheapest = float(bops([arch.with_policy(tspace.uniform_policy(2))])[0])
    with pytest.raises(ConfigError, match="budget"):
        qs.greedy_bits(tqnet, arch, b, budget=cheapest * 0.99, cost=bops, bits=BITS)
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="budget"):
            qs.greedy_bits(tqnet, arch, b, budget=bad, cost=bops, bits=BITS)
    acc = qs.Objective("acc", lambda cfgs: np.zeros(len(cfgs)), direction="max")
    with pytest.raises(ConfigError, match="direction"):
        qs.greedy_bits(tqnet, arch, b, budget=1e9, cost=acc, bits=BITS)
    with pytest.raises(ConfigError, match="bits"):
        qs.greedy_bits(tqnet, arch, b, budget=1e9, cost=bops, bits=(2, 5))
    with pytest.raises(ConfigError, match="space"):
        qs.greedy_bits(torch.nn.Linear(2, 2), arch, b, budget=1e9, cost=bops)
    with pytest.raises(ConfigError, match="labels"):
        qs.greedy_bits(tqnet, arch, [torch.zeros(2, 3, 16, 16)], budget=cheapest * 1.5, cost=bops)
    with pytest.raises(ConfigError, match="lam"):
        qs.greedy_bits(tqnet, arch, b, budget=1e9, cost=bops, lam=-1)


@pytest.mark.parametrize("seed", [5, 6])
def test_greedy_search_capped_reevaluations_still_meet_budget(seed):
    loss, cost = toy(3, seed)
    budget = cost(((3, 3),) * 3)
    calls = []
    got, hist = greedy_search(((4, 4),) * 3, range(3), BITS, lambda p: calls.append(p) or loss(p), cost, budget,
                              GreedyOptions(max_reevals=1, recalibrate_every=2))
    assert cost(got) <= budget and loss(got) <= loss(((3, 3),) * 3) + 1e-12
    # first step: all 6 down-moves; afterwards at most new candidates + 1 re-measurement per step
    assert len(calls) <= 1 + 6 + len(hist) * (3 + 1) + len(hist)


def test_greedy_bits_on_a_fixed_model_from_quantize_model(tdigits):
    """A plain CNN quantized with elastic bits (qc.quantize_model(..., bits_choices=...)): no space needed."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(16, 10),
    ).eval()
    b = batches_of(tdigits, 1)
    gm = qc.quantize_model(model, policy=(4, 4), example_inputs=(b[0][0],), bits_choices=(2, 3, 4, 8))
    qc.calibrate(gm, [x for x, _ in b], bn=False)
    n = len(qc.layer_names(gm))
    macs = [layer.macs for layer in gm.qc_layers]
    budget = float(sum(m * 3 * 3 for m in macs))  # uniform 3/3
    before = state_hash(gm)
    cfg = qs.greedy_bits(gm, gm.subnet_config, b, budget=budget, bits=BITS)
    assert state_hash(gm) == before
    assert len(cfg.policy) == n
    assert sum(m * w * a for m, (w, a) in zip(macs, cfg.policy.bits)) <= budget
    assert all(w in BITS and a in BITS for w, a in cfg.policy.bits)
    with pytest.raises(ConfigError, match="budget"):
        qs.greedy_bits(gm, gm.subnet_config, b, budget=sum(m * 4 for m in macs) * 0.99, bits=BITS)
