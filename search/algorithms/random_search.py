"""Random search: uniform samples of the genome (architecture and per-layer bits within `bits`).

The baseline NSGA-II must beat at the same number of evaluations (docs/search.md). Candidates
violating a constraint are skipped before they cost an evaluation; draws are bounded
(`max_draws_per_eval` per evaluation), so an unreachable constraint ends the search instead of looping.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qcompile.errors import ConfigError
from qcompile.search.algorithms._common import Evaluator, check_common, check_constraints, check_reachable, log
from qcompile.search.result import SearchResult


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
    objectives, genome = check_common(space, objectives, n_evals, seed, bits)
    cons = check_constraints(constraints)
    if not isinstance(batch, int) or batch < 1:
        raise ConfigError("batch", batch, "an integer >= 1")
    ev = Evaluator(objectives, cons, n_evals, progress, desc="random")
    check_reachable(space, genome, ev)
    rng = np.random.default_rng(int(seed))
    draws, max_draws = 0, max_draws_per_eval * int(n_evals)
    gen = 0
    while ev.remaining > 0 and draws < max_draws:
        n = min(batch, ev.remaining)
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
    opts = {"bits": None if genome.bits is None else list(genome.bits), "batch": batch, "draws": draws}
    return ev.result("random", seed, opts, space, ref_point)
