"""An ensemble of accuracy predictors of different kinds: the mean of their standardised predictions.

Boosted trees (`BoostedPredictor`) and APQ's MLP (`AccuracyPredictor`, APQ Sec. 3.3) fitted on the same
subnets reach the same held-out ranking by different routes (axis-aligned splits of the encoding and costs
against a smooth function of the one-hot encoding), so their errors are partly independent and their mean
ranks better than either (averaging of diverse regressors: Breiman 1996, "Stacked regressions"; Dietterich
2000, "Ensemble methods in machine learning"). The members predict on different scales (trees over a
least-squares line, the MLP on standardised targets), so each member's output is standardised on the fit set
before averaging, and every member weighs the same:

    z_k(x) = (p_k(x) - m_k) / s_k,   m_k, s_k = mean, std of p_k over the training configs
    prediction(x) = y_mean + y_std * mean_k z_k(x)

with y_mean, y_std the mean and std of the training values: an increasing affine map of the mean of the
standardised predictions (the ranking is that mean's), kept in the fitted units so that a constraint on
predicted accuracy and the RMSE in `report` read as for the other kinds.

Like the other predictors, `fit` holds out `holdout` of the samples (one seeded split for all members, which
are fitted with no hold-out of their own) and scores the ensemble and each member on them in `report`.
Saved as one directory: `predictor.json` (kind, space, the members' directories and standardisation) and one
saved predictor per `member-NN/`; `load_predictor` reads it without the training data.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qcompile.config import SubnetConfig
from qcompile.errors import CheckpointError, ConfigError
from qcompile.search.predictors.metrics import fit_split, heldout_report, log_heldout
from qcompile.search.predictors.saved import FORMAT, JSON_FILE, read_doc, register_kind, space_dict
from qcompile.utils.io import atomic_write_text

log = logging.getLogger(__name__)

KIND = "ensemble-accuracy-predictor"
#: the default members' settings: what 5-fold CV chose on 2,300 measured subnets of the demo supernet
#: (docs/search.md, "2,300 fit subnets"): trees of depth 3, 1000 of them, shrinkage 0.02; APQ's 3 x 400 MLP
DEFAULT_GBT = {"max_depth": 3, "n_estimators": 1000, "learning_rate": 0.02}
DEFAULT_MLP = {"hidden": (400, 400, 400), "bit_hidden": (400,), "epochs": 300, "weight_decay": 1e-4}


def default_members(space: Any, seed: int = 0) -> list[Any]:
    """The boosted trees and APQ's MLP with `DEFAULT_GBT` / `DEFAULT_MLP`, unfitted, with no hold-out of their own."""
    from qcompile.search.predictors.boosted import BoostedOptions, BoostedPredictor
    from qcompile.search.predictors.mlp import AccuracyPredictor, PredictorOptions

    return [
        BoostedPredictor(space, seed=seed, options=BoostedOptions(holdout=0.0, **DEFAULT_GBT)),
        AccuracyPredictor(space, seed=seed, options=PredictorOptions(holdout=0.0, **DEFAULT_MLP)),
    ]


def _bitops(space: Any, configs: list[SubnetConfig]) -> np.ndarray | None:
    if not hasattr(space, "stages"):  # the cost model's layer walk reads the stages
        return None
    from qcompile.search.cost import bitops

    return np.array([float(bitops(space, c)) for c in configs])


def _scale(v: np.ndarray) -> tuple[float, float]:
    """(mean, std) of `v`; a constant (std 0) gets std 1, so it adds nothing to the ranking and divides by no 0."""
    std = float(np.std(v))
    return float(np.mean(v)), std if std > 1e-12 else 1.0


