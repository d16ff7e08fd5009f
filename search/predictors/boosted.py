"""Gradient-boosted trees predicting a subnet's measured score from its encoding and costs.

An alternative to the MLP of APQ (Sec. 3.3) for the few hundred measured subnets a supernet of
this size affords: a least-squares line of the score on log BitOPs (QFA Sec. 5: BitOPs is the cost
that explains most of the quantization error) is the baseline, and shallow boosted regression trees
(Friedman 2001, squared loss; `sklearn.ensemble.GradientBoostingRegressor`) fit what the line
misses from the features

    [encode(space, cfg), log BitOPs, log MACs, log model bits, mean/min weight bits, mean/min activation bits]

so that ``prediction = a + b * log BitOPs + lr * sum_t tree_t(features)``.

With a `LayerSensitivity` (per-layer loss increases measured on the supernet, the retraining-free
paper's Eq. 9 quantities; `qcompile.search.predictors.sensitivity`), its additive features (summed
sensitivities of the 2- and 3-bit weight and activation layers, and the total) join both the line and
the trees' features: the line is then an additive sensitivity model fitted by least squares, and
``n_estimators=0`` keeps that line alone. scikit-learn does the
fitting; the fitted trees are stored as plain arrays (safetensors) + JSON, never pickled, and are
evaluated here in numpy, so a saved predictor loads without scikit-learn's object format.

Like `AccuracyPredictor`, every fit holds out `holdout` of the samples (seeded) and reports Kendall
tau, pairwise accuracy and RMSE on them, next to ranking by BitOPs alone, in `report`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qcompile.config import SubnetConfig
from qcompile.errors import ConfigError
from qcompile.search.encoding import encode, encoding_size
from qcompile.search.predictors.metrics import fit_split, heldout_report, log_heldout
from qcompile.search.predictors.saved import (
    FORMAT,
    JSON_FILE,
    WEIGHTS_FILE,
    read_doc,
    register_kind,
    saved_space,
    space_dict,
)
from qcompile.search.predictors.sensitivity import LayerSensitivity
from qcompile.utils.io import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

KIND = "gbt-accuracy-predictor"
N_COST_FEATURES = 7
SENS_BITS = (2, 3)
N_SENS_FEATURES = 2 * len(SENS_BITS) + 1


@dataclass(frozen=True)
class BoostedOptions:
    """Boosting options (Friedman's stochastic gradient boosting: shallow trees, shrinkage, row subsampling).

    `residual`: fit the trees to what a least-squares line on log BitOPs leaves; else to the score itself.
    """

    n_estimators: int = 300  # 0: the line alone
    max_depth: int = 2
    learning_rate: float = 0.05
    subsample: float = 0.8
    min_samples_leaf: int = 3
    residual: bool = True
    holdout: float = 0.2

    def __post_init__(self) -> None:
        checks = (
            ("n_estimators", 0 <= self.n_estimators <= 100_000, "0..100000"),
            ("max_depth", 1 <= self.max_depth <= 16, "1..16"),
            ("learning_rate", 0 < self.learning_rate <= 1, "in (0, 1]"),
            ("subsample", 0 < self.subsample <= 1, "in (0, 1]"),
            ("min_samples_leaf", self.min_samples_leaf >= 1, ">= 1"),
            ("holdout", 0 <= self.holdout < 1, "a fraction in [0, 1)"),
        )
        for name, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"BoostedOptions.{name}", getattr(self, name), allowed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cost_features(space: Any, cfg: SubnetConfig) -> np.ndarray:
    """log BitOPs, log MACs, log model bits, and the mean / min weight and activation bits of the policy."""
    from qcompile.search.cost import cost_report

    r = cost_report(space, cfg)
    # a float subnet has no policy: 32-bit weights and activations
    pol = np.asarray(cfg.policy if cfg.policy else [[32, 32]], dtype=np.float64).reshape(-1, 2)
    return np.array(
        [
            np.log(max(r.bitops, 1)),
            np.log(max(r.macs, 1)),
            np.log(max(r.model_bits, 1)),
            pol[:, 0].mean(),
            pol[:, 0].min(),
            pol[:, 1].mean(),
            pol[:, 1].min(),
        ]
    )


def features(space: Any, configs: Sequence[SubnetConfig], sensitivity: LayerSensitivity | None = None) -> np.ndarray:
    """(n, encoding_size + 7 [+ 5]) float64: the one-hot encoding, `cost_features`, and with `sensitivity`
    its additive features (`LayerSensitivity.features`, bits 2 and 3)."""
    configs = list(configs)
    n_extra = 0 if sensitivity is None else N_SENS_FEATURES
    if not configs:
        return np.zeros((0, encoding_size(space) + N_COST_FEATURES + n_extra))
    x = np.stack(
        [np.concatenate([np.asarray(encode(space, c), dtype=np.float64), cost_features(space, c)]) for c in configs]
    )
    if sensitivity is None:
        return x
    return np.hstack([x, sensitivity.features(space, configs, bits=SENS_BITS)])


class BoostedPredictor:
    """Boosted trees over a log-BitOPs line; `.fit(configs, values)` returns self, `.predict(configs)` values.

    Values are in the units they were fitted in (top-1, or a negated loss so that higher is better).
    With `sensitivity`, the line also has the additive sensitivity features (module docstring).
    """

    kind = KIND

    def __init__(
        self,
        space: Any,
        seed: int = 0,
        options: BoostedOptions | None = None,
        sensitivity: LayerSensitivity | None = None,
        **kwargs: Any,
    ) -> None:
        if options is not None and kwargs:
            raise ConfigError("BoostedPredictor options", sorted(kwargs), "either options=... or keyword options")
        try:
            self.options = options or BoostedOptions(**kwargs)
        except TypeError as e:
            raise ConfigError(
                "BoostedPredictor options", sorted(kwargs), list(BoostedOptions.__dataclass_fields__)
            ) from e
        for attr in ("genes", "num_layer_slots", "bit_choices"):  # what search.encoding reads
            if not hasattr(space, attr):
                raise ConfigError("space", type(space).__name__, f"a search space with `{attr}` (qc.spaces.*)")
        if sensitivity is not None and sensitivity.weight.shape[0] != space.num_layer_slots:
            raise ConfigError(
                "sensitivity", f"{sensitivity.weight.shape[0]} layer slots", f"{space.num_layer_slots} (the space's)"
            )
        self.space = space
        self.seed = int(seed)
        self.sensitivity = sensitivity
        n_enc = int(encoding_size(space))
        self.n_features = n_enc + N_COST_FEATURES + (0 if sensitivity is None else N_SENS_FEATURES)
        # the line's columns: log BitOPs, then the sensitivity features
        self._line_cols = [n_enc] + (
            [] if sensitivity is None else list(range(n_enc + N_COST_FEATURES, self.n_features))
        )
        self.line = np.zeros(1 + len(self._line_cols))  # a + b . (log BitOPs [, sensitivity features])
        self.init = 0.0  # the boosting's constant start (mean residual)
        self.trees: list[dict[str, np.ndarray]] = []
        self.report: dict[str, Any] = {}
        self._fitted = False

    # ------------------------------------------------------------------------------------------
    def fit(self, configs: Sequence[SubnetConfig], values: Sequence[float] | np.ndarray) -> BoostedPredictor:
        """Fit on `configs` -> `values`; `holdout` of them (seeded) are kept out and scored in `report`."""
        from sklearn.ensemble import GradientBoostingRegressor

        opts = self.options
        configs, y, hold, train = fit_split(configs, values, opts.holdout, self.seed, min_train=4)
        n_hold = len(hold)
        x = features(self.space, configs, self.sensitivity)
        # the fit sees its rows in their given order (sklearn's row subsampling depends on it)
        train = np.sort(train)
        lb = x[:, self._line_cols[0]]
        if opts.residual or opts.n_estimators == 0:
            a = np.column_stack([np.ones(len(train)), x[train][:, self._line_cols]])
            self.line = np.linalg.lstsq(a, y[train], rcond=None)[0]
        else:
            self.line = np.zeros(1 + len(self._line_cols))
        resid = y[train] - self._line(x[train])
        if opts.n_estimators:
            gbr = GradientBoostingRegressor(
                n_estimators=opts.n_estimators,
                max_depth=opts.max_depth,
                learning_rate=opts.learning_rate,
                subsample=opts.subsample,
                min_samples_leaf=opts.min_samples_leaf,
                random_state=self.seed,
            ).fit(x[train], resid)
            self.init = float(np.asarray(gbr.init_.constant_).reshape(-1)[0])
            self.trees = [_tree_arrays(est[0].tree_) for est in gbr.estimators_]
        else:
            self.init, self.trees = 0.0, []
        self._fitted = True
        self.report = {"n_train": int(len(train)), "n_holdout": int(n_hold)}
        if n_hold >= 2:
            self.report.update(heldout_report(self._predict_features(x[hold]), y[hold], bitops=lb[hold]))
            log_heldout(log, "boosted predictor", self.report)
        return self

    def _line(self, x: np.ndarray) -> np.ndarray:
        return self.line[0] + x[:, self._line_cols] @ self.line[1:]

    def _predict_features(self, x: np.ndarray) -> np.ndarray:
        out = self._line(x) + self.init
        for t in self.trees:
            out = out + self.options.learning_rate * _tree_predict(t, x)
        return out

    def predict(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        """Predicted value of each config (1-D float64, in the fitted units)."""
        configs = list(configs)
        if not configs:
            return np.zeros(0)
        if not self._fitted:
            raise ConfigError("BoostedPredictor", "not fitted", "call .fit(configs, values) or .load(path) first")
        return self._predict_features(features(self.space, configs, self.sensitivity))

    __call__ = predict

    # ------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write directory `path`: `predictor.safetensors` (the trees' arrays) + `predictor.json` (the rest)."""
        from safetensors.numpy import save as st_save

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays = {f"tree{i:05d}.{k}": np.ascontiguousarray(v) for i, t in enumerate(self.trees) for k, v in t.items()}
        atomic_write_bytes(path / WEIGHTS_FILE, st_save(arrays))
        doc = {
            "format": FORMAT,
            "kind": KIND,
            "space": space_dict(self.space),
            "n_features": self.n_features,
            "seed": self.seed,
            "options": self.options.to_dict(),
            "line": [float(v) for v in self.line],
            "init": self.init,
            "n_trees": len(self.trees),
            "sensitivity": None if self.sensitivity is None else self.sensitivity.to_dict(),
            "report": self.report,
        }
        atomic_write_text(path / JSON_FILE, json.dumps(doc, indent=2))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, space: Any = None) -> BoostedPredictor:
        """Read a predictor written by `save`; with `space`, refuse (ConfigError) one fitted for another space."""
        from safetensors.numpy import load_file

        path = Path(path)
        doc = read_doc(path, KIND)
        space = saved_space(doc, space, path)
        sens = doc.get("sensitivity")
        sens = None if sens is None else LayerSensitivity.from_dict(sens)
        pred = cls(space, seed=doc["seed"], options=BoostedOptions(**doc["options"]), sensitivity=sens)
        if pred.n_features != doc["n_features"]:
            raise ConfigError(
                "predictor features", doc["n_features"], pred.n_features, f"{path} was fitted for another space"
            )
        arrays = load_file(str(path / WEIGHTS_FILE))
        pred.trees = [{k: arrays[f"tree{i:05d}.{k}"] for k in _TREE_KEYS} for i in range(int(doc["n_trees"]))]
        pred.line = np.asarray(doc["line"], dtype=np.float64)
        pred.init = float(doc["init"])
        pred.report = doc.get("report", {})
        pred._fitted = True
        return pred

    def __repr__(self) -> str:
        return f"BoostedPredictor(space={getattr(self.space, 'name', '?')}, seed={self.seed}, report={self.report})"


