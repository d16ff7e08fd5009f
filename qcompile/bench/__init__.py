"""Peer comparison harness: torch, torch.ao, onnxruntime, ExecuTorch, OpenVINO and qcompile lowerings
on one subnet.

`run_bench(model, x, integer_graph=ig, runners={"qcompile_tvm": peers.tvm_spec(low, "qcompile_tvm")},
graph_runners=["qcompile_tvm"], out_dir=...)` runs every runner in its own worker process (`RunnerSpec`,
`qcompile.bench.workers`), times them in interleaved rounds (with a settle step between runtimes) with a
fixed thread count, measures output fidelity, and writes JSON, markdown and a bar chart.
"""

from qcompile.bench.harness import PEERS, BenchOptions, BenchResult, Hook, Runner, RunnerStats, run_bench, time_runners
from qcompile.bench.models import MobileNetV2, mobilenet_v2, synthetic_integer_graph
from qcompile.bench.report import bar_chart, to_markdown, write_report
from qcompile.bench.workers import RunnerSpec, time_isolated

__all__ = [
    "INTEGER_PEERS",
    "PEERS",
    "Fidelity",
    "cosine",
    "fidelity",
    "max_code_diff",
    "rel_l2",
    "peers_doc",
    "BenchOptions",
    "BenchResult",
    "Hook",
    "MobileNetV2",
    "Runner",
    "RunnerSpec",
    "RunnerStats",
    "bar_chart",
    "mobilenet_v2",
    "run_bench",
    "synthetic_integer_graph",
    "time_isolated",
    "time_runners",
    "to_markdown",
    "write_report",
]
