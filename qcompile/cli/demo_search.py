"""The demo's search step: pick the deployed subnet by search under a budget on this host.

Cheap by design (the demo must end within 15 minutes on 2 cores): the objectives are predicted
accuracy and a cost model, and only a few subnets are measured.

- Accuracy predictor: `qs.AccuracyPredictor` when this build has it and enough subnets were
  measured, else a least-squares line of measured accuracy on log BitOPs fitted to the subnets the
  demo measured in its step 2 (few points: a placeholder, said so in the report).
- Budget: predicted latency on this host from `qs.LatencyTable` when this build has it,
  else BitOPs. The table is cached across runs (`DemoSearchSettings.table_cache`, default
  `$QCOMPILE_CACHE_DIR` or `~/.cache/qcompile`, one file per space, target and thread count): a
  table of another CPU, target or version is refused by `LatencyTable.load` and rebuilt; an
  interrupted build resumes. The limit is the median of the demo's random subnets, so the search has to find a
  better subnet at the cost of a typical one.
- Search: NSGA-II (QFA Sec. 4) over (predicted accuracy, budget objective) with the budget as a
  constraint; the pick is `res.best`, the most accurate predicted subnet within the budget. The pick
  and a few other Pareto subnets are measured and drawn on the Pareto plot (`search/pareto.png`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSearchSettings:
    n_evals: int = 400
    measured: int = 3  # Pareto subnets measured (the pick included)
    bits: tuple[int, ...] = (2, 3, 4)
    min_rows_for_mlp: int = 24  # below this many measured subnets the MLP predictor is not fitted
    table_cache: str | None = None  # latency table cache folder; None: $QCOMPILE_CACHE_DIR or ~/.cache/qcompile
    # Subnets the latency table lowers and times on a cold cache: covering subnets (each all blocks at one
    # kernel/expand choice, full depth) + random ones for the overhead fit. Each is a full TVM build of a
    # deepest-architecture network (~20 CPU-s), so the table dominates the demo's search step; kernels
    # of the uncovered choices are predicted by the table's kernel model (docs/search.md).
    table_cover: int = 6
    table_fit: int = 3

    @classmethod
    def quick(cls) -> DemoSearchSettings:
        return cls(n_evals=80, measured=2, table_cover=2, table_fit=2)


class LogBitopsPredictor:
    """accuracy ~ a + b * log(BitOPs), least squares on measured subnets (a placeholder predictor)."""

    def __init__(self, space, configs, accuracies) -> None:
        from qcompile.search.cost import bitops

        self.space, self._bitops = space, bitops
        x = np.log([max(bitops(space, c), 1) for c in configs])
        A = np.column_stack([np.ones_like(x), x])
        self.coef = np.linalg.lstsq(A, np.asarray(accuracies, dtype=np.float64), rcond=None)[0]

    def predict(self, configs) -> np.ndarray:
        x = np.log([max(self._bitops(self.space, c), 1) for c in configs])
        return self.coef[0] + self.coef[1] * x


@dataclass
class SearchPick:
    row: dict[str, Any]
    sub: Any
    predictor: str
    budget: str
    limit: float
    unit: str
    predicted_accuracy: float
    predicted_cost: float
    measured: list[dict[str, Any]] = field(default_factory=list)
    table: Any = None  # the LatencyTable when latency was the budget
    seconds: float = 0.0

    def predicted_latency_ms(self) -> float | None:
        return None if self.table is None else float(self.table.predict(self.row["config"]))


def _predictor(space, rows, settings: DemoSearchSettings):
    import qcompile.search as qs

    cfgs, accs = [r["config"] for r in rows], [r["accuracy"] for r in rows]
    cls = getattr(qs, "AccuracyPredictor", None)
    if cls is not None and len(rows) >= settings.min_rows_for_mlp:
        return cls(space, seed=0).fit(cfgs, accs), "qs.AccuracyPredictor (MLP on the one-hot encoding)"
    return LogBitopsPredictor(space, cfgs, accs), f"least squares of accuracy on log BitOPs ({len(rows)} subnets)"


def table_path(space, cache_dir: str | None = None, target: str = "x86", num_threads: int = 1) -> Path:
    """Where the latency table of `space` on this host is cached (one file per space, target and threads)."""
    root = Path(cache_dir or os.environ.get("QCOMPILE_CACHE_DIR") or Path.home() / ".cache" / "qcompile")
    digest = hashlib.sha256(json.dumps(space.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    return root / f"latency-{target}-{num_threads}t-{digest}.json"


def load_or_build_table(space, path: Path, max_cover: int = 6, n_fit: int = 3):
    """The cached table at `path` (completed if an earlier build was interrupted), else a new one of `max_cover`
    covering + `n_fit` random subnets saved there (`LatencyTable.build`).

    A cached table of another CPU, target or version fails `LatencyTable.load`'s check and is rebuilt.
    """
    from qcompile.errors import ConfigError
    from qcompile.search import LatencyTable

    old = None
    if path.is_file():
        try:
            old = LatencyTable.load(path)
            old.check("x86", 1, space)
        except ConfigError as e:
            log.info("latency table cache %s not usable (%s): rebuilding", path, str(e).splitlines()[0])
            old = None
    # with a complete cached table this times nothing (every subnet is already in it)
    return LatencyTable.build(space, target="x86", num_threads=1, table=old, path=path, progress=old is None,
                              max_cover=max_cover, n_fit=n_fit)


def _budget(space, rows, settings: DemoSearchSettings):
    """(objective, limit, description, table or None): predicted latency when available, else BitOPs."""
    import qcompile.search as qs

    random_rows = [r for r in rows if r["name"].startswith("random")] or rows
    table_cls = getattr(qs, "LatencyTable", None)
    factory = getattr(qs.objectives, "latency", None)
    if table_cls is not None and factory is not None:
        try:
            table = load_or_build_table(space, table_path(space, settings.table_cache), settings.table_cover,
                                        settings.table_fit)
            obj = factory(table)
            limit = float(np.median(obj([r["config"] for r in random_rows])))
            return obj, limit, "predicted x86 latency on this host (qs.LatencyTable, 1 thread)", table
        except Exception as e:  # the latency model is optional for the demo; say why it was not used
            log.warning("latency table unavailable (%s): BitOPs is the budget", str(e).splitlines()[0])
    obj = qs.objectives.bitops(space)
    limit = float(np.median(obj([r["config"] for r in random_rows])))
    return obj, limit, "BitOPs (no latency table in this build: BitOPs stands in for latency)", None


def pick_subnet(space, qnet, data, rows, out: Path, calib_batches: int, evaluate: Callable, seed: int = 0,
                settings: DemoSearchSettings | None = None) -> SearchPick:
    """Search, measure the pick and a few Pareto subnets, save `out/` (search.json, pareto/, pareto.png).

    `evaluate(qnet, cfg, data, calib_batches) -> (accuracy, calibrated subnet)` measures one config
    (the demo's `evaluate_config`).
    """
    import qcompile.search as qs
    from qcompile.search.cost import cost_report

    s = settings or DemoSearchSettings()
    pred, pred_name = _predictor(space, rows, s)
    acc = qs.objectives.accuracy(pred, name="predicted accuracy")
    budget, limit, how, table = _budget(space, rows, s)
    log.info("  searching: NSGA-II, %d evaluations, %s <= %.4g %s", s.n_evals, budget.name, limit, budget.unit)
    res = qs.nsga2(space, [acc, budget], n_evals=s.n_evals, seed=seed, bits=s.bits, constraints=[(budget, limit)])
    pareto = res.pareto_indices
    picks = [res.best_index]
    if s.measured > 1 and len(pareto) > 1:  # spread the others over the front: cheapest, then the middle
        by_cost = sorted(pareto, key=lambda i: res.F[i, 1])
        for i in (by_cost[0], by_cost[len(by_cost) // 2]):
            if i not in picks and len(picks) < s.measured:
                picks.append(i)
    measured, chosen_sub = [], None
    for k, i in enumerate(picks):
        cfg = res.configs[i]
        a, sub = evaluate(qnet, cfg, data, calib_batches)
        measured.append({"config": cfg, "predicted": float(res.F[i, 0]), "measured": a, "cost": float(res.F[i, 1]),
                         "label": "pick" if k == 0 else f"pareto #{pareto.index(i)}"})
        if k == 0:
            chosen_sub = sub
    res.save(out, measured=[(m["cost"], m["measured"], m["label"] + " (measured)") for m in measured])
    best = res.configs[res.best_index]
    cost = cost_report(space, best)
    row = {"name": "searched (NSGA-II)", "config": best, "accuracy": measured[0]["measured"], "bitops": cost.bitops,
           "macs": cost.macs, "model_kbit": cost.model_bits / 1000, "resolution": best.resolution}
    log.info("  picked %s: predicted %.2f %%, measured %.2f %%, %s %.4g", best.stable_hash(),
             100 * measured[0]["predicted"], 100 * measured[0]["measured"], budget.name, measured[0]["cost"])
    return SearchPick(row, chosen_sub, pred_name, how, limit, budget.unit, measured[0]["predicted"],
                      measured[0]["cost"], measured, table)


def report_section(pick: SearchPick, measured_ms: float | None, search_dir: str = "search") -> str:
    """Markdown: budget, predictor, predicted against measured accuracy and latency, the Pareto plot."""
    pred_ms = pick.predicted_latency_ms()
    lines = [
        "## Subnet picked by search",
        "",
        f"NSGA-II over (predicted accuracy, {pick.budget}) under the budget {pick.limit:.4g} {pick.unit} "
        f"(median of the random subnets above); accuracy predictor: {pick.predictor}. "
        f"Files: `{search_dir}/search.json`, `{search_dir}/pareto/`.",
        "",
        "| subnet | predicted accuracy | measured accuracy | budget objective |",
        "|---|---:|---:|---:|",
    ]
    for m in pick.measured:
        lines.append(f"| {m['label']} ({m['config'].stable_hash()}) | {100 * m['predicted']:.2f} % | "
                     f"{100 * m['measured']:.2f} % | {m['cost']:.4g} {pick.unit} |")
    lat_pred = f"{pred_ms:.3f} ms" if pred_ms is not None else "n/a (no latency table in this build)"
    lat_meas = f"{measured_ms:.3f} ms" if measured_ms is not None else "n/a"
    lines += [
        "",
        "| latency of the pick (x86, batch 1) | predicted | measured (TVM, median) |",
        "|---|---:|---:|",
        f"| {pick.row['config'].stable_hash()} | {lat_pred} | {lat_meas} |",
        "",
        f"![Pareto front, measured points starred]({search_dir}/pareto.png)",
        "",
    ]
    return "\n".join(lines)
