"""Run exported models with onnxruntime and measure their distance to the reference executor.

"Codes" (the unit of the acceptance criterion): for uint8 activation codes and int32
accumulators, the absolute integer difference; for `dequantize_acc` (the float logits) the
difference divided by the per-channel accumulator scale, i.e. in units of the final accumulator;
for `dequantize` the difference divided by the quantizer scale. Float-island values are reported
as a relative error (they have no code).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx

from qcompile.backends.onnx.export import DEBUG_PREFIX, OnnxExportOptions, build_onnx_model, trace_values
from qcompile.backends.onnx.session import OnnxRunner
from qcompile.ops import reference as R


@dataclass(frozen=True)
class NodeDiff:
    """Distance of one op's ONNX value to the reference value."""

    node: str
    op: str
    kind: str  # "codes" (integer codes / accumulator units) or "relative" (float island)
    max_diff: float
    mismatches: int
    size: int


@dataclass(frozen=True)
class ReferenceComparison:
    """Per-op differences between onnxruntime on an export and the reference executor on one input."""

    format: str
    nodes: tuple[NodeDiff, ...]
    top1_equal: bool
    output_max_codes: float
    meta: dict = field(default_factory=dict)

    @property
    def max_codes(self) -> float:
        """Largest difference in codes over every quantized output (0 for a bit-exact run)."""
        return max((d.max_diff for d in self.nodes if d.kind == "codes"), default=0.0)

    def table(self) -> str:
        rows = [f"{d.node:24s} {d.op:16s} {d.kind:8s} max={d.max_diff:.3g} mismatches={d.mismatches}/{d.size}"
                for d in self.nodes]
        return "\n".join(rows)


def _scale_of(gm: fx.GraphModule, n: fx.Node, ndim: int) -> np.ndarray | None:
    if n.target is R.dequantize_acc:
        s = n.args[1] if len(n.args) > 1 else n.kwargs["scale"]
        obj: Any = gm
        for part in s.target.split("."):
            obj = getattr(obj, part)
        v = obj.detach().to(torch.float64).numpy().reshape(-1)
        return v.reshape((1, -1) + (1,) * (ndim - 2)) if v.size > 1 else v.reshape(())
    if n.target is R.dequantize:
        s = n.args[1] if len(n.args) > 1 else n.kwargs["scale"]
        return np.asarray(float(s))
    return None


def compare_with_reference(ig: fx.GraphModule, x: np.ndarray | torch.Tensor, format: str = "qoperator",
                           threads: int | None = None, weights: str | None = None,
                           x64_quant_precision: bool = False) -> ReferenceComparison:
    """Export `ig` with every op as an output, run it in onnxruntime on `x`, diff against `ig`'s values.

    `weights` is the export's weight storage (`OnnxExportOptions.weights`; None: its default),
    `x64_quant_precision` the session option of `OnnxRunner`."""
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    storage = {} if weights is None else {"weights": weights}
    model = build_onnx_model(ig, OnnxExportOptions(format=format, input_shape=tuple(xt.shape), debug_outputs=True,
                                                   **storage))
    got = OnnxRunner(model, threads=threads, x64_quant_precision=x64_quant_precision).run_all(xt.numpy())
    ref = trace_values(ig, xt, keep=True).values
    diffs = []
    for n in ig.graph.nodes:
        key = DEBUG_PREFIX + n.name
        if n.op != "call_function" or key not in got:
            continue
        r = ref[n.name].numpy()
        o = got[key]
        if r.dtype.kind in "iu":
            d = np.abs(o.astype(np.int64) - r.astype(np.int64)).astype(np.float64)
            kind = "codes"
        else:
            scale = _scale_of(ig, n, r.ndim)
            if scale is not None:
                d = np.abs(o.astype(np.float64) - r) / scale
                kind = "codes"
            else:
                d = np.abs(o.astype(np.float64) - r) / np.maximum(np.abs(r), 1e-12)
                kind = "relative"
        tol = 0.5 if kind == "codes" else 1e-6
        diffs.append(NodeDiff(n.name, getattr(n.target, "__name__", str(n.target)), kind,
                              float(d.max()) if d.size else 0.0, int((d > tol).sum()), int(d.size)))
    out_node = next(n for n in ig.graph.nodes if n.op == "output").args[0]
    out_node = out_node[0] if isinstance(out_node, (tuple, list)) else out_node
    r_out, o_out = ref[out_node.name].numpy(), got["output"]
    top1 = bool(np.array_equal(r_out.reshape(len(r_out), -1).argmax(1), o_out.reshape(len(o_out), -1).argmax(1)))
    out_codes = next((d.max_diff for d in diffs if d.node == out_node.name and d.kind == "codes"), float("nan"))
    props = {p.key: p.value for p in model.metadata_props}
    return ReferenceComparison(format, tuple(diffs), top1, out_codes, props)
