"""`export_onnx`: an IntegerGraph as an ONNX model that onnxruntime runs.

The model encodes the integer program of docs/integer_semantics.md (encodings in
`qcompile.backends.onnx.emitter`), passes `onnx.checker` with full shape inference, has a
dynamic batch dimension, and carries the subnet config, the quantization policy and the code
range of every quantized tensor in its metadata. Bit-widths below 8 are stored in 8-bit
containers (uint8 activation codes, int8 weight codes) clamped to their range; the ranges are in
the metadata (`qcompile.activation_ranges`, `qcompile.weight_ranges`). Anything wider than
8 bits (other than a float island) is refused with a LoweringError.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import fx

from qcompile.backends.onnx._deps import require_onnx
from qcompile.backends.onnx.emitter import FORMATS, WEIGHT_STORAGE, Emitter, ValueInfo, onnx_dtype
from qcompile.errors import LoweringError
from qcompile.ops.meta import program_meta

log = logging.getLogger(__name__)

#: onnxruntime 1.31 reads IR <= 13; onnx 1.23 would write 14. IR 10 / opset 21 also loads in older runtimes.
DEFAULT_IR_VERSION = 10
DEFAULT_OPSET = 21
DEBUG_PREFIX = "qc/"

ROUNDING_NOTE = (
    "qoperator: bit-exact integer program (ConvInteger/MatMulInteger, int64 fixed-point with truncating Div, "
    "equal to round-half-up after the clamp to lo >= 0). qdq: conv/linear + requantize run as "
    "DequantizeLinear->Conv/Gemm->QuantizeLinear with scale float32(M/2^s) and round-half-to-even: within 1 "
    "code of the reference; all other ops exact. Float islands float64 except k x k convs (float32). "
    "A program of the 'qdq' flavour (qcompile.quant.flavour) exports as plain QuantizeLinear/DequantizeLinear "
    "around Conv/Gemm/Add/GlobalAveragePool whose float32 arithmetic the program itself uses: bit-exact."
)


@dataclass(frozen=True)
class OnnxExportOptions:
    """How `export_onnx` writes the model.

    format: "qdq" (fused QDQ convs, within 1 code, fast) or "qoperator" (integer ops, bit-exact).
    input_shape: NCHW input shape; default the graph's `ProgramMeta` (`qcompile.ops.meta.program_meta`).
    dynamic_batch: declare the batch dimension symbolic ("N").
    debug_outputs: also output every op's value as `qc/<node name>` (for per-op comparisons).
    weights: how conv / linear weight codes are stored (`emitter.WEIGHT_STORAGE`). "auto" (default): int8
        where every code is in [-64, 64], else uint8 codes `w + 128` with zero point 128; exact under
        onnxruntime on every host. "int8": int8 everywhere, the fastest on x86 with VNNI and on ARM, but on x86
        without VNNI (AVX2, AVX-512 without VNNI) onnxruntime's u8 x s8 QLinearConv / QGemm / MatMulInteger
        saturate pairs of products at int16 unless the session sets `session.x64quantprecision=1`
        (`OnnxRunner(..., x64_quant_precision=True)`). "uint8": uint8 everywhere (docs/qdq.md, "Weights on x86
        without VNNI").
    """

    format: str = "qoperator"
    input_shape: tuple[int, ...] | None = None
    opset: int = DEFAULT_OPSET
    ir_version: int = DEFAULT_IR_VERSION
    dynamic_batch: bool = True
    debug_outputs: bool = False
    weights: str = "auto"

    def __post_init__(self) -> None:
        from qcompile.errors import ConfigError

        if self.format not in FORMATS:
            raise ConfigError("format", self.format, FORMATS)
        if self.weights not in WEIGHT_STORAGE:
            raise ConfigError("weights", self.weights, WEIGHT_STORAGE,
                              "how conv/linear weight codes are stored; 'auto' is exact on every host")
        if not 7 <= self.ir_version <= 13:
            raise ConfigError("ir_version", self.ir_version, "7..13", "onnxruntime 1.31 reads IR <= 13")
        if self.opset < 21:
            raise ConfigError("opset", self.opset, ">= 21", "per-axis int32 DequantizeLinear and Clip on uint8")


def _as_integer_graph(obj: Any) -> fx.GraphModule:
    from qcompile.ops.graph import IntegerGraph

    if isinstance(obj, IntegerGraph):
        return obj
    if isinstance(obj, fx.GraphModule):  # a calibrated subnet: the default pipeline lowers it first
        from qcompile.passes.to_integer import to_integer

        return to_integer(obj)
    raise LoweringError("export_onnx", f"cannot export a {type(obj).__name__}",
                        "pass an IntegerGraph or a calibrated subnet (fx.GraphModule)")


def _input_shape(gm: fx.GraphModule, given: Sequence[int] | None) -> tuple[int, ...]:
    shape = program_meta(gm, given).input_shape
    if shape is None:
        raise LoweringError("export_onnx", "input shape unknown (no program_meta['input_shape'] or 'resolution')",
                            "pass input_shape=(1, 3, H, W)")
    return shape


class _Recorder(fx.Interpreter):
    """Runs the reference once and records every node's dtype and shape."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.info: dict[str, ValueInfo] = {}
        self.values: dict[str, torch.Tensor] = {}
        self.keep = False

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor) and n.op in ("placeholder", "call_function"):
            self.info[n.name] = ValueInfo(out.dtype, tuple(out.shape))
            if self.keep:
                self.values[n.name] = out
        return out


