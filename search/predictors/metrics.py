"""Ranking metrics of accuracy predictors: Kendall tau, pairwise accuracy, RMSE.

APQ (Sec. 4.2) and BatchQuant/QFA (Sec. 4) judge predictors by how well they *rank* subnets, since
search only compares candidates: pairwise accuracy is the fraction of pairs ordered the same way by
prediction and measurement (APQ reports 85 %), Kendall tau the normalised difference of concordant
and discordant pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from qcompile.errors import ConfigError


def _pair(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ConfigError(what, f"lengths {x.shape[0]} and {y.shape[0]}", "two sequences of equal length")
    if x.shape[0] < 2:
        raise ConfigError(what, f"{x.shape[0]} values", "at least 2 values to compare pairs")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ConfigError(what, "non-finite values", "finite numbers")
    return x, y


def _pair_signs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signs of x_i - x_j and y_i - y_j over the pairs i < j (O(n^2) memory; n is at most a few thousand)."""
    iu = np.triu_indices(x.shape[0], k=1)
    return np.sign(x[:, None] - x[None, :])[iu], np.sign(y[:, None] - y[None, :])[iu]


def kendall_tau(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Kendall's tau-b between two score vectors (ties handled as in `scipy.stats.kendalltau`).

    tau_b = (C - D) / sqrt((n0 - t_a) (n0 - t_b)), with n0 the number of pairs and t_a, t_b the pairs
    tied in `a` resp. `b`. Returns 0.0 when either side is constant (no ordering to agree with),
    where scipy returns NaN.
    """
    x, y = _pair(a, b, "kendall_tau(a, b)")
    sx, sy = _pair_signs(x, y)
    s = float(np.sum(sx * sy))
    denom = float(np.sqrt(float(np.count_nonzero(sx)) * float(np.count_nonzero(sy))))
    return float(np.clip(s / denom, -1.0, 1.0)) if denom > 0 else 0.0


def pairwise_accuracy(pred_values: Sequence[float] | np.ndarray, true_values: Sequence[float] | np.ndarray) -> float:
    """Fraction of pairs (i, j) with distinct true values that the predictions order the same way (APQ).

    Pairs tied in `true_values` are left out (no order to get right); a pair tied in the prediction
    but not in the truth counts half (a coin flip would order it). Returns 1.0 if every true value is equal.
    """
    p, t = _pair(pred_values, true_values, "pairwise_accuracy(pred_values, true_values)")
    sp, st = _pair_signs(p, t)
    keep = st != 0
    if not np.any(keep):
        return 1.0
    agree = sp[keep] * st[keep]
    return float((np.count_nonzero(agree > 0) + 0.5 * np.count_nonzero(agree == 0)) / np.count_nonzero(keep))


def rmse(pred_values: Sequence[float] | np.ndarray, true_values: Sequence[float] | np.ndarray) -> float:
    """Root mean squared error, in the values' own units."""
    p, t = _pair(pred_values, true_values, "rmse(pred_values, true_values)")
    return float(np.sqrt(np.mean((p - t) ** 2)))


def heldout_report(pred_values: Sequence[float] | np.ndarray, true_values: Sequence[float] | np.ndarray,
                   bitops: Sequence[float] | np.ndarray | None = None) -> dict[str, float]:
    """A predictor's held-out scores: `kendall_tau`, `pairwise_accuracy`, `rmse`; with `bitops` (or any
    increasing function of it) also the baseline that ranks fewer BitOPs higher (`bitops_kendall_tau`,
    `bitops_pairwise_accuracy`), which a predictor has to beat to be worth fitting."""
    out = {"kendall_tau": kendall_tau(pred_values, true_values),
           "pairwise_accuracy": pairwise_accuracy(pred_values, true_values),
           "rmse": rmse(pred_values, true_values)}
    if bitops is not None:
        neg = -np.asarray(bitops, dtype=np.float64)
        out["bitops_kendall_tau"] = kendall_tau(neg, true_values)
        out["bitops_pairwise_accuracy"] = pairwise_accuracy(neg, true_values)
    return out


def fit_split(configs: Sequence[Any], values: Sequence[float] | np.ndarray, holdout: float, seed: int,
              min_train: int = 2, field: str = "values") -> tuple[list[Any], np.ndarray, np.ndarray, np.ndarray]:
    """Checked fit inputs and their seeded held-out split: `(configs, y, hold, train)` with `round(holdout * n)`
    held-out indices and the rest (in permutation order) for training. ConfigError for a count mismatch,
    non-finite values, or fewer than `min_train` training samples."""
    configs = list(configs)
    y = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(configs) != y.shape[0]:
        raise ConfigError(field, f"{y.shape[0]} values", f"one per config ({len(configs)})")
    if not np.all(np.isfinite(y)):
        raise ConfigError(field, "non-finite values", "finite numbers")
    n_hold = int(round(holdout * len(configs)))
    if len(configs) - n_hold < min_train:
        raise ConfigError("configs", f"{len(configs)} samples", f"at least {n_hold + min_train} (holdout {holdout})")
    perm = np.random.RandomState(seed).permutation(len(configs))
    return configs, y, perm[:n_hold], perm[n_hold:]


def log_heldout(logger: Any, what: str, report: dict[str, Any]) -> None:
    """One log line of a predictor's held-out scores (`heldout_report`)."""
    logger.info("%s held-out (%d): tau %.3f, pairwise %.1f %%, RMSE %.4g", what, report["n_holdout"],
                report["kendall_tau"], 100 * report["pairwise_accuracy"], report["rmse"])


__all__ = ["fit_split", "heldout_report", "kendall_tau", "log_heldout", "pairwise_accuracy", "rmse"]
