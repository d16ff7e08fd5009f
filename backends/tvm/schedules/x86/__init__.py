"""x86 kernels (AVX2, AVX-512, VNNI): `strategy` registers them, `gemm` and `depthwise` build them, `gemm_space` and
`depthwise.dw_candidates` list their tuning candidates, `tune` times them into the tuning database, `workloads` keys
them there. Importing this package
registers the strategies."""

from qcompile.backends.tvm.schedules.x86.strategy import (
    X86Add,
    X86Conv,
    X86ConvRequant,
    X86Linear,
    X86LinearRequant,
    X86Mean,
    X86Rescale,
)
from qcompile.backends.tvm.schedules.x86.workloads import SCHEDULE_SPACE, depthwise_workload, gemm_workload, is_x86

__all__ = [
    "SCHEDULE_SPACE",
    "X86Add",
    "X86Conv",
    "X86ConvRequant",
    "X86Linear",
    "X86LinearRequant",
    "X86Mean",
    "X86Rescale",
    "depthwise_workload",
    "gemm_workload",
    "is_x86",
]
