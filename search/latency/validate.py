"""Predicted vs measured end-to-end latency on held-out subnets (SpaceEvo Table 7's +-10 % / +-5 % metric).

Held-out subnets never enter the table's fit. Two ways to measure them: `LatencyTable.build(..., validate=cfgs)`
times them in the same round-robin rounds as the table (`heldout_rows` scores their `rmin`), or `validate`
predicts, lowers and times one subnet after another (median of `repeat` consecutive calls of `main`; the only
way on RPC boards).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qcompile.config import SubnetConfig

log = logging.getLogger(__name__)

__all__ = ["validate", "heldout_rows", "summarize", "scatter_plot", "heldout_configs"]


def heldout_configs(space: Any, n: int, seed: int = 900_000, bits: Sequence[int] | None = (2, 3, 4)) -> list:
    """`n` random mixed-bit subnets drawn with seeds the table build never uses."""
    return [space.sample(seed=seed + i, bits=bits) for i in range(int(n))]


def validate(table: Any, cfgs: Sequence[SubnetConfig], repeat: int = 60, *, budget_s: float | None = None,
             out_jsonl: str | Path | None = None, progress: bool = True, session: Any = None) -> list[dict]:
    """Predict, then measure each config (median of `repeat` calls; on the board behind an RPC `session` when
    given); stops after `budget_s` seconds."""
    from tqdm import tqdm

    rows: list[dict] = []
    t0 = time.perf_counter()
    for i, cfg in enumerate(tqdm(list(cfgs), desc="validate", disable=not progress, unit="subnet")):
        if budget_s is not None and time.perf_counter() - t0 > budget_s:
            log.warning("validation budget of %.0f s spent after %d subnets", budget_s, i)
            break
        tp = time.perf_counter()
        pred = table.predict(cfg)
        t_pred = time.perf_counter() - tp
        samples = table.measure(cfg, repeat=repeat, session=session)
        row = {"config": cfg.to_json(), "predicted_ms": pred, "measured_ms": statistics.median(samples),
               "min_ms": min(samples), "samples_ms": samples, "predict_s": t_pred}
        rows.append(row)
        if out_jsonl is not None:
            with open(out_jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")
    return rows


def heldout_rows(table: Any, stat: str = "latency_ms") -> list[dict]:
    """Predicted vs measured rows of the networks `table` holds with role "validate" (timed in the table's own
    round-robin rounds by `LatencyTable.build(..., validate=...)`). `measured_ms` is the entry's `stat`
    (`latency_ms`: rmin; `median_ms` / `min_ms` of all samples are kept beside it); `forest_kernels` counts the
    subnet's kernels the table has not timed (predicted by the kernel-level forest)."""
    from qcompile.search.latency.rounds import round_stat
    from qcompile.search.latency.workloads import block_keys

    rows = []
    for net in table.networks:
        if net.get("role") != "validate":
            continue
        cfg = SubnetConfig.from_json(net["config"])
        tp = time.perf_counter()
        pred = table.predict(cfg)
        t_pred = time.perf_counter() - tp
        rounds = net.get("rounds_ms") or [net["samples_ms"]]
        row = {"config": net["config"], "predicted_ms": pred, "latency_ms": float(net.get("latency_ms", math.nan)),
               "median_ms": round_stat(rounds, "median"), "min_ms": round_stat(rounds, "min"),
               "rounds": len(rounds), "predict_s": t_pred}
        row["measured_ms"] = float(row[stat] if stat in row else net[stat])
        keys = [repr(k) for k in block_keys(table.space, cfg).values()]
        row["forest_kernels"] = (sum(wk not in table.kernels for k in keys for wk in table.blocks[k])
                                 if all(k in table.blocks for k in keys) else None)
        rows.append(row)
    return rows


def summarize(rows: Sequence[dict]) -> dict:
    """Fraction within +-10 % and +-5 %, RMSE (ms), mean absolute percentage error, count."""
    if not rows:
        return {"n": 0}
    p = np.array([r["predicted_ms"] for r in rows])
    m = np.array([r["measured_ms"] for r in rows])
    rel = np.abs(p - m) / m
    return {"n": len(rows), "within_10pct": float(np.mean(rel <= 0.10)), "within_5pct": float(np.mean(rel <= 0.05)),
            "rmse_ms": float(math.sqrt(np.mean((p - m) ** 2))), "mape": float(np.mean(rel)),
            "measured_median_ms": float(np.median(m))}


def scatter_plot(rows: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Predicted vs measured scatter with the +-10 % band (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    p = [r["predicted_ms"] for r in rows]
    m = [r["measured_ms"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(m, p, s=12)
    lo, hi = min(m + p) * 0.9, max(m + p) * 1.1
    ax.plot([lo, hi], [lo, hi], "k-", lw=1)
    ax.plot([lo, hi], [lo * 1.1, hi * 1.1], "k:", lw=0.8)
    ax.plot([lo, hi], [lo * 0.9, hi * 0.9], "k:", lw=0.8)
    ax.set_xlabel("measured (ms: rmin of rounds, or median of a burst)")
    ax.set_ylabel("predicted (ms)")
    s = summarize(rows)
    ax.set_title(title or f"n={s['n']}, within 10%: {100 * s['within_10pct']:.0f}%, 5%: {100 * s['within_5pct']:.0f}%")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
