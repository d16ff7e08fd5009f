"""qcompile's own kernel schedules for the TVM backend; importing this registers the strategies.

x86 (AVX2, AVX-VNNI): `x86` registers `conv2d_requant` / `conv2d` strategies (tensorized GEMM for
pointwise and full convs, row-vectorised depthwise). Kernel builders live in `gemm_x86`, `depthwise_x86`;
the requantize epilogue in `requant`.
"""

from qcompile.backends.tvm.schedules import x86  # noqa: F401  (registers strategies)
