"""Coarse-to-fine search (OQA Sec. 3.3, after BigNAS): skeletons first, then perturb the fine genes.

Coarse stage: random *skeletons* (resolution, depths, widths) on a subsampled grid: kernels,
expands and fine channels fixed at their middle choice and one uniform bit-width for all layers.
Fine stage: around the coarse Pareto set, OQA "randomly perturbs the kernel sizes"; here each fine
gene (kernel, expand, channels, per-layer bits) is resampled with probability `perturb_prob` from
a member of the current Pareto set, skeleton kept. `coarse_fraction` of `n_evals` goes to the
coarse stage. Draws are bounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qcompile.search.algorithms._common import SKELETON_FIELDS, SearchOptions, genome_options, log, setup_search
from qcompile.search.result import SearchResult, nondominated


@dataclass(frozen=True)
class CoarseToFineOptions(SearchOptions):
    """OQA's split of the budget and the fine stage's per-gene perturbation probability."""

    ALGORITHM = "coarse_to_fine"
    INTS = ("batch", "max_draws_per_eval")
    FRACTIONS = ("coarse_fraction", "perturb_prob")

    coarse_fraction: float = 0.5
    perturb_prob: float = 0.3
    batch: int = 50
    max_draws_per_eval: int = 50


def coarse_to_fine(
    space,
    objectives,
    n_evals: int = 2000,
    seed: int = 0,
    bits: Sequence[int] | None = (2, 3, 4),
    *,
    constraints=None,
    ref_point=None,
    progress: bool = False,
    **options,
) -> SearchResult:
    """OQA's coarse-to-fine selection; generation 0 is the coarse stage, later ones the fine stage."""
    opts = CoarseToFineOptions.from_options(options)
    objectives, genome, _, ev, _ = setup_search(space, objectives, n_evals, seed, bits, constraints, progress,
                                                "coarse-to-fine")
    rng = np.random.default_rng(int(seed))
    skeleton = genome.gene_mask(SKELETON_FIELDS, bits=False)
    fine = ~skeleton
    middle = genome.upper // 2
    n_coarse = max(1, int(round(opts.coarse_fraction * int(n_evals))))
    nb = 0 if genome.bits is None else len(genome.bits)
    draws, max_draws = 0, opts.max_draws_per_eval * int(n_evals)

    def coarse_candidate() -> np.ndarray:
        x = np.where(skeleton, genome.random(rng, 1)[0], middle)
        if nb:
            x[genome.n_arch :] = rng.integers(nb)  # one bit-width for every layer (subsampled grid)
        return x

    ev.generation = 0
    while len(ev.configs) < n_coarse and ev.remaining > 0 and draws < max_draws:
        n = min(opts.batch, n_coarse - len(ev.configs))
        cfgs = [genome.decode(coarse_candidate()) for _ in range(n)]
        draws += n
        ev.evaluate([c for c, ok in zip(cfgs, ev.feasible(cfgs)) if ok])
    gen = 1
    signs = np.array([o.sign for o in objectives])
    while ev.remaining > 0 and draws < max_draws:
        F = np.array(ev.F) * signs
        ok = ev.feasible(ev.configs)
        idx = np.flatnonzero(ok)
        if idx.size == 0:
            break
        front = [genome.encode(ev.configs[i]) for i in idx[nondominated(F[idx])]]
        n = min(opts.batch, ev.remaining)
        cfgs = [genome.decode(genome.mutate(front[int(rng.integers(len(front)))], rng, opts.perturb_prob, fine))
                for _ in range(n)]
        draws += n
        ev.generation = gen
        ev.evaluate([c for c, ok in zip(cfgs, ev.feasible(cfgs)) if ok])
        gen += 1
    log.info("coarse-to-fine: %d evaluations (%d coarse)", len(ev.configs), min(n_coarse, len(ev.configs)))
    return ev.result("coarse-to-fine", seed, genome_options(genome, opts, draws=draws), space, ref_point)
