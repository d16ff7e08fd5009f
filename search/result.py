"""`SearchResult`: every evaluated config with its objective values, the Pareto set, the best, hypervolume.

Values are kept in each objective's own units and direction (accuracy is accuracy, not negated);
non-domination and hypervolume work on the min-oriented values `sign * F` internally
(ARCHITECTURE.md "Public API, second part"). On disk (`save`/`load`, atomic writes):

- `search.json`: algorithm, seed, options, command, space, objectives, constraints, every evaluated
  config with its values and generation, the fixed reference point and the hypervolume after each
  generation, the Pareto indices and the best index;
- `pareto/NNN.json`: the Pareto set, best first on the first objective, each a `SubnetConfig` JSON
  (`qc.SubnetConfig.from_json`, `qcompile extract RUN --config DIR/pareto/003.json`);
- `pareto.png`: all evaluated points and the Pareto front of the first two objectives.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qcompile.config import SubnetConfig
from qcompile.errors import CheckpointError, ConfigError
from qcompile.utils.io import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

SEARCH_FILE = "search.json"
PARETO_DIR = "pareto"
PLOT_FILE = "pareto.png"


@dataclass(frozen=True)
class ObjectiveInfo:
    """Name, direction ("min" | "max") and unit of one objective of a finished search."""

    name: str
    direction: str
    unit: str = ""

    @property
    def sign(self) -> float:
        return 1.0 if self.direction == "min" else -1.0


@dataclass(frozen=True)
class ConstraintInfo:
    """`name <= limit` for a "min" objective, `name >= limit` for a "max" one, in the objective's unit."""

    name: str
    direction: str
    limit: float
    unit: str = ""

    def satisfied(self, values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        return v <= self.limit if self.direction == "min" else v >= self.limit

    def __str__(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.name}{'<=' if self.direction == 'min' else '>='}{self.limit:g}{unit}"


def nondominated(Fmin: np.ndarray) -> np.ndarray:
    """Mask of rows of `Fmin` (to be minimised) that no other row dominates (<= everywhere, < somewhere)."""
    Fmin = np.asarray(Fmin, dtype=np.float64)
    n = Fmin.shape[0]
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        if not mask[i]:
            continue
        le = np.all(Fmin <= Fmin[i], axis=1)
        lt = np.any(Fmin < Fmin[i], axis=1)
        if np.any(le & lt):
            mask[i] = False
            continue
        # i dominates these: drop them now (cheaper than testing each later)
        dominated = np.all(Fmin[i] <= Fmin, axis=1) & np.any(Fmin[i] < Fmin, axis=1)
        mask[dominated] = False
    return mask


def _hv(Fmin: np.ndarray, ref_min: np.ndarray) -> float:
    from pymoo.indicators.hv import HV

    Fmin = np.asarray(Fmin, dtype=np.float64).reshape(-1, len(ref_min))
    Fmin = Fmin[np.all(Fmin < ref_min, axis=1)]
    if Fmin.shape[0] == 0:
        return 0.0
    return float(HV(ref_point=np.asarray(ref_min, dtype=np.float64))(Fmin))


@dataclass
class SearchResult:
    """What a search evaluated. `configs[i]` has values `F[i]` (one column per objective, own units)."""

    configs: list[SubnetConfig]
    F: np.ndarray
    objectives: tuple[ObjectiveInfo, ...]
    constraints: tuple[ConstraintInfo, ...] = ()
    G: np.ndarray | None = None  # constraint values, n x len(constraints), own units
    generation: np.ndarray | None = None  # generation of each evaluation (0 = initial population)
    algorithm: str = ""
    seed: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    command: str | None = None
    space: dict[str, Any] | None = None
    ref_point: np.ndarray | None = None  # fixed per run, own units: the hypervolume history uses it

    def __post_init__(self) -> None:
        n, m = len(self.configs), len(self.objectives)
        self.F = np.asarray(self.F, dtype=np.float64).reshape(n, m)
        c = len(self.constraints)
        self.G = np.zeros((n, 0)) if self.G is None else np.asarray(self.G, dtype=np.float64).reshape(n, c)
        self.generation = (
            np.zeros(n, dtype=np.int64) if self.generation is None else np.asarray(self.generation, dtype=np.int64)
        )
        if self.ref_point is None and n:
            self.ref_point = self.default_ref_point()
        elif self.ref_point is not None:
            self.ref_point = self._check_ref(self.ref_point)

    # -- views ------------------------------------------------------------------------------------
    @property
    def signs(self) -> np.ndarray:
        return np.array([o.sign for o in self.objectives])

    @property
    def Fmin(self) -> np.ndarray:
        """`F` made min-oriented (max objectives negated): what non-domination and hypervolume use."""
        return self.F * self.signs

    @property
    def feasible(self) -> np.ndarray:
        """Mask of evaluations that meet every constraint."""
        ok = np.ones(len(self.configs), dtype=bool)
        for j, c in enumerate(self.constraints):
            ok &= c.satisfied(self.G[:, j])
        return ok

    def _pareto_indices(self, upto: int | None = None) -> np.ndarray:
        sel = self.feasible.copy()
        if upto is not None:
            sel &= self.generation <= upto
        idx = np.flatnonzero(sel)
        if idx.size == 0:
            return idx
        idx = idx[nondominated(self.Fmin[idx])]
        order = np.lexsort(self.Fmin[idx].T[::-1])  # best first on the first objective, ties by the next
        return idx[order]

    @property
    def pareto_indices(self) -> list[int]:
        """Indices (into `configs`) of the feasible non-dominated evaluations, best first on objective 0."""
        return [int(i) for i in self._pareto_indices()]

    @property
    def pareto(self) -> list[SubnetConfig]:
        """The Pareto set: feasible configs no other feasible config dominates under the directions."""
        return [self.configs[i] for i in self.pareto_indices]

    @property
    def pareto_F(self) -> np.ndarray:
        return self.F[self.pareto_indices]

    @property
    def best_index(self) -> int:
        """The best feasible evaluation: the optimum of the first objective, ties broken by the next ones.

        With one objective this is its optimum; with several it is the Pareto member that is best on
        the first objective (e.g. the most accurate subnet among those meeting every constraint).
        """
        idx = self._pareto_indices()
        if idx.size == 0:
            raise ConfigError(
                "SearchResult.best", f"{len(self.configs)} evaluations",
                f"at least one meeting {', '.join(map(str, self.constraints)) or 'the constraints'}",
            )
        return int(idx[0])

    @property
    def best(self) -> SubnetConfig:
        return self.configs[self.best_index]

    @property
    def n_evals(self) -> int:
        return len(self.configs)

    # -- hypervolume ------------------------------------------------------------------------------
    def _check_ref(self, ref_point) -> np.ndarray:
        ref = np.asarray(ref_point, dtype=np.float64).reshape(-1)
        if ref.shape[0] != len(self.objectives) or not np.all(np.isfinite(ref)):
            raise ConfigError(
                "ref_point", list(np.atleast_1d(ref_point)), f"{len(self.objectives)} finite values "
                f"({', '.join(o.name for o in self.objectives)}, in their own units)",
            )
        return ref

    def default_ref_point(self) -> np.ndarray:
        """The worst value of each objective over all evaluations, 10 % of its range further out."""
        if not len(self.configs):
            raise ConfigError("ref_point", None, "a reference point (no evaluations to derive one)")
        Fmin = self.Fmin
        lo, hi = Fmin.min(axis=0), Fmin.max(axis=0)
        span = np.where(hi > lo, hi - lo, np.maximum(np.abs(hi), 1.0))
        return (hi + 0.1 * span) * self.signs

    def hypervolume(self, ref_point: Sequence[float] | np.ndarray | None = None, upto: int | None = None) -> float:
        """Hypervolume of the feasible Pareto front against `ref_point` (own units; default `self.ref_point`).

        Computed min-oriented (max objectives and their reference negated) with pymoo's HV; points
        that do not dominate the reference point add nothing. `upto`: only generations <= upto.
        """
        ref = self.ref_point if ref_point is None else self._check_ref(ref_point)
        if ref is None:
            return 0.0
        idx = self._pareto_indices(upto)
        return _hv(self.Fmin[idx], ref * self.signs)

    def hypervolume_history(self, ref_point=None) -> list[float]:
        """Hypervolume after each generation, against one fixed reference point."""
        gens = sorted({int(g) for g in self.generation})
        return [self.hypervolume(ref_point, upto=g) for g in gens]

    # -- persistence ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        gens = sorted({int(g) for g in self.generation})
        evals = []
        for i, cfg in enumerate(self.configs):
            evals.append({
                "config": cfg.to_dict(),
                "hash": cfg.stable_hash(),
                "values": {o.name: float(self.F[i, j]) for j, o in enumerate(self.objectives)},
                "constraints": {c.name: float(self.G[i, j]) for j, c in enumerate(self.constraints)},
                "generation": int(self.generation[i]),
            })
        pareto = self.pareto_indices
        try:
            best = self.best_index
        except ConfigError:
            best = None
        return {
            "format": 1,
            "algorithm": self.algorithm,
            "seed": self.seed,
            "options": self.options,
            "command": self.command,
            "space": self.space,
            "objectives": [asdict(o) for o in self.objectives],
            "constraints": [asdict(c) for c in self.constraints],
            "n_evals": len(self.configs),
            "ref_point": None if self.ref_point is None else [float(v) for v in self.ref_point],
            "hypervolume": [
                {"generation": g, "evaluations": int(np.sum(self.generation <= g)), "hypervolume": hv}
                for g, hv in zip(gens, self.hypervolume_history())
            ],
            "pareto": pareto,
            "best": best,
            "evaluations": evals,
        }

    def save(self, out: str | os.PathLike, measured: Sequence[tuple[float, float, str]] | None = None) -> Path:
        """Write `search.json`, `pareto/NNN.json` and `pareto.png` under `out` (atomic writes); return `out`."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        pdir = out / PARETO_DIR
        pdir.mkdir(exist_ok=True)
        for old in pdir.glob("[0-9][0-9][0-9].json"):
            old.unlink()
        for k, cfg in enumerate(self.pareto):
            atomic_write_text(pdir / f"{k:03d}.json", cfg.to_json())
        self.plot(out / PLOT_FILE, measured=measured)
        atomic_write_text(out / SEARCH_FILE, json.dumps(self.to_dict(), indent=1))
        log.info("search written to %s (%d evaluations, %d on the Pareto front)", out, self.n_evals, len(self.pareto))
        return out

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> SearchResult:
        try:
            objectives = tuple(ObjectiveInfo(**o) for o in doc["objectives"])
            constraints = tuple(ConstraintInfo(**c) for c in doc.get("constraints", []))
            evals = doc["evaluations"]
            configs = [SubnetConfig.from_dict(e["config"]) for e in evals]
            F = [[e["values"][o.name] for o in objectives] for e in evals]
            G = [[e["constraints"][c.name] for c in constraints] for e in evals]
            gen = [e.get("generation", 0) for e in evals]
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{SEARCH_FILE}: missing or malformed field {e}") from e
        return cls(
            configs=configs, F=np.asarray(F, dtype=np.float64).reshape(len(configs), len(objectives)),
            objectives=objectives, constraints=constraints,
            G=np.asarray(G, dtype=np.float64).reshape(len(configs), len(constraints)),
            generation=np.asarray(gen, dtype=np.int64), algorithm=doc.get("algorithm", ""), seed=doc.get("seed"),
            options=doc.get("options") or {}, command=doc.get("command"), space=doc.get("space"),
            ref_point=None if doc.get("ref_point") is None else np.asarray(doc["ref_point"]),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> SearchResult:
        """Read a directory written by `save` (or its `search.json`)."""
        p = Path(path)
        if p.is_dir():
            p = p / SEARCH_FILE
        if not p.is_file():
            raise CheckpointError(f"{p}: missing (written by SearchResult.save / `qcompile search`)")
        try:
            doc = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{p}: corrupt JSON ({e.msg} at line {e.lineno})") from e
        return cls.from_dict(doc)

    # -- plot -------------------------------------------------------------------------------------
    def plot(self, path: str | os.PathLike, measured: Sequence[tuple[float, float, str]] | None = None) -> Path:
        """Scatter of the first two objectives (all evaluations grey, the Pareto front coloured).

        With one objective: objective against evaluation index. `measured`: extra `(x, y, label)`
        points in the plotted axes' units (the demo marks measured subnets this way).
        """
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4.2))
        par = self.pareto_indices
        o = self.objectives
        if len(o) >= 2:
            xj, yj = 1, 0  # cost on x, first objective (e.g. accuracy) on y
            ax.scatter(self.F[:, xj], self.F[:, yj], s=6, c="0.75", label=f"evaluated ({self.n_evals})")
            pf = self.F[par]
            order = np.argsort(pf[:, xj])
            ax.plot(pf[order, xj], pf[order, yj], "o-", ms=4, c="tab:blue", label=f"Pareto ({len(par)})")
            ax.set_xlabel(f"{o[xj].name} ({o[xj].unit})" if o[xj].unit else o[xj].name)
            ax.set_ylabel(f"{o[yj].name} ({o[yj].unit})" if o[yj].unit else o[yj].name)
        else:
            ax.scatter(np.arange(self.n_evals), self.F[:, 0], s=6, c="0.6", label="evaluated")
            if par:
                ax.scatter(par, self.F[par, 0], s=30, c="tab:blue", label="best")
            ax.set_xlabel("evaluation")
            ax.set_ylabel(o[0].name)
        for x, y, label in measured or ():
            ax.scatter([x], [y], marker="*", s=120, c="tab:red", zorder=5)
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        title = f"{self.algorithm} seed {self.seed}"
        if self.constraints:
            title += " s.t. " + ", ".join(map(str, self.constraints))
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        return atomic_write_bytes(Path(path), buf.getvalue())


__all__ = ["SearchResult", "ObjectiveInfo", "ConstraintInfo", "nondominated"]
