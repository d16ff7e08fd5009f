"""Peer comparison harness (issue 8): torch, torch.ao, onnxruntime and qcompile lowerings on one subnet.

`run_bench(model, x, integer_graph=ig, runners={"tvm_x86": low}, out_dir=...)` times every runner
in interleaved rounds with a fixed thread count and writes JSON, markdown and a bar chart.
"""

from qcompile.bench.harness import PEERS, BenchOptions, BenchResult, Hook, Runner, RunnerStats, run_bench, time_runners
from qcompile.bench.models import MobileNetV2, mobilenet_v2, synthetic_integer_graph
from qcompile.bench.report import bar_chart, to_markdown, write_report

__all__ = [
    "PEERS",
    "BenchOptions",
    "BenchResult",
    "Hook",
    "MobileNetV2",
    "Runner",
    "RunnerStats",
    "bar_chart",
    "mobilenet_v2",
    "run_bench",
    "synthetic_integer_graph",
    "time_runners",
    "to_markdown",
    "write_report",
]
