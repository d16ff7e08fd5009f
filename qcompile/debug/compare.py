"""Code-level comparison of a fake-quant subnet with its IntegerGraph (debugging and tests).

Every activation quantizer of the fake-quant model outputs `x_hat = (q - zp) * scale`; its codes are
recovered exactly as `floor(x_hat / scale + zp + 1/2)`. Every IntegerGraph op that produces codes for
that quantizer carries `meta["qcompile"]["src"] == <quantizer node name>`. `compare_codes` runs both on
the same input and reports, per quantizer in program order, how many codes differ and by how much.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from qcompile.ops import IntegerGraph
from qcompile.ops import reference as R
from qcompile.ops.table import CODE_OPS
from qcompile.passes.patterns import classify, get_module

__all__ = [
    "CodeDiff",
    "compare_codes",
    "compare_codes_local",
    "integer_node_values",
    "logit_bound",
    "quantizer_codes",
]


@dataclass(frozen=True)
class CodeDiff:
    """Codes of one quantizer: fraction that differ, largest difference, number compared."""

    name: str
    mismatch: float
    max_diff: int
    count: int


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, names: set[str]):
        super().__init__(gm)
        self.names, self.values = names, {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.name in self.names:
            self.values[n.name] = out
        return out


def quantizer_codes(gm: fx.GraphModule, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Node name -> int64 codes of every calibrated quantizer (below 32 bits) of a fake-quant graph."""
    quants = {}
    for n in gm.graph.nodes:
        if classify(n, gm).kind == "quantizer":
            q = get_module(gm, n.target)
            if q.active_bits < 32 and q.is_calibrated:
                quants[n.name] = q.qparams()
    rec = _Recorder(gm, set(quants))
    with torch.no_grad():
        rec.run(x)
    out = {}
    for name, (scale, zp) in quants.items():
        v = rec.values[name].to(torch.float64)
        out[name] = torch.floor(v / scale + zp + 0.5).to(torch.int64)
    return out


def integer_node_values(ig: IntegerGraph, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """`meta src` -> output of the last code-producing op lowered from that fake-quant node."""
    names = {n.name: n for n in ig.graph.nodes if n.op == "call_function"}
    rec = _Recorder(ig, set(names))
    with torch.no_grad():
        rec.run(x)
    out = {}
    for name, n in names.items():
        if n.target in CODE_OPS or (n.target is R.flatten and out.get(n.meta.get("qcompile", {}).get("src"))
                                     is not None):
            src = n.meta.get("qcompile", {}).get("src")
            if src is not None:
                out[src] = rec.values[name].to(torch.int64)
    return out


def _code_producers(ig: IntegerGraph) -> dict[str, fx.Node]:
    """`meta src` -> the last code-producing IntegerGraph node lowered from that fake-quant quantizer."""
    last: dict[str, fx.Node] = {}
    for n in ig.graph.nodes:
        if n.op != "call_function":
            continue
        src = n.meta.get("qcompile", {}).get("src")
        if src is not None and (n.target in CODE_OPS or (n.target is R.flatten and src in last)):
            last[src] = n
    return last


def _diffs(fq: dict[str, torch.Tensor], iv: dict[str, torch.Tensor]) -> list[CodeDiff]:
    diffs = []
    for name, codes in fq.items():
        if name not in iv:
            continue
        d = (codes - iv[name].reshape(codes.shape)).abs()
        diffs.append(CodeDiff(name, float((d > 0).double().mean()), int(d.max()), d.numel()))
    return diffs


def compare_codes(gm: fx.GraphModule, ig: IntegerGraph, x: torch.Tensor) -> list[CodeDiff]:
    """Per quantizer (program order of `gm`): mismatching-code fraction and max difference vs `ig`.

    Both programs run end to end, so a one-code rounding difference early on propagates: in a deep
    network with random weights the differences of late layers are mostly inherited (see
    `compare_codes_local` for the error each layer adds by itself).
    """
    return _diffs(quantizer_codes(gm, x), integer_node_values(ig, x))


class _TeacherForced(fx.Interpreter):
    """Runs an IntegerGraph, replacing each quantizer's codes by the fake-quant model's after recording."""

    def __init__(self, ig: IntegerGraph, teacher: dict[str, torch.Tensor]):
        super().__init__(ig)
        self.producers = {n: src for src, n in _code_producers(ig).items() if src in teacher}
        self.teacher, self.values = teacher, {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        src = self.producers.get(n)
        if src is None:
            return out
        self.values[src] = out.to(torch.int64)
        return self.teacher[src].reshape(out.shape).to(out.dtype)


def compare_codes_local(gm: fx.GraphModule, ig: IntegerGraph, x: torch.Tensor) -> list[CodeDiff]:
    """Like `compare_codes`, but each IntegerGraph op reads the fake-quant model's codes of its inputs.

    What remains is the error each quantizer's integer arithmetic adds by itself (to_integer's
    fixed-point multipliers and rounding), free of differences inherited from earlier layers: at most
    one code where a value sits on a rounding boundary, however deep the network.
    """
    fq = quantizer_codes(gm, x)
    forced = _TeacherForced(ig, fq)
    with torch.no_grad():
        forced.run(x)
    return _diffs(fq, forced.values)


def logit_bound(gm: fx.GraphModule, ig: IntegerGraph, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-class bound on `|logits(ig) - logits(gm)|` (the documented bound of to_integer).

    Both programs compute the classifier exactly from its input codes, so logits differ only through
    (a) classifier input codes that differ, each by `dx`, moving a logit by at most `scale * |w| dx`,
    and (b) the int32 bias and the fixed-point rounding, at most half an accumulator unit (`scale / 2`);
    plus float32 rounding of the fake-quant model (`1e-5` relative).
    """
    from qcompile.ops import reference as R

    lin = next(n for n in ig.graph.nodes if n.target is R.linear)
    src = lin.args[0]
    while src.target is R.flatten:
        src = src.args[0]
    rec = _Recorder(ig, {lin.args[0].name})
    with torch.no_grad():
        rec.run(x)
    x_int = rec.values[lin.args[0].name].to(torch.float64).reshape(len(x), -1)
    x_fq = quantizer_codes(gm, x)[src.meta["qcompile"]["src"]].to(torch.float64).reshape(len(x), -1)
    w = getattr(ig, lin.args[1].target).to(torch.float64)
    deq = next(n for n in ig.graph.nodes if n.target is R.dequantize_acc and n.args[0] is lin)
    scale = getattr(ig, deq.args[1].target).to(torch.float64)
    dx = (x_int - x_fq).abs()
    return scale * (0.5 + dx @ w.abs().T) + 1e-5 * (1 + ref.abs())
