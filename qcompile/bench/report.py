"""Write a `BenchResult` as JSON, a markdown table and a bar chart (matplotlib, Agg)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from qcompile.bench.harness import BenchResult


def to_markdown(result: BenchResult) -> str:
    """A table: runner, median, 10-90 % spread, min, samples, top-1 agreement with torch fp32."""
    m = result.meta
    lines = [
        f"## {m.get('title', 'benchmark')}",
        "",
        f"input {tuple(m.get('input_shape', ()))}, {m.get('threads')} threads, {m.get('repeats')} interleaved rounds "
        f"(+{m.get('warmup')} warm-up), torch {m.get('torch')}, onnxruntime {m.get('onnxruntime')}, "
        f"{m.get('processor') or m.get('machine')} x{m.get('cpu_count')}, {m.get('timestamp')}",
        "",
        "| runner | median ms | p10-p90 ms | min ms | n | top-1 = fp32 | status |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in result.runners:
        if r.median_ms is None:
            lines.append(f"| {r.name} | - | - | - | 0 | - | {r.status} |")
            continue
        agree = "-" if r.top1_agrees_with_fp32 is None else f"{r.top1_agrees_with_fp32:.2f}"
        lines.append(f"| {r.name} | {r.median_ms:.2f} | {r.p10_ms:.2f}-{r.p90_ms:.2f} | {r.min_ms:.2f} | {r.n} | "
                     f"{agree} | {r.status} |")
    return "\n".join(lines) + "\n"


def bar_chart(result: BenchResult, path: str | os.PathLike) -> Path:
    """Median latency per runner with p10-p90 error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in result.runners if r.median_ms is not None]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(ok) + 1.5), 3.6))
    med = [r.median_ms for r in ok]
    err = [[r.median_ms - r.p10_ms for r in ok], [r.p90_ms - r.median_ms for r in ok]]
    bars = ax.bar(range(len(ok)), med, yerr=err, capsize=3, color="tab:blue")
    for b, v in zip(bars, med):
        ax.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(ok)), [r.name for r in ok], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("latency, ms (median, p10-p90)")
    m = result.meta
    ax.set_title(f"{m.get('title', '')}: {tuple(m.get('input_shape', ()))}, {m.get('threads')} threads", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(result: BenchResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """`bench.json`, `bench.md`, `bench.png` in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "markdown": out / "bench.md", "png": out / "bench.png"}
    paths["json"].write_text(json.dumps(result.to_dict(), indent=1))
    paths["markdown"].write_text(to_markdown(result))
    bar_chart(result, paths["png"])
    return paths