_TREE_KEYS = ("left", "right", "feature", "threshold", "value")


def _tree_arrays(tree: Any) -> dict[str, np.ndarray]:
    """The arrays of a fitted sklearn tree that prediction needs (leaves have left == right == -1)."""
    return {
        "left": tree.children_left.astype(np.int32),
        "right": tree.children_right.astype(np.int32),
        "feature": tree.feature.astype(np.int32),
        "threshold": tree.threshold.astype(np.float64),
        "value": tree.value.reshape(-1).astype(np.float64),
    }


def _tree_predict(t: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Leaf value of every row of `x`: descend all rows at once (sklearn's rule: go left when x <= threshold)."""
    node = np.zeros(x.shape[0], dtype=np.int64)
    rows = np.arange(x.shape[0])
    left, right, feat, thr = t["left"], t["right"], t["feature"], t["threshold"]
    for _ in range(left.shape[0]):
        inner = left[node] >= 0
        if not inner.any():
            break
        f = np.where(inner, feat[node], 0)
        go_left = x[rows, f] <= thr[node]
        node = np.where(inner, np.where(go_left, left[node], right[node]), node)
    return t["value"][node]


register_kind(KIND, BoostedPredictor)

__all__ = ["BoostedOptions", "BoostedPredictor", "cost_features", "features"]
