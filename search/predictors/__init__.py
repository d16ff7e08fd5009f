"""Accuracy of subnets: measured on the supernet (cached), and predicted by an MLP (APQ / QFA Sec. 4) or by
boosted trees over a log-BitOPs line (`BoostedPredictor`); `load_predictor` reads either kind."""

from qcompile.search.predictors.boosted import BoostedOptions, BoostedPredictor, load_predictor
from qcompile.search.predictors.measured import SupernetEvaluator, canonical, config_hash
from qcompile.search.predictors.metrics import kendall_tau, pairwise_accuracy, rmse
from qcompile.search.predictors.mlp import AccuracyPredictor, MLPEnsemble, PredictorOptions

__all__ = [
    "AccuracyPredictor",
    "BoostedOptions",
    "BoostedPredictor",
    "MLPEnsemble",
    "PredictorOptions",
    "SupernetEvaluator",
    "canonical",
    "config_hash",
    "kendall_tau",
    "load_predictor",
    "pairwise_accuracy",
    "rmse",
]
