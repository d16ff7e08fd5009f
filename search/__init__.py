"""Search over subnet configs: cost models (`cost`), objectives, predictors and algorithms."""

from qcompile.search import (
    cost,
    objectives,  # noqa: E402,F401
)
from qcompile.search.algorithms.greedy_bits import GreedyOptions, greedy_bits
from qcompile.search.latency import KernelPredictor, LatencyTable, kernel_workloads  # noqa: E402,F401
from qcompile.search.objectives import Objective
from qcompile.search.predictors import (
    AccuracyPredictor,
    PredictorOptions,
    SupernetEvaluator,
    kendall_tau,
    pairwise_accuracy,
)

# SpaceEvo: search the search space (issue 17)
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
    "Objective",
    "AccuracyPredictor",
    "PredictorOptions",
    "SupernetEvaluator",
    "kendall_tau",
    "pairwise_accuracy",
    "greedy_bits",
    "GreedyOptions",
]
