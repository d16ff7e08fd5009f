"""Objectives: named functions from a list of `SubnetConfig` to a 1-D array, with a direction.

Search algorithms see only objectives and the space's encoding (ARCHITECTURE.md, "Public API,
second part"). Values are kept in the objective's own units and direction: accuracy is stored as
accuracy, not negated; algorithms that minimise convert internally with `Objective.minimised`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from qcompile.config import SubnetConfig
from qcompile.errors import ConfigError

DIRECTIONS = ("min", "max")


@dataclass(frozen=True)
class Objective:
    """`fn(configs) -> values` (one value per config, in `unit`), to be minimised or maximised."""

    name: str
    fn: Callable[[Sequence[SubnetConfig]], np.ndarray]
    direction: str = "min"
    unit: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("Objective.name", self.name, "a non-empty string")
        if self.direction not in DIRECTIONS:
            raise ConfigError("Objective.direction", self.direction, "'min' or 'max'")
        if not callable(self.fn):
            raise ConfigError("Objective.fn", self.fn, "a callable mapping a list of SubnetConfig to values")

    def __call__(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        configs = list(configs)
        values = np.asarray(self.fn(configs), dtype=np.float64).reshape(-1)
        if values.shape[0] != len(configs):
            raise ConfigError(
                f"objective {self.name!r}", f"{values.shape[0]} values", f"one value per config ({len(configs)})"
            )
        if not np.all(np.isfinite(values)):
            raise ConfigError(f"objective {self.name!r}", values.tolist(), "finite values")
        return values

    @property
    def sign(self) -> float:
        """+1 for "min", -1 for "max": `sign * value` is to be minimised."""
        return 1.0 if self.direction == "min" else -1.0

    def minimised(self, values: np.ndarray) -> np.ndarray:
        """Values turned into a quantity to minimise (for pymoo and hypervolume)."""
        return self.sign * np.asarray(values, dtype=np.float64)


# ------------------------------------------------------------------------------------------------
# factories; `latency(table)` (the latency model) is at the end of this file.
# ------------------------------------------------------------------------------------------------
def _cost_objective(space, name: str, field: str, unit: str, fixed: dict[str, int] | None) -> Objective:
    from qcompile.search.cost import cost_report

    if not hasattr(space, "stages"):  # the layer walk reads the stages (a fixed model has none)
        raise ConfigError(f"objectives.{name}(space)", type(space).__name__, "a search space (qc.spaces.*)")

    fixed_items = tuple(sorted((fixed or {}).items()))

    @functools.lru_cache(maxsize=1 << 16)
    def one(cfg: SubnetConfig) -> float:  # configs are frozen: a search re-asks for parents often
        return float(getattr(cost_report(space, cfg, dict(fixed_items)), field))

    def fn(configs: Sequence[SubnetConfig]) -> np.ndarray:
        return np.array([one(c) for c in configs], dtype=np.float64)

    return Objective(name, fn, "min", unit)


def bitops(space, fixed: dict[str, int] | None = None) -> Objective:
    """BitOPs of the quantized layers, `sum m*n*MACs` (QFA Sec. 5), minimised."""
    return _cost_objective(space, "bitops", "bitops", "BitOPs", fixed)


def qfa_flops(space, fixed: dict[str, int] | None = None) -> Objective:
    """QFA's complexity measure: FLOPs (MACs) of float layers + BitOPs of quantized layers / 64 (QFA Sec. 5)."""
    return _cost_objective(space, "qfa_flops", "qfa_flops", "FLOPs", fixed)


def model_bits(space, fixed: dict[str, int] | None = None) -> Objective:
    """Weight storage in bits (float layers at 32 bits), minimised."""
    return _cost_objective(space, "model_bits", "model_bits", "bits", fixed)


def macs(space) -> Objective:
    """Multiply-accumulates of the subnet regardless of bits, minimised."""
    return _cost_objective(space, "macs", "macs", "MACs", None)


def accuracy(predictor, name: str = "accuracy") -> Objective:
    """Predicted (or measured) top-1 accuracy, maximised: `predictor.predict(configs) -> np.ndarray`.

    Any object with `predict` works: `qs.AccuracyPredictor` (APQ Sec. 3.2 MLP on the one-hot
    encoding), a measured-accuracy evaluator, or a test stand-in.
    """
    predict = getattr(predictor, "predict", None)
    if not callable(predict):
        raise ConfigError(
            "objectives.accuracy(predictor)", type(predictor).__name__, "an object with .predict(configs) -> np.ndarray"
        )
    return Objective(name, lambda configs: np.asarray(predict(list(configs)), dtype=np.float64), "max", "top-1")


def check_objectives(objectives, what: str = "objectives") -> list[Objective]:
    """A non-empty list of `Objective` with distinct names (one Objective alone is accepted)."""
    if isinstance(objectives, Objective):
        objectives = [objectives]
    if isinstance(objectives, (str, bytes)) or not isinstance(objectives, Sequence):
        raise ConfigError(what, type(objectives).__name__, "a list of qcompile.search.Objective")
    objectives = list(objectives)
    if not objectives:
        raise ConfigError(what, "[]", "at least one Objective")
    for o in objectives:
        if not isinstance(o, Objective):
            raise ConfigError(what, type(o).__name__, "qcompile.search.Objective instances")
    names = [o.name for o in objectives]
    if len(set(names)) != len(names):
        raise ConfigError(what, names, "objectives with distinct names")
    return objectives


def latency(table) -> Objective:
    """Predicted end-to-end latency (ms) from a `qcompile.search.LatencyTable` (to minimise).

    The table's kernel sums plus fitted overheads (OFA/APQ lookup tables at nn-Meter's kernel level);
    configs of another space raise `ConfigError` from the table.
    """
    from qcompile.search.latency import LatencyTable

    if not isinstance(table, LatencyTable):
        raise ConfigError("table", type(table).__name__, "a qcompile.search.LatencyTable (LatencyTable.build/load)")
    return Objective("latency", lambda cfgs: table.predict_many(cfgs), direction="min", unit="ms")
