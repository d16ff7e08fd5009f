"""Search over subnet configs: cost models (`cost`), objectives, algorithms and their `SearchResult`.

ARCHITECTURE.md "Public API, second part": `qs.nsga2`, `qs.random_search`, `qs.evolution`,
`qs.coarse_to_fine` take a space and `Objective`s and return a `SearchResult`; SpaceEvo's
`qs.evolve_space` searches the search space itself.
"""

from qcompile.search import cost, objectives
from qcompile.search.algorithms import (
    CoarseToFineOptions,
    EvolutionOptions,
    GreedyOptions,
    NSGA2Options,
    coarse_to_fine,
    evolution,
    greedy_bits,
    nsga2,
    random_search,
)
from qcompile.search.latency import KernelPredictor, LatencyTable, kernel_workloads  # noqa: F401
from qcompile.search.objectives import Objective
from qcompile.search.predictors import (
    AccuracyPredictor,
    BoostedOptions,
    BoostedPredictor,
    EnsemblePredictor,
    MLPEnsemble,
    PredictorOptions,
    SupernetEvaluator,
    kendall_tau,
    load_predictor,
    pairwise_accuracy,
)
from qcompile.search.result import SearchResult

# SpaceEvo: search the search space
from qcompile.search.space_evolution import (  # noqa: F401
    EvolutionSettings,
    MacLatencyModel,
    QTScorer,
    SpaceSearchResult,
    aging_evolution,
    evolve_space,
    latency_model,
    random_search_spaces,
)

__all__ = [
    "cost",
    "objectives",
    "Objective",
    "SearchResult",
    "nsga2",
    "random_search",
    "evolution",
    "coarse_to_fine",
    "NSGA2Options",
    "EvolutionOptions",
    "CoarseToFineOptions",
    "EvolutionSettings",
    "MacLatencyModel",
    "QTScorer",
    "SpaceSearchResult",
    "aging_evolution",
    "evolve_space",
    "latency_model",
    "random_search_spaces",
    "KernelPredictor",
    "LatencyTable",
    "kernel_workloads",
    "AccuracyPredictor",
    "BoostedOptions",
    "BoostedPredictor",
    "EnsemblePredictor",
    "MLPEnsemble",
    "load_predictor",
    "PredictorOptions",
    "SupernetEvaluator",
    "kendall_tau",
    "pairwise_accuracy",
    "greedy_bits",
    "GreedyOptions",
]
