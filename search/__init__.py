"""Search over subnet configs: cost models (`cost`), objectives, predictors and algorithms."""

from qcompile.search import cost
from qcompile.search.algorithms.greedy_bits import GreedyOptions, greedy_bits
from qcompile.search.objectives import Objective
from qcompile.search.predictors import (
    AccuracyPredictor,
    PredictorOptions,
    SupernetEvaluator,
    kendall_tau,
    pairwise_accuracy,
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