def trace_values(gm: fx.GraphModule, x: torch.Tensor, keep: bool = False) -> _Recorder:
    """Run the reference executor on `x`, recording dtypes/shapes (and values when `keep`)."""
    rec = _Recorder(gm)
    rec.keep = keep
    with torch.no_grad():
        rec.run(x)
    return rec


def _json(obj: Any) -> str:
    def default(o: Any) -> Any:
        if hasattr(o, "to_json"):
            js = o.to_json()
            return json.loads(js) if isinstance(js, str) else js
        if dataclasses.is_dataclass(o):
            return dataclasses.asdict(o)
        if isinstance(o, torch.Tensor):
            return o.tolist()
        return repr(o)

    return json.dumps(obj, default=default, sort_keys=True)


def build_onnx_model(ig_or_subnet: Any, options: OnnxExportOptions | None = None) -> Any:
    """The ONNX ModelProto for an IntegerGraph (checked with full shape inference), not written to disk."""
    onnx = require_onnx()
    from onnx import helper

    opts = options or OnnxExportOptions()
    gm = _as_integer_graph(ig_or_subnet)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise LoweringError("export_onnx", f"graph has {len(placeholders)} inputs", "export graphs with one input")
    shape = _input_shape(gm, opts.input_shape)
    rec = trace_values(gm, torch.zeros(shape, dtype=torch.float32))
    em = Emitter(gm, rec.info, opts.format, opts.weights)
    em.run()
    if opts.format == "qdq":
        _round_before_float_ops(em)

    def dims(s: tuple[int, ...]) -> list:
        return ["N", *s[1:]] if opts.dynamic_batch and len(s) > 0 else list(s)

    x = placeholders[0]
    inputs = [helper.make_tensor_value_info(x.name, onnx_dtype(rec.info[x.name].dtype), dims(shape))]
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    outs = out_node.args[0]
    outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
    outputs = []
    for i, o in enumerate(outs):
        name = "output" if len(outs) == 1 else f"output_{i}"
        info = rec.info[o.name]
        em.nodes.append(helper.make_node("Identity", [em.get(o)], [name], name=f"{name}/Identity"))
        outputs.append(helper.make_tensor_value_info(name, onnx_dtype(info.dtype), dims(info.shape)))
    if opts.debug_outputs:
        for n in gm.graph.nodes:
            if n.op == "call_function" and n.name in em.values:
                name = DEBUG_PREFIX + n.name
                info = rec.info[n.name]
                em.nodes.append(helper.make_node("Identity", [em.get(n)], [name], name=f"{name}/Identity"))
                outputs.append(helper.make_tensor_value_info(name, onnx_dtype(info.dtype), dims(info.shape)))

    graph = helper.make_graph(em.nodes, "qcompile_integer_program", inputs, outputs, em.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opts.opset)],
                              producer_name="qcompile", doc_string="qcompile integer program (" + opts.format + ")")
    model.ir_version = opts.ir_version
    meta = program_meta(gm).to_dict()
    props = {
        "qcompile.format": opts.format,
        "qcompile.flavour": meta.get("flavour", "fixed-point"),
        "qcompile.program_meta": _json(meta),
        "qcompile.subnet_config": _json(meta["config"]),
        "qcompile.quant_policy": _json(meta["policy"]),
        "qcompile.activation_ranges": _json(em.ranges),
        "qcompile.weight_ranges": _json(em.weight_ranges),
        "qcompile.containers": "activation codes uint8, weight codes int8 (zero point 0) or uint8 (w + 128, zero "
                               "point 128) per layer as in qcompile.weight_storage; narrower bit-widths are stored "
                               "in these 8-bit containers and clamped to the ranges in qcompile.activation_ranges / "
                               "qcompile.weight_ranges",
        "qcompile.weights": opts.weights,
        "qcompile.weight_storage": _json(em.weight_storage),
        "qcompile.float32_islands": _json(em.float32_islands),
        "qcompile.qdq_fused": _json(em.fused),
        "qcompile.exact_float32_convs": _json(em.exact_float_convs),
        "qcompile.rounding": ROUNDING_NOTE,
        "qcompile.input_shape": _json(list(shape)),
    }
    helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    log.info("exported %d ONNX nodes (%s), %d QDQ-fused convs, %d float32 islands", len(em.nodes), opts.format,
             len(em.fused), len(em.float32_islands))
    return model


