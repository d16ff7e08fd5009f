"""Accuracy of subnets: measured on the supernet (cached), and predicted by an MLP (APQ / QFA Sec. 4) or by
boosted trees over a log-BitOPs line (`BoostedPredictor`, optionally with the per-layer sensitivity prior
`LayerSensitivity`, measured or the data-free `noise_sensitivity`); `load_predictor` reads either kind."""

from qcompile.search.predictors.boosted import BoostedOptions, BoostedPredictor
from qcompile.search.predictors.ensemble import EnsemblePredictor
from qcompile.search.predictors.measured import SupernetEvaluator, canonical, config_hash
from qcompile.search.predictors.metrics import kendall_tau, pairwise_accuracy, rmse
from qcompile.search.predictors.mlp import AccuracyPredictor, MLPEnsemble, PredictorOptions
from qcompile.search.predictors.noise import noise_sensitivity
from qcompile.search.predictors.saved import load_predictor
from qcompile.search.predictors.sensitivity import LayerSensitivity, measure_sensitivities, sensitivity_configs

__all__ = [
    "AccuracyPredictor",
    "BoostedOptions",
    "BoostedPredictor",
    "EnsemblePredictor",
    "LayerSensitivity",
    "MLPEnsemble",
    "PredictorOptions",
    "SupernetEvaluator",
    "canonical",
    "config_hash",
    "kendall_tau",
    "load_predictor",
    "measure_sensitivities",
    "noise_sensitivity",
    "pairwise_accuracy",
    "rmse",
    "sensitivity_configs",
]
