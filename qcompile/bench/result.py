"""`RunnerStats` and `BenchResult`: what one benchmark run measured (written by the harness, read by the report)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["BenchResult", "RunnerStats"]


@dataclass(frozen=True)
class RunnerStats:
    """Latency of one runner in milliseconds (None when the runner could not be built or failed) and the
    fidelity of its output (`qcompile.bench.fidelity`; None where not comparable)."""

    name: str
    status: str  # "ok", "failed: <error>" or "unavailable: <reason or install hint>"
    median_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    min_ms: float | None = None
    mean_ms: float | None = None
    n: int = 0
    rel_l2_vs_fp32: float | None = None
    cosine_vs_fp32: float | None = None
    max_code_diff: float | None = None
    samples_ms: tuple[float, ...] = ()
    #: "process" (own worker process), "in-process" (a plain callable timed in the harness's process while
    #: the others are isolated) or "none" (isolation="none": every runner in one process); "" when unknown
    isolation: str = ""
    #: top-1 accuracy on the evaluation set (`run_bench(eval_set=...)`, e.g. the real test split)
    top1: float | None = None
    #: fraction of the evaluation set where the runner's top-1 equals the fake-quant subnet's
    agree_fake_quant: float | None = None
    #: median over the rounds the host memory probe called quiet (`qcompile.bench.hostprobe.quiet_rounds`), and
    #: how many rounds that is; None / 0 without the probe. `median_ms` stays the median over all rounds.
    median_quiet_ms: float | None = None
    n_quiet: int = 0


@dataclass(frozen=True)
class BenchResult:
    runners: tuple[RunnerStats, ...]
    meta: dict = field(default_factory=dict)

    def by_name(self) -> dict[str, RunnerStats]:
        return {r.name: r for r in self.runners}

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "runners": [asdict(r) for r in self.runners]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BenchResult:
        """Inverse of `to_dict` (reads a bench.json back, e.g. to regenerate docs)."""
        fields = RunnerStats.__dataclass_fields__
        rows = tuple(RunnerStats(**{k: (tuple(v) if k == "samples_ms" else v) for k, v in r.items() if k in fields})
                     for r in d["runners"])
        return cls(rows, dict(d.get("meta", {})))