class EnsemblePredictor:
    """The mean of `members`' predictions, each standardised on the fit set (module docstring).

    `members`: unfitted predictors of `space` (anything with `fit(configs, values)`, `predict(configs)` and
    `save(dir)` that `load_predictor` reads back), each with `holdout` 0; default `default_members(space,
    seed)`: boosted trees and APQ's MLP. `report` (after `fit`): held-out `kendall_tau`, `pairwise_accuracy`,
    `rmse` of the ensemble, `n_train`, `n_holdout`, the members' kinds and each member's held-out scores.
    """

    kind = KIND

    def __init__(self, space: Any, members: Sequence[Any] | None = None, seed: int = 0, holdout: float = 0.2) -> None:
        for attr in ("genes", "num_layer_slots", "bit_choices"):  # what search.encoding reads
            if not hasattr(space, attr):
                raise ConfigError("space", type(space).__name__, f"a search space with `{attr}` (qc.spaces.*)")
        if not 0 <= holdout < 1:
            raise ConfigError("EnsemblePredictor.holdout", holdout, "a fraction in [0, 1)")
        members = default_members(space, seed) if members is None else list(members)
        if not members:
            raise ConfigError("EnsemblePredictor.members", members, "at least one predictor")
        for i, m in enumerate(members):
            if not all(callable(getattr(m, f, None)) for f in ("fit", "predict", "save")):
                raise ConfigError(f"EnsemblePredictor.members[{i}]", type(m).__name__,
                                  "a predictor with fit, predict and save (qs.BoostedPredictor, qs.AccuracyPredictor)")
            if space_dict(getattr(m, "space", None)) != space_dict(space):
                raise ConfigError(f"EnsemblePredictor.members[{i}].space", space_dict(getattr(m, "space", None)),
                                  f"this space {space_dict(space)}")
            opts = getattr(m, "options", None)
            if getattr(opts, "holdout", 0.0) != 0.0:
                raise ConfigError(f"EnsemblePredictor.members[{i}].options.holdout", opts.holdout,
                                  "0.0 (the ensemble holds out one split for all its members)")
        self.space, self.seed, self.holdout = space, int(seed), float(holdout)
        self.members = members
        self.member_scale: list[tuple[float, float]] = [(0.0, 1.0)] * len(members)
        self.target_scale: tuple[float, float] = (0.0, 1.0)
        self.report: dict[str, Any] = {}
        self._fitted = False

    # ------------------------------------------------------------------------------------------
    def fit(self, configs: Sequence[SubnetConfig], values: Sequence[float] | np.ndarray, *,
            members_fitted: bool = False) -> EnsemblePredictor:
        """Fit every member on the training part; standardise each on its own training predictions; score the
        ensemble and the members on the held-out part (`report`).

        `members_fitted`: the members were already fitted on exactly the training part of these configs (with
        `holdout` 0: all of them); only the standardisation is computed (`benchmarks/predictor.py` combines the
        members it has fitted and cross-validated this way)."""
        configs, y, hold, train = fit_split(configs, values, self.holdout, self.seed, min_train=4)
        tr = [configs[i] for i in np.sort(train)]
        ytr = y[np.sort(train)]
        if not members_fitted:
            for m in self.members:
                m.fit(tr, ytr)
        self.member_scale = [_scale(np.asarray(m.predict(tr), dtype=np.float64)) for m in self.members]
        self.target_scale = _scale(ytr)
        self._fitted = True
        self.report = {"n_train": int(len(train)), "n_holdout": int(len(hold)), "members": self.member_kinds()}
        if len(hold) >= 2:
            held = [configs[i] for i in hold]
            per = self._member_predictions(held)
            self.report.update(heldout_report(self._combine(per), y[hold], bitops=_bitops(self.space, held)))
            self.report["member_reports"] = [heldout_report(p, y[hold]) for p in per]
            log_heldout(log, "ensemble predictor", self.report)
        return self

    def member_kinds(self) -> list[str]:
        return [getattr(m, "kind", None) or "mlp-accuracy-predictor" for m in self.members]

    def _member_predictions(self, configs: list[SubnetConfig]) -> list[np.ndarray]:
        return [np.asarray(m.predict(configs), dtype=np.float64) for m in self.members]

    def _combine(self, per: list[np.ndarray]) -> np.ndarray:
        z = np.mean([(p - mu) / sd for p, (mu, sd) in zip(per, self.member_scale)], axis=0)
        return self.target_scale[0] + self.target_scale[1] * z

    def predict(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        """Predicted value of each config (1-D float64, in the fitted units; module docstring)."""
        configs = list(configs)
        if not configs:
            return np.zeros(0)
        if not self._fitted:
            raise ConfigError("EnsemblePredictor", "not fitted", "call .fit(configs, values) or load_predictor first")
        return self._combine(self._member_predictions(configs))

    __call__ = predict

    # ------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Directory `path`: one saved predictor per `member-NN/` and `predictor.json` listing them (kind,
        directory, standardisation), with the space, target scale and report."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        listed = []
        for i, (m, (mu, sd)) in enumerate(zip(self.members, self.member_scale)):
            sub = f"member-{i:02d}"
            m.save(path / sub)
            kind = json.loads((path / sub / JSON_FILE).read_text()).get("kind")
            listed.append({"dir": sub, "kind": kind, "mean": mu, "std": sd})
        doc = {"format": FORMAT, "kind": KIND, "space": space_dict(self.space), "seed": self.seed,
               "holdout": self.holdout, "members": listed,
               "target_scale": {"mean": self.target_scale[0], "std": self.target_scale[1]}, "report": self.report}
        atomic_write_text(path / JSON_FILE, json.dumps(doc, indent=2))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, space: Any = None) -> EnsemblePredictor:
        """Read an ensemble written by `save` (each member by `load_predictor`); with `space`, refuse
        (ConfigError) one fitted for another space."""
        from qcompile.search.predictors.saved import load_predictor, saved_space

        path = Path(path)
        doc = read_doc(path, KIND, weights=False)
        space = saved_space(doc, space, path)
        listed = doc.get("members") or []
        if not listed:
            raise CheckpointError(f"{path / JSON_FILE}: an ensemble with no members")
        members = [load_predictor(path / entry["dir"], space=space) for entry in listed]
        ens = cls(space, members=members, seed=int(doc["seed"]), holdout=float(doc["holdout"]))
        ens.member_scale = [(float(e["mean"]), float(e["std"])) for e in listed]
        ens.target_scale = (float(doc["target_scale"]["mean"]), float(doc["target_scale"]["std"]))
        ens.report = doc.get("report", {})
        ens._fitted = True
        return ens

    def __repr__(self) -> str:
        return (f"EnsemblePredictor(space={getattr(self.space, 'name', '?')}, members={self.member_kinds()}, "
                f"report={self.report})")


register_kind(KIND, EnsemblePredictor)

__all__ = ["DEFAULT_GBT", "DEFAULT_MLP", "EnsemblePredictor", "default_members"]
