"""Peer runners for the harness: each turns a float subnet (or our IntegerGraph) into a numpy callable.

torch fp32 eager; torch.ao int8 (FX graph mode, x86 backend, per-channel weights: the 8-bit
policy only); onnxruntime fp32 on the TorchScript ONNX export; onnxruntime int8 from
`quantize_static` (QDQ, uint8 activations, int8 weights, MinMax calibration) on that float
model; onnxruntime on our own export of the IntegerGraph (`qcompile.backends.onnx`).
A factory that cannot build its runner raises; the harness records the reason and goes on.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], np.ndarray]


def torch_fp32(model: nn.Module) -> Runner:
    """Eager float32 forward under inference mode."""
    model = model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return run


def torch_ao_int8(model: nn.Module, calibration: Sequence[np.ndarray]) -> Runner:
    """torch.ao FX post-training static quantization with the x86 backend (8-bit policy only)."""
    import copy

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    example = (torch.from_numpy(calibration[0]),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 deprecates torch.ao.quantization in favour of torchao
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), example)
        with torch.inference_mode():
            for batch in calibration:
                prepared(torch.from_numpy(batch))
        qmodel = convert_fx(prepared)
    return torch_fp32(qmodel)


def export_float_onnx(model: nn.Module, example: np.ndarray, path: str | Path) -> Path:
    """The float subnet as ONNX (TorchScript exporter: the dynamo one needs onnxscript), opset 17, IR 8."""
    import onnx

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.from_numpy(example),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])
    m = onnx.load_from_string(buf.getvalue())
    m.ir_version = min(m.ir_version, 8)
    path = Path(path)
    onnx.save(m, path)
    return path


def ort_runner(path: str | Path, threads: int) -> Runner:
    from qcompile.backends.onnx import OnnxRunner

    return OnnxRunner(path, threads=threads)


def ort_int8_static(float_onnx: str | Path, calibration: Sequence[np.ndarray], path: str | Path, threads: int,
                    per_channel: bool = False) -> Runner:
    """onnxruntime `quant_pre_process` + `quantize_static` (QDQ, U8 activations, S8 weights, MinMax), a session."""
    from qcompile.backends.onnx import require_onnxruntime

    require_onnxruntime()
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"x": b} for b in calibration])

        def get_next(self) -> dict | None:
            return next(self.it, None)

    src = Path(path).with_name(Path(path).stem + "_pre.onnx")
    try:  # onnxruntime's recommended pre-processing (shape inference, BN folding) before quantization
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(float_onnx), str(src))
    except Exception as e:
        log.warning("quant_pre_process failed (%s); quantizing the raw export", e)
        src = Path(float_onnx)
    quantize_static(str(src), str(path), _Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel)
    return ort_runner(path, threads)


def ort_ours(integer_graph: object, path: str | Path, fmt: str, threads: int, batch_shape: Sequence[int]) -> Runner:
    """onnxruntime on `export_onnx(integer_graph, format=fmt)`; output cast to float32 like the peers."""
    from qcompile.backends.onnx import export_onnx

    runner = ort_runner(export_onnx(integer_graph, path, format=fmt, input_shape=tuple(batch_shape)), threads)
    return lambda x: np.asarray(runner(x), dtype=np.float32)
