"""Accuracy of subnets: measured on the supernet (cached), and predicted by an MLP (APQ / QFA Sec. 4)."""

from qcompile.search.predictors.measured import SupernetEvaluator, canonical, config_hash
from qcompile.search.predictors.metrics import kendall_tau, pairwise_accuracy, rmse
from qcompile.search.predictors.mlp import AccuracyPredictor, PredictorOptions

__all__ = [
    "AccuracyPredictor",
    "PredictorOptions",
    "SupernetEvaluator",
    "canonical",
    "config_hash",
    "kendall_tau",
    "pairwise_accuracy",
    "rmse",
]
