"""Constrained evolution (APQ Sec. 3.3, Algorithm 1): population 100, top 25 parents, half mutation, half crossover.

Every candidate meets every constraint before it costs an evaluation: random, mutated and crossed
candidates that violate one are redrawn, at most `max_tries` times per slot (APQ, OFA and SpaceEvo
loop `while True`; here the loop is bounded). If neither the smallest nor the largest subnet at any
allowed bit-width nor 200 random ones meet a limit, `ConfigError` is raised before searching; if
random draws find no feasible candidate, the feasible extremes seed the population.
`res.best` is the best feasible config found on the (first) objective.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qcompile.errors import ConfigError
from qcompile.search.algorithms._common import (
    Evaluator,
    Genome,
    SearchOptions,
    genome_options,
    log,
    setup_search,
)
from qcompile.search.result import SearchResult


@dataclass(frozen=True)
class EvolutionOptions(SearchOptions):
    """APQ's settings (Sec. 4.1 "Evolutionary architecture search")."""

    ALGORITHM = "evolution"
    INTS = ("population", "parents", "max_tries")
    PROBS = ("mutation_ratio", "mutation_prob")

    population: int = 100
    parents: int = 25
    mutation_ratio: float = 0.5  # the rest of the children come from crossover
    mutation_prob: float = 0.1  # per gene
    max_tries: int = 50  # redraws of one candidate slot before giving up on it

    def check(self) -> None:
        super().check()
        if self.parents > self.population:
            raise ConfigError("parents", self.parents, f"<= population ({self.population})")


def _draw(make, ev: Evaluator, tries: int, taken: set):
    """A feasible config not yet taken, from `make()`, within `tries` draws (None if none)."""
    for _ in range(tries):
        cfg = make()
        if cfg in taken:
            continue
        if ev.feasible([cfg])[0]:
            return cfg
    return None


def evolution(
    space,
    objective,
    constraints=None,
    n_evals: int = 1000,
    seed: int = 0,
    bits: Sequence[int] | None = (2, 3, 4),
    *,
    ref_point=None,
    progress: bool = False,
    **options,
) -> SearchResult:
    """Single-objective evolution under constraints `[(Objective, limit)]` (APQ); returns a `SearchResult`.

    `objective` is one `Objective` (a list is accepted: its first is optimised, the others are only
    recorded). `options`: fields of `EvolutionOptions`.
    """
    opts = EvolutionOptions.from_options(options)
    objectives, genome, cons, ev, extremes = setup_search(space, objective, n_evals, seed, bits, constraints,
                                                          progress, "evolution")
    rng = np.random.default_rng(int(seed))
    sign = objectives[0].sign

    def rand():
        return genome.decode(genome.random(rng, 1)[0])

    pop: list = []
    taken: set = set()
    for _ in range(min(opts.population, int(n_evals))):
        cfg = _draw(rand, ev, opts.max_tries, taken)
        if cfg is None:
            break
        pop.append(cfg)
        taken.add(cfg)
    if not pop:
        log.warning("evolution: no random candidate in %d draws meets %s; seeding with the extreme subnets",
                    opts.max_tries, ", ".join(f"{o.name}<>{lim:g}" for o, lim in cons))
        pop = list(dict.fromkeys(extremes))
    if not pop:
        raise ConfigError("constraints", ", ".join(f"{o.name} limit {lim:g}" for o, lim in cons),
                          "constraints some subnet meets together (none found in bounded random draws)")
    gen = 0
    max_gen = 10 * int(n_evals) + 10
    while gen < max_gen:
        ev.generation = gen
        take, F, _ = ev.evaluate(pop)
        pop, F = pop[:take], F[:take]
        if ev.remaining <= 0 or not pop:
            break
        order = np.argsort(sign * F[:, 0], kind="stable")
        parents = [pop[i] for i in order[: opts.parents]]
        px = [genome.encode(p) for p in parents]
        n_children = opts.population - len(parents)
        n_mut = int(round(n_children * opts.mutation_ratio))
        children: list = []
        taken = set(parents)

        def mutant(px=px):
            return genome.decode(genome.mutate(px[int(rng.integers(len(px)))], rng, opts.mutation_prob))

        def cross(px=px):
            a, b = rng.integers(len(px), size=2)
            return genome.decode(genome.crossover(px[int(a)], px[int(b)], rng))

        for k in range(n_children):
            cfg = _draw(mutant if k < n_mut else cross, ev, opts.max_tries, taken)
            if cfg is not None:
                children.append(cfg)
                taken.add(cfg)
        new = [c for c in children if c not in ev.index]
        if not new:
            log.info("evolution: generation %d produced no new feasible candidate; stopping", gen)
            break
        pop = parents + children
        gen += 1
    res = ev.result("evolution", seed, genome_options(genome, opts), space, ref_point)
    log.info("evolution: %d evaluations, best %s = %g", res.n_evals, objectives[0].name, res.F[res.best_index, 0])
    return res


__all__ = ["evolution", "EvolutionOptions", "Genome"]
