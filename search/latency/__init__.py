"""Latency of subnets from qcompile's own kernels: `kernel_workloads`, `LatencyTable`, kernel predictor."""

from qcompile.search.latency.predictor import KernelPredictor
from qcompile.search.latency.table import LatencyTable, covering_configs, machine_keys
from qcompile.search.latency.workloads import kernel_workloads

__all__ = ["KernelPredictor", "LatencyTable", "covering_configs", "kernel_workloads", "machine_keys"]
