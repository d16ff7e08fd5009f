"""qcompile's own kernel schedules for the TVM backend; importing this registers the strategies.

x86 (AVX2, AVX-512, VNNI): `x86` registers `conv2d_requant` / `conv2d` (tensorized GEMM for pointwise and full
convs, row-vectorised or tap-pair depthwise), `linear`, `add`, `rescale`, `mean`. Kernel builders live in
`gemm_x86`, `depthwise_x86`; the requantize epilogue in `requant`.
aarch64 (`sdot` with +dotprod, NEON otherwise): `arm` registers `conv2d_requant` / `conv2d` (packed GEMM,
depthwise vectorised over channels).
"""

from qcompile.backends.tvm.schedules import arm, x86  # noqa: F401  (importing registers the strategies)
