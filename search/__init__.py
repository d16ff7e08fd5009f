"""Search over subnet configs: cost models (`cost`), predictors and algorithms."""

from qcompile.search import objectives  # noqa: E402,F401
from qcompile.search.latency import KernelPredictor, LatencyTable, kernel_workloads  # noqa: E402,F401
