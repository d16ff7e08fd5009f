"""Objectives: named functions from a list of `SubnetConfig` to a 1-D array, with a direction.

Search algorithms see only objectives and the space's encoding (ARCHITECTURE.md, "Public API,
second part"). Values are kept in the objective's own units and direction: accuracy is stored as
accuracy, not negated; algorithms that minimise convert internally with `Objective.minimised`.
"""

from __future__ import annotations

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


def latency(table) -> Objective:
    """Predicted end-to-end latency (ms) from a `qcompile.search.LatencyTable` (to minimise).

    The table's kernel sums plus fitted overheads (OFA/APQ lookup tables at nn-Meter's kernel level);
    configs of another space raise `ConfigError` from the table.
    """
    from qcompile.search.latency import LatencyTable

    if not isinstance(table, LatencyTable):
        raise ConfigError("table", type(table).__name__, "a qcompile.search.LatencyTable (LatencyTable.build/load)")
    return Objective("latency", lambda cfgs: table.predict_many(cfgs), direction="min", unit="ms")
