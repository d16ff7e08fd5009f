"""ONNX backend: an IntegerGraph as a QDQ or integer-operator ONNX model for onnxruntime.

`export_onnx(ig, path, format="qdq" | "qoperator")` writes the model; `OnnxRunner` runs it;
`compare_with_reference` measures the per-op distance to the reference executor in codes.
"""

from qcompile.backends.onnx._deps import INSTALL_HINT, MissingDependencyError, require_onnx, require_onnxruntime
from qcompile.backends.onnx.emitter import FORMATS
from qcompile.backends.onnx.export import OnnxExportOptions, build_onnx_model, export_onnx
from qcompile.backends.onnx.runtime import NodeDiff, OnnxRunner, ReferenceComparison, compare_with_reference

__all__ = [
    "FORMATS",
    "INSTALL_HINT",
    "MissingDependencyError",
    "NodeDiff",
    "OnnxExportOptions",
    "OnnxRunner",
    "ReferenceComparison",
    "build_onnx_model",
    "compare_with_reference",
    "export_onnx",
    "require_onnx",
    "require_onnxruntime",
]