def _round_before_float_ops(em: Emitter) -> int:
    """Put `Cast(int32) -> Gather(identity table)` between a QuantizeLinear and each DequantizeLinear of its
    codes that feeds anything but a Conv or another QuantizeLinear (Add, Mul, GlobalAveragePool, the classifier).

    The codes are unchanged and onnxruntime still fuses QLinearConv / QLinearAdd / QLinearMul around them
    (its selectors need a Q after the Conv and DQs before the Add, not that they be adjacent), but OpenVINO
    2026.4's CPU plugin, seeing `Conv -> Q -> DQ -> Add`, fuses the pair into the convolution as a post-op
    that clamps without rounding: measured, the residual sum then differs from the integer program by one
    code on 25 % of elements and top-1 agreement fell to 70-95 % on trained subnets. A lookup on the codes
    is an op OpenVINO has to compute, so the rounding stays where the integer program has it (docs/qdq.md).
    Returns the number of tables inserted.
    """
    import numpy as np
    from onnx import TensorProto, helper

    producer = {o: nd for nd in em.nodes for o in nd.output}
    users: dict[str, list] = {}
    for nd in em.nodes:
        for i in nd.input:
            users.setdefault(i, []).append(nd)
    table = None
    done: dict[str, str] = {}
    out = []
    for nd in em.nodes:
        src = producer.get(nd.input[0]) if nd.op_type == "DequantizeLinear" and nd.input else None
        after = {u.op_type for u in users.get(nd.output[0], [])}
        if src is not None and src.op_type == "QuantizeLinear" and after - {"Conv", "QuantizeLinear"}:
            codes = nd.input[0]
            if codes not in done:
                table = table or em.const(np.arange(256, dtype=np.uint8), "identity_u8")
                idx = em.fresh(f"{codes}_i32")
                done[codes] = em.fresh(f"{codes}_rounded")
                out.append(helper.make_node("Cast", [codes], [idx], name=em.fresh(f"{codes}/Cast"),
                                            to=TensorProto.INT32))
                out.append(helper.make_node("Gather", [table, idx], [done[codes]], name=em.fresh(f"{codes}/Gather"),
                                            axis=0))
            nd.input[0] = done[codes]
        out.append(nd)
    em.nodes[:] = out
    return len(done)


class QdqApproximationWarning(UserWarning):
    """A QDQ export that does not compute what the integer program computes (the fixed-point flavour)."""


