"""OpenVINO as a runtime for qcompile's ONNX exports (the QDQ export of the "qdq" flavour above all).

OpenVINO reads the ONNX file, turns QuantizeLinear/DequantizeLinear pairs into FakeQuantize and runs int8
kernels on oneDNN (AMX-INT8 / VNNI where the CPU has them). It does not promise ONNX's float32 rounding
order, so agreement with the integer program is measured (`agreement`), not assumed. One of its fusions
(`Conv -> Q -> DQ -> Add` into the convolution) clamps without rounding; the QDQ export puts a lookup on
those codes so that the rounding stays (`qcompile.backends.onnx.export`, docs/qdq.md). OpenVINO's CPU plugin
computes int64 as int32 and float64 as float32, so only the "qdq" flavour's plain QDQ export (no int64
fixed-point arithmetic) is a meaningful input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import fx

from qcompile.backends.onnx._deps import MissingDependencyError

__all__ = ["OpenVinoAgreement", "OpenVinoRunner", "agreement", "require_openvino"]


def require_openvino() -> Any:
    """The `openvino` module, or MissingDependencyError with the install command."""
    try:
        import openvino
    except ImportError as e:
        raise MissingDependencyError("openvino", "run ONNX exports on OpenVINO") from e
    return openvino


class OpenVinoRunner:
    """An OpenVINO CPU compiled model as a numpy callable (first output), with a fixed thread count.

    `precision` is OpenVINO's INFERENCE_PRECISION_HINT. It defaults to "f32" because on CPUs with AMX-BF16
    OpenVINO otherwise runs every float op in bfloat16 (8-bit mantissa), which moves codes in every layer
    (measured: chance-level agreement with the integer program); the int8 convolutions are unaffected.
    `EXECUTION_MODE_HINT=ACCURACY` on top of f32 changed no output in the measurements of docs/qdq.md.
    """

    def __init__(self, model: str | os.PathLike | bytes | Any, threads: int | None = None, precision: str = "f32"):
        ov = require_openvino()
        core = ov.Core()
        if isinstance(model, (str, os.PathLike)):
            m = core.read_model(str(model))
        else:
            data = model if isinstance(model, bytes) else model.SerializeToString()
            m = core.read_model(data, b"")
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(m, "CPU", config)
        self.threads = threads

    def __call__(self, x: np.ndarray) -> np.ndarray:
        res = self.compiled(np.ascontiguousarray(x, dtype=np.float32))
        return np.asarray(res[self.compiled.outputs[0]])


@dataclass(frozen=True)
class OpenVinoAgreement:
    """How OpenVINO's outputs on an export compare with the integer program on the same inputs."""

    n: int
    top1_agreement: float  # share of inputs whose top-1 class equals the integer program's
    max_logit_diff: float  # largest |logit difference|
    top1_accuracy: float | None = None  # OpenVINO's accuracy when labels were given
    reference_accuracy: float | None = None  # the integer program's


def agreement(ig: fx.GraphModule, model: str | os.PathLike | bytes | Any, x: np.ndarray | torch.Tensor,
              labels: np.ndarray | torch.Tensor | None = None, threads: int | None = 1) -> OpenVinoAgreement:
    """Run `model` on OpenVINO and `ig` (the reference executor) on `x`; compare predictions and logits."""
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    with torch.no_grad():
        ref = ig(xt).numpy().reshape(len(xt), -1)
    got = OpenVinoRunner(model, threads=threads)(xt.numpy()).reshape(len(xt), -1).astype(np.float64)
    acc = ref_acc = None
    if labels is not None:
        y = np.asarray(labels).reshape(-1)
        acc, ref_acc = float((got.argmax(1) == y).mean()), float((ref.argmax(1) == y).mean())
    return OpenVinoAgreement(len(xt), float((got.argmax(1) == ref.argmax(1)).mean()),
                             float(np.abs(got - ref).max()), acc, ref_acc)
