"""NSGA-II over architecture and per-layer bits on pymoo (QFA Sec. 4, "Multi-objective evolutionary search").

Split as pymoo intends: `SubnetProblem` (integer choice indices of `Genome`, bounds from
`choice_counts(space)` with bit genes indexing the allowed `bits`), `ChoiceSampling`,
`ChoiceMutation` (resample a gene to another choice), pymoo's uniform crossover `UX`,
`CanonicalRepair` (genes of skipped blocks normalised, so pymoo's duplicate elimination sees one
genome per network). The loop is pymoo's ask/tell, so `n_evals` is a hard cap: the last offspring
batch is cut to the budget. Configs seen before are answered from the cache and cost nothing.

QFA runs population 800 for 500 generations (crossover 0.06, mutation 0.006) on 16k predictor
samples; here the default population is `n_evals // 20` clipped to [8, 800] (100 at 2000
evaluations, 800 at 16k), crossover probability 0.9 and per-gene mutation 1/n_var (pymoo's usual
choices for a small budget).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.evaluator import Evaluator as PymooEvaluator
from pymoo.core.mutation import Mutation
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling
from pymoo.operators.crossover.ux import UX
from pymoo.problems.static import StaticProblem

from qcompile.search.algorithms._common import Genome, SearchOptions, genome_options, log, setup_search
from qcompile.search.result import SearchResult


@dataclass(frozen=True)
class NSGA2Options(SearchOptions):
    """NSGA-II settings; None picks the budget-suited default described in the module docstring."""

    ALGORITHM = "nsga2"
    INTS = ("pop_size", "n_offsprings", "max_stall")
    PROBS = ("crossover_prob", "mutation_prob")

    pop_size: int | None = None
    n_offsprings: int | None = None
    crossover_prob: float = 0.9
    mutation_prob: float | None = None  # per gene; default 1 / n_var
    max_stall: int = 20  # generations in a row without a new evaluation before stopping

    def resolved(self, n_evals: int, n_var: int) -> NSGA2Options:
        pop = self.pop_size if self.pop_size is not None else max(8, min(800, n_evals // 20))
        pop = max(1, min(pop, n_evals))
        off = self.n_offsprings if self.n_offsprings is not None else pop
        mut = self.mutation_prob if self.mutation_prob is not None else 1.0 / max(n_var, 1)
        return NSGA2Options(pop, off, self.crossover_prob, mut, self.max_stall)



class SubnetProblem(Problem):
    """Integer variables = `Genome` genes; objectives min-oriented; constraints `g <= 0`."""

    def __init__(self, genome: Genome, n_obj: int, n_constr: int) -> None:
        super().__init__(n_var=genome.n_var, n_obj=n_obj, n_ieq_constr=n_constr, xl=0, xu=genome.upper, vtype=int)
        self.genome = genome


class ChoiceSampling(Sampling):
    """Uniform over each gene's choices (bits within the allowed `bits`)."""

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        return problem.genome.random(random_state, n_samples)


class ChoiceMutation(Mutation):
    """Each gene, with probability `prob_var`, moves to another of its choices."""

    def __init__(self, prob_var: float) -> None:
        super().__init__(prob=1.0)
        self.p = prob_var

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        g = problem.genome
        return np.array([g.mutate(x, random_state, self.p) for x in X.astype(np.int64)])


class CanonicalRepair(Repair):
    """Normalise genes of skipped blocks: one genome per network, so duplicate elimination works."""

    def _do(self, problem, X, **kwargs):
        g = problem.genome
        return np.array([g.canonical_x(x) for x in np.asarray(X).astype(np.int64)])


def nsga2(
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
    """Multi-objective search with NSGA-II (QFA Sec. 4); returns every evaluated config.

    `objectives`: `Objective`s (own directions); `constraints`: `[(Objective, limit)]`, handled as
    pymoo inequality constraints; `options`: fields of `NSGA2Options`. Same seed, same result.
    """
    opts = NSGA2Options.from_options(options)
    objectives, genome, cons, ev, _ = setup_search(space, objectives, n_evals, seed, bits, constraints, progress,
                                                   "nsga2")
    opts = opts.resolved(int(n_evals), genome.n_var)
    problem = SubnetProblem(genome, len(objectives), len(cons))
    algo = NSGA2(
        pop_size=opts.pop_size,
        n_offsprings=opts.n_offsprings,
        sampling=ChoiceSampling(),
        crossover=UX(prob=opts.crossover_prob),
        mutation=ChoiceMutation(opts.mutation_prob),
        repair=CanonicalRepair(),
        eliminate_duplicates=True,
    )
    algo.setup(problem, termination=("n_gen", 10**9), seed=int(seed), verbose=False)
    signs = np.array([o.sign for o in objectives])
    stall = 0
    max_gen = 10 * int(n_evals) + 100  # bounded even if every offspring is a cached duplicate
    for gen in range(max_gen):
        if ev.remaining <= 0 or stall >= opts.max_stall:
            break
        pop = algo.ask()
        if pop is None or len(pop) == 0:
            stall += 1
            continue
        X = np.asarray(pop.get("X")).astype(np.int64)
        cfgs = [genome.decode(x) for x in X]
        ev.generation = gen
        before = ev.remaining
        take, F, G = ev.evaluate(cfgs)
        stall = stall + 1 if ev.remaining == before else 0
        if take < len(cfgs):  # budget exhausted inside this batch: the cut batch is recorded, not told
            break
        Gmin = np.column_stack([
            (G[:, j] - lim) if o.direction == "min" else (lim - G[:, j]) for j, (o, lim) in enumerate(cons)
        ]) if cons else None
        static = StaticProblem(problem, F=F * signs, **({"G": Gmin} if cons else {}))
        PymooEvaluator().eval(static, pop)
        algo.tell(infills=pop)
    log.info("nsga2: %d evaluations, population %d", len(ev.configs), opts.pop_size)
    return ev.result("nsga2", seed, genome_options(genome, opts), space, ref_point)