def qdq_agreement(ig: fx.GraphModule, model: bytes | str | os.PathLike, inputs: Any) -> tuple[float, int]:
    """(share of inputs whose onnxruntime top-1 on `model` equals `ig`'s, number of inputs)."""
    import numpy as np

    from qcompile.backends.onnx.session import OnnxRunner

    x = torch.as_tensor(np.asarray(inputs, dtype=np.float32))
    with torch.no_grad():
        ref = ig(x).numpy().reshape(len(x), -1).argmax(1)
    got = OnnxRunner(model).__call__(x.numpy()).reshape(len(x), -1).argmax(1)
    return float((ref == got).mean()), len(x)


def _warn_approximate(ig: fx.GraphModule, data: bytes, check_inputs: Any) -> None:
    import warnings

    msg = ("QDQ export of a 'fixed-point' flavour program is approximate: QDQ has integer zero points, "
           "round-half-to-even and float scales where the program has BatchQuant's fractional z + beta and "
           "gemmlowp fixed point; each op may move one code and the codes drift with depth")
    if check_inputs is not None and len(check_inputs):
        agree, n = qdq_agreement(ig, data, check_inputs)
        msg += f"; onnxruntime's top-1 equals the integer program's on {100 * agree:.1f} % of {n} calibration images"
    else:
        msg += "; pass check_inputs= (calibration images) to measure the top-1 agreement"
    msg += ". For an exact QDQ file quantize in the 'qdq' flavour (qc.quantize(..., flavour='qdq'))."
    log.warning(msg)
    warnings.warn(msg, QdqApproximationWarning, stacklevel=3)


def export_onnx(
    ig_or_subnet: Any,
    path: str | os.PathLike,
    format: str = "qoperator",
    *,
    input_shape: Sequence[int] | None = None,
    opset: int = DEFAULT_OPSET,
    ir_version: int = DEFAULT_IR_VERSION,
    dynamic_batch: bool = True,
    debug_outputs: bool = False,
    check_inputs: Any = None,
    weights: str = "auto",
) -> Path:
    """Write `ig_or_subnet` as an ONNX model to `path` and return the path.

    format="qdq": QuantizeLinear/DequantizeLinear around Conv/Gemm (fused by onnxruntime), within
    one code of the reference; format="qoperator": ConvInteger/MatMulInteger with explicit int64
    fixed-point requantization, bit-exact. See `OnnxExportOptions` for the other arguments.

    A QDQ export of a program of the default "fixed-point" flavour is approximate (fractional zero points
    and round-half-up have no QDQ form): it warns (`QdqApproximationWarning`) and, given `check_inputs`
    (images, e.g. the calibration batches `qc.calibrate` keeps a sample of), says by how much: the share of
    inputs whose onnxruntime top-1 equals the integer program's. The "qdq" flavour exports exactly.

    weights="auto" stores a layer's weights as uint8 (zero point 128) where int8 codes could saturate
    onnxruntime's u8 x s8 kernels on x86 hosts without VNNI, so the file is exact wherever it runs;
    weights="int8" is for files that run on VNNI or ARM hosts only (`OnnxExportOptions`).
    """
    from qcompile.errors import CheckpointError
    from qcompile.utils.io import atomic_write

    require_onnx()
    opts = OnnxExportOptions(format=format, input_shape=None if input_shape is None else tuple(input_shape),
                             opset=opset, ir_version=ir_version, dynamic_batch=dynamic_batch,
                             debug_outputs=debug_outputs, weights=weights)
    path = Path(path)
    # checked before any work or write: never replace a directory or a file that is not a model
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory (name the .onnx file to write, e.g. {path / 'model.onnx'})")
    if os.path.lexists(path) and path.suffix.lower() != ".onnx":
        raise CheckpointError(f"{path}: exists and is not an .onnx file; refusing to replace it "
                              "(choose a new path or remove it first)")
    model = build_onnx_model(ig_or_subnet, opts)
    data = model.SerializeToString()
    flavour = next((p.value for p in model.metadata_props if p.key == "qcompile.flavour"), "fixed-point")
    if format == "qdq" and flavour == "fixed-point":
        _warn_approximate(_as_integer_graph(ig_or_subnet), data, check_inputs)
    atomic_write(path, lambda f: f.write(data))  # temp file beside it, removed on any failure
    return path
