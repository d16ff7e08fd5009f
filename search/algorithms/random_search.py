"""Random search: uniform samples of the genome (architecture and per-layer bits within `bits`).

The baseline NSGA-II must beat at the same number of evaluations (docs/search.md). Candidates
violating a constraint are skipped before they cost an evaluation; draws are bounded
(`max_draws_per_eval` per evaluation), so an unreachable constraint ends the search instead of looping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qcompile.search.algorithms._common import SearchOptions, genome_options, log, setup_search
from qcompile.search.result import SearchResult


@dataclass(frozen=True)
class RandomSearchOptions(SearchOptions):
    """Configs drawn per generation and the bound on draws per evaluation."""

    ALGORITHM = "random_search"
    INTS = ("batch", "max_draws_per_eval")

    batch: int = 100
    max_draws_per_eval: int = 50


def random_search(
    space,
    objectives,
    n_evals: int = 2000,
    seed: int = 0,
    bits: Sequence[int] | None = (2, 3, 4),
    *,
    constraints=None,
    batch: int = 100,
    max_draws_per_eval: int = 50,
    ref_point=None,
    progress: bool = False,
) -> SearchResult:
    """Evaluate up to `n_evals` distinct uniformly random (canonical) configs; generations of `batch`."""
    opts = RandomSearchOptions.from_options({"batch": batch, "max_draws_per_eval": max_draws_per_eval})
    _, genome, _, ev, _ = setup_search(space, objectives, n_evals, seed, bits, constraints, progress, "random")
    rng = np.random.default_rng(int(seed))
    draws, max_draws = 0, opts.max_draws_per_eval * int(n_evals)
    gen = 0
    while ev.remaining > 0 and draws < max_draws:
        n = min(opts.batch, ev.remaining)
        X = genome.random(rng, n)
        draws += n
        cfgs = [genome.decode(x) for x in X]
        cfgs = [c for c, ok in zip(cfgs, ev.feasible(cfgs)) if ok]
        ev.generation = gen
        ev.evaluate(cfgs)
        gen += 1
    if ev.remaining > 0:
        log.warning("random search: %d of %d evaluations after %d draws (constraints or a small space)",
                    len(ev.configs), n_evals, draws)
    return ev.result("random", seed, genome_options(genome, batch=opts.batch, draws=draws), space, ref_point)
