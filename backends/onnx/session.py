"""`OnnxRunner`: an onnxruntime CPU session as a numpy callable (used by the exporter's checks and the tests)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from qcompile.backends.onnx._deps import require_onnxruntime

__all__ = ["OnnxRunner"]


class OnnxRunner:
    """An onnxruntime session as a numpy callable, with a fixed intra-op thread count."""

    def __init__(self, model: str | os.PathLike | bytes | Any, threads: int | None = None,
                 optimization: str = "all"):
        ort = require_onnxruntime()
        so = ort.SessionOptions()
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
