"""Optional dependencies of the ONNX backend, imported on first use with an install hint."""

from __future__ import annotations

import importlib
from types import ModuleType

from qcompile.errors import QcompileError

INSTALL_HINT = "pip install qcompile[onnx]"


class MissingDependencyError(QcompileError, ImportError):
    """An optional package (onnx, onnxruntime) is not installed; the message says how to install it."""

    def __init__(self, package: str, purpose: str):
        self.package = package
        super().__init__(f"{package} is not installed but is needed to {purpose}. Install it with `{INSTALL_HINT}`")


def _require(package: str, purpose: str) -> ModuleType:
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise MissingDependencyError(package, purpose) from e


def require_onnx() -> ModuleType:
    """The `onnx` module, or MissingDependencyError with the install hint."""
    return _require("onnx", "write ONNX models")


def require_onnxruntime() -> ModuleType:
    """The `onnxruntime` module, or MissingDependencyError with the install hint."""
    return _require("onnxruntime", "run ONNX models")
