"""TVM backend: IntegerGraph -> Relax -> TIR integer kernels for x86 and aarch64 (arm_cpu).

Public entry points: `lower_integer_graph(ig, target="x86", *, tune=False, num_threads=None)` and
`load(path)`, both returning a `Lowered`. Kernel engineers plug in through `strategy.py`.
"""

from qcompile.backends.tvm.threads import ensure_thread_default

ensure_thread_default()  # before TVM's runtime pool exists (threads.py: TVM would use half the cores)

from qcompile.backends.tvm.lowered import BenchmarkResult, Lowered, load, lower_integer_graph  # noqa: E402
from qcompile.backends.tvm.pipeline import Pipeline, default_pipeline  # noqa: E402
from qcompile.backends.tvm.strategy import OpCall, Strategy, register_strategy, select_strategy  # noqa: E402
from qcompile.backends.tvm.targets import TargetSpec, resolve_target  # noqa: E402

__all__ = [
    "BenchmarkResult",
    "Lowered",
    "OpCall",
    "Pipeline",
    "Strategy",
    "TargetSpec",
    "default_pipeline",
    "load",
    "lower_integer_graph",
    "register_strategy",
    "resolve_target",
    "select_strategy",
]
