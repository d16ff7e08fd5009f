"""`OnnxRunner`: an onnxruntime CPU session as a numpy callable (used by the exporter's checks and the tests)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from qcompile.backends.onnx._deps import require_onnxruntime

__all__ = ["OnnxRunner", "u8s8_exact_host"]

#: the session config key that makes onnxruntime rewrite s8 weights of QLinearConv / QGemm / MatMulInteger
#: to u8 (its Avx2WeightS8ToU8Transformer; onnxruntime_session_options_config_keys.h)
X64_QUANT_PRECISION = "session.x64quantprecision"


def u8s8_exact_host() -> bool:
    """Whether onnxruntime's u8 x s8 GEMM is exact on this CPU: any non-x86 host, or x86 with AVX-512 VNNI or
    AVX-VNNI (`vpdpbusd` accumulates in int32). On other x86 hosts MLAS adds pairs of u8 * s8 products with
    `vpmaddubsw` into a saturating int16 (measured on AVX2 Zen 3, docs/qdq.md)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    try:  # /proc/cpuinfo read here, not through the TVM backend: an onnx-only install has no TVM
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"avx512_vnni", "avx_vnni"} & set(flags))


class OnnxRunner:
    """An onnxruntime session as a numpy callable, with a fixed intra-op thread count."""

    def __init__(self, model: str | os.PathLike | bytes | Any, threads: int | None = None,
                 optimization: str = "all", x64_quant_precision: bool = False):
        """x64_quant_precision: set `session.x64quantprecision=1`, which makes onnxruntime run int8 weights
        of QLinearConv / QGemm / MatMulInteger as uint8 (exact) on x86 hosts; off by default, so third-party
        files (the `ort_int8_qdq` peer) run as onnxruntime runs them. qcompile's exports need it only when
        written with `weights="int8"` and run on a host where `u8s8_exact_host()` is False."""
        ort = require_onnxruntime()
        so = ort.SessionOptions()
        if x64_quant_precision:
            so.add_session_config_entry(X64_QUANT_PRECISION, "1")
        if threads is not None:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
        so.graph_optimization_level = levels[optimization]
        so.log_severity_level = 3
        if isinstance(model, (str, os.PathLike)):
            src: Any = str(Path(model))
        elif isinstance(model, bytes):
            src = model
        else:
            src = model.SerializeToString()
        self.session = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.threads = threads

    def run_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every model output by name."""
        outs = self.session.run(None, {self.input_name: np.ascontiguousarray(x)})
        return dict(zip(self.output_names, outs))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(self.output_names[:1], {self.input_name: np.ascontiguousarray(x)})[0]
