"""lower-to-integer: lower a folded fake-quant subnet to an `IntegerGraph` over `qcompile.ops`.

Input: a static fake-quant subnet (fx.GraphModule of `QConv2d`/`QLinear` with LSQ weights, BatchNorm,
activations, BatchQuant activation quantizers, residual adds, pools, SE) after the passes `fold-bn`
and `fold-batchquant-bias` (BatchQuant Eq. 6). `to_integer` runs the whole pipeline
(`DEFAULT_PIPELINE`) on a copy; the walk here goes through the graph in order with one abstract
value per node:

- `Float`: a float64 tensor (float island; the graph input is float32),
- `Codes(scale, zero_point, bits)` + a pending chain of activations: uint8 codes, real value
  `f((q - zero_point) * scale)`,
- `Acc(acc_scale[C])` + pending clamps: an int32 accumulator whose real value is `acc * acc_scale[c]`,
- `Pending` add / mean / mul of codes, waiting for the quantizer that consumes them.

A BatchQuant (QFA Eq. 5) consumes the value in front of it and fuses into one epilogue
(docs/integer_semantics.md): `quantize` (float), `requantize` (accumulator: per-channel fixed-point
multiplier and shift, ReLU/ReLU6 as `lo`/`hi`), `rescale` (codes, clamp-only chain), `lut` (codes through
h-swish / swish / sigmoid / h-sigmoid), `add` (residual), `mean` (global average pool), `mul` (SE gate).
Float layers (32-bit weights, SE convs) stay float64 islands between `dequantize` and `quantize`; the
graph output is `dequantize_acc` of the classifier's accumulator.

Error against the fake-quant model (each term is measured by tests/passes/test_to_integer.py):

1. requantize: the int32 bias carries the float bias, folded BN, Eq. 6's `-(z+beta) sum w_q` and the
   output zero point `z_out / r_c` rounded once, so the pre-floor value is off by at most
   `1/2 r_c` codes (`r_c = acc_scale_c / scale_out`, "0.5 * multiplier codes"), plus the multiplier's
   relative error `< 2^-31`.
2. conv padding uses the code `floor(z + beta + 1/2)`: up to `1/2 * sum_{padded taps} |w_q|` accumulator
   units at border outputs (zero for integer zero points); see passes/fold_batchquant_bias.py.
3. rescale / add / mean / mul: fixed-point constants err by `<= (sum of input maxima + 1) / 2^(s+1)` codes.
4. `quantize` and float islands compute in float64 where the fake-quant model uses float32 (~1e-7
   relative); LUTs and clamp codes replay the fake-quant float32 arithmetic exactly.
Each term moves a code only when the fake-quant value lies within that distance of a rounding
boundary, and then by one code; logits (`dequantize_acc`) differ from the fake-quant logits by
`acc_scale_c (1/2 + sum_k |w_q[c,k]| |dx_k|)` where `dx` is the code difference at the classifier input.

The pipeline's last pass, `accumulator-range` (`passes/accumulator_range.py`), refuses
with a `LoweringError` naming the node when int32 (or int64) could overflow.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from qcompile import ops as Q
from qcompile.errors import ConfigError, LoweringError
from qcompile.nn.folded import AccConv2d, AccLinear, FoldedQConv2d, weight_bits_of
from qcompile.ops import IntegerGraph, IntegerGraphBuilder
from qcompile.ops.meta import ProgramMeta
from qcompile.passes.accumulator_range import AccumulatorRange
from qcompile.passes.elementwise import ELEMENTWISE, build_lut, clamp_interval, code_of
from qcompile.passes.fold_batchquant_bias import FoldBatchQuantBias, InputQuant, input_quantizer_params
from qcompile.passes.fold_bn import FoldBN, bn_affine
from qcompile.passes.infra import Pass, PassResult, register
from qcompile.passes.patterns import classify, get_module
from qcompile.quant.fixed_point import affine_fixed_point, quantize_multipliers
from qcompile.quant.flavour import DEFAULT_FLAVOUR, flavour_of

__all__ = ["DEFAULT_PIPELINE", "LowerToInteger", "ToInteger", "to_integer"]

log = logging.getLogger(__name__)

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


# -- abstract values ----------------------------------------------------------------------------------


@dataclass(eq=False)
class _Float:
    node: fx.Node
    pooled: bool = False
    f32_input: bool = False  # the raw graph input (float32); float-island ops need float64


@dataclass(eq=False)
class _Codes:
    node: fx.Node
    q: InputQuant
    chain: tuple[str, ...] = ()
    pooled: bool = False
    src: str = ""


@dataclass(eq=False)
class _Acc:
    layer: AccConv2d | AccLinear
    x: _Codes
    src: str
    chain: tuple[str, ...] = ()
    flat: bool = False
    pooled: bool = False
    in_hw: tuple[int, int] | None = None  # input spatial size (conv), for the exact border correction


@dataclass(eq=False)
class _Pending:
    kind: str  # add | mean | mul
    operands: tuple[_Codes, ...]
    src: str
    chain: tuple[str, ...] = ()
    flat: bool = False
    pooled: bool = False
    hw: int | None = None
    extra: dict = field(default_factory=dict)


_Value = _Float | _Codes | _Acc | _Pending


def _fmt(v: float) -> float:
    return float(f"{v:.6g}")


def _same_quant(a: InputQuant, b: InputQuant) -> bool:
    return a.bits == b.bits and math.isclose(a.scale, b.scale, rel_tol=1e-12) and math.isclose(
        a.zero_point, b.zero_point, rel_tol=1e-12, abs_tol=1e-12)


# -- the lowering walk -----------------------------------------------------------------------------------


class _Lowering:
    def __init__(self, gm: fx.GraphModule, strict: bool, float_epilogue: bool = False, widen_weights: bool = False,
                 flavour: str = DEFAULT_FLAVOUR):
        self.gm = gm
        #: the "qdq" flavour's epilogues are float32 (qcompile.ops.QDQ_OPS), the fixed-point flavour's gemmlowp
        self.qdq = flavour == "qdq"
        self.widen_weights = widen_weights
        self.strict = strict
        self.float_epilogue = float_epilogue
        self.b = IntegerGraphBuilder()
        self.env: dict[fx.Node, _Value] = {}
        self.float_cache: dict[int, fx.Node] = {}
        self.islands: list[str] = []
        self._to_f64: fx.Node | None = None

    # -- emission helpers
    def const(self, t: torch.Tensor, name: str) -> fx.Node:
        base, i = name, 1
        while hasattr(self.b.root, name):
            name, i = f"{base}_{i}", i + 1
        return self.b.const(t, name)

    def call(self, op: Any, args: tuple, kwargs: dict | None = None, *, src: str, **meta: Any) -> fx.Node:
        base = getattr(op, "__name__", "op")
        n = self.b.graph.call_function(op, tuple(args), dict(kwargs or {}), name=f"{src}_{base}")
        n.meta["qcompile"] = {"src": src, **meta}
        return n

    @staticmethod
    def _codes_meta(q: InputQuant) -> dict:
        return {"bits": q.bits, "scale": _fmt(q.scale), "zero_point": _fmt(q.zero_point)}

    # -- float materialisation
    def as_float(self, v: _Value, reason: str, at: fx.Node, allowed: bool = False) -> fx.Node:
        """The float64 value of `v` (emits dequantize / float ops once per value).

        Leaving the integer program is refused in strict mode unless `allowed` (the input of a float
        layer, the graph output).
        """
        if isinstance(v, _Float):
            if v.f32_input:
                if self._to_f64 is None:
                    # float islands are float64 (integer_semantics.md); x + 0.0 (f64) promotes exactly
                    zero = self.const(torch.zeros(1, dtype=torch.float64), "input_to_f64")
                    self._to_f64 = self.call(operator.add, (v.node, zero), src="input", note="float32 -> float64")
                return self._to_f64
            return v.node
        key = id(v)
        if key in self.float_cache:
            return self.float_cache[key]
        if self.strict and not allowed:
            raise LoweringError(f"node {at.name}", f"{reason}: the value from {v.src} would leave the integer "
                                f"program (a float island)", "remove the op, or lower with strict=False")
        self.islands.append(f"{at.name}: {reason}")
        log.info("to_integer: float island at %s (%s)", at.name, reason)
        src = v.src
        if isinstance(v, _Codes):
            node = self.call(Q.dequantize, (v.node, v.q.scale, v.q.zero_point), src=src, **self._codes_meta(v.q))
            chain, flat = v.chain, False
        elif isinstance(v, _Acc):
            # the graph output stays `dequantize_acc` (bias rounded to 1/2 accumulator unit, error term 1);
            # inside the graph a float island gets the exact correction
            node = self.exact_acc_float(v, correct=at.op != "output")
            chain, flat = v.chain, v.flat
        else:
            xs = [self.as_float(o, reason, at, allowed) for o in v.operands]
            if v.kind == "add":
                node = self.call(operator.add, tuple(xs), src=src)
            elif v.kind == "mul":
                node = self.call(operator.mul, tuple(xs), src=src)
            else:
                node = self.call(torch.mean, (xs[0],), {"dim": (2, 3), "keepdim": True}, src=src)
            chain, flat = v.chain, v.flat
        for name in chain:
            node = self.call(ELEMENTWISE[name].fn, (node,), src=src)
        if flat:
            node = self.call(torch.flatten, (node, 1), src=src)
        self.float_cache[key] = node
        return node

    # -- accumulators
    def emit_acc(self, v: _Acc, bias_acc: torch.Tensor) -> fx.Node:
        """conv2d / linear on the input codes with `bias = floor(bias_acc + 1/2)` (int32, range-checked)."""
        layer = v.layer
        b = torch.floor(bias_acc.to(torch.float64) + 0.5)
        if float(b.min()) < _INT32_MIN or float(b.max()) > _INT32_MAX:
            raise LoweringError(f"node {v.src}", f"folded int32 bias reaches [{b.min():.4g}, {b.max():.4g}], "
                                "outside int32", "check the quantizer scales and BN statistics of this layer")
        w = self.const(layer.weight_codes.clone(), f"{v.src}_w")
        bias = self.const(b.to(torch.int32), f"{v.src}_bias")
        meta = {"weight_bits": layer.weight_bits, "in_bits": layer.in_bits}
        if getattr(layer, "code_shift", 0):
            meta["weight_codes_x"] = 2**layer.code_shift
        if isinstance(layer, AccConv2d):
            kw = {"stride": tuple(layer.stride), "padding": tuple(layer.padding), "dilation": tuple(layer.dilation),
                  "groups": int(layer.groups), "pad_value": int(layer.pad_value)}
            return self.call(Q.conv2d, (v.x.node, w, bias), kw, src=v.src, **meta)
        return self.call(Q.linear, (v.x.node, w, bias), src=v.src, **meta)

    def exact_acc_float(self, v: _Acc, correct: bool = True) -> fx.Node:
        """Real value of an accumulator, exact: `dequantize_acc` plus a float64 correction constant.

        The correction restores what the int32 form rounds away: the fractional bias
        `acc_scale (bias_acc - bias_int)` and, at border outputs of a padded conv, the padding code's
        offset from the fractional zero point `acc_scale (z + beta - pad_value) sum_{padded taps} w_q`.
        """
        layer, src = v.layer, v.src
        acc = self.emit_acc(v, layer.bias_acc)
        scale = self.const(layer.acc_scale.clone(), f"{src}_acc_scale")
        node = self.call(Q.dequantize_acc, (acc, scale), src=src)
        if not correct:
            return node
        frac = layer.bias_acc - torch.floor(layer.bias_acc + 0.5)
        corr = frac.reshape((1, -1) + ((1, 1) if isinstance(layer, AccConv2d) else ()))
        if isinstance(layer, AccConv2d) and any(layer.padding) and not layer.pads_with_zero_code:
            dz = layer.in_zero_point - layer.pad_value
            if dz != 0.0:
                if v.in_hw is None:
                    raise LoweringError(f"node {src}", "the border correction of a padded conv needs the input size",
                                        "pass input_shape= to to_integer")
                cin = layer.weight_codes.shape[1] * layer.groups
                ph, pw = layer.padding
                mask = F.pad(torch.zeros(1, cin, *v.in_hw, dtype=torch.float64), (pw, pw, ph, ph), value=1.0)
                border = F.conv2d(mask, layer.weight_codes.to(torch.float64), None, layer.stride, 0, layer.dilation,
                                  layer.groups)
                corr = corr + dz * border
        corr = corr * layer.acc_scale.reshape(corr.shape[:2] + (1,) * (corr.ndim - 2))
        if bool((corr != 0).any()):
            node = self.call(operator.add, (node, self.const(corr, f"{src}_correction")), src=src,
                             note="exact bias/border correction")
        return node

    # -- the consumer quantizer: fuse the pending value into one epilogue
    def clamp_codes(self, chain: Sequence[str], q: InputQuant) -> tuple[int, int]:
        iv = clamp_interval(chain)
        if iv is None or not chain:
            return 0, q.qmax
        lo = code_of(iv[0], q.scale, q.zero_point, q.qmax)
        hi = code_of(iv[1], q.scale, q.zero_point, q.qmax)
        return lo, max(lo, hi)

    def quantize_value(self, v: _Value, q: InputQuant, node: fx.Node) -> _Codes:
        src = node.name
        cm = self._codes_meta(q)
        if isinstance(v, _Acc) and self.float_epilogue:
            v = _Float(self.as_float(v, "float epilogue", node, allowed=True), pooled=v.pooled)
        if isinstance(v, (_Acc, _Pending)) and clamp_interval(v.chain) is None:
            v = _Float(self.as_float(v, f"{v.chain} on {'an accumulator' if isinstance(v, _Acc) else v.kind} "
                                       "has no integer form", node), pooled=v.pooled)
        if isinstance(v, _Float):
            x = v.node  # quantize accepts the float32 input directly
            if not v.f32_input:
                x = self.as_float(v, "", node)
            if self.qdq:
                out = self.call(Q.quantize_linear, (x, q.scale, _int_zp(q, src), q.qmax), src=src, **cm)
            else:
                out = self.call(Q.quantize, (x, 1.0 / q.scale, q.zero_point + 0.5, q.qmax), src=src, **cm)
            return _Codes(out, q, pooled=v.pooled, src=src)
        if isinstance(v, _Codes):
            if not v.chain and _same_quant(v.q, q):
                return _Codes(v.node, q, pooled=v.pooled, src=src)
            if clamp_interval(v.chain) is not None and self.qdq:
                lo, hi = self.clamp_codes(v.chain, q)
                out = self.call(Q.rescale_float, (v.node,), {
                    "x_scale": v.q.scale, "x_zero_point": _int_zp(v.q, src), "y_scale": q.scale,
                    "zero_point": _int_zp(q, src), "lo": lo, "hi": hi}, src=src, **cm)
            elif clamp_interval(v.chain) is not None:
                lo, hi = self.clamp_codes(v.chain, q)
                r = v.q.scale / q.scale
                fp = affine_fixed_point([r], q.zero_point + 0.5 - v.q.zero_point * r, [v.q.qmax], f"node {src}")
                out = self.call(Q.rescale, (v.node,), {"multiplier": fp.multipliers[0], "offset": fp.offset,
                                                       "shift": fp.shift, "lo": lo, "hi": hi}, src=src, **cm)
            else:
                table = build_lut(v.chain, v.q.scale, v.q.zero_point, q.scale, q.zero_point, q.bits)
                out = self.call(Q.lut, (v.node, self.const(table, f"{src}_table")), src=src,
                                fn="+".join(v.chain), **cm)
            return _Codes(out, q, pooled=v.pooled, src=src)
        lo, hi = self.clamp_codes(v.chain, q)
        if self.qdq and (isinstance(v, _Acc) or v.kind in ("add", "mean", "mul")):
            out = self.qdq_epilogue(v, q, lo, hi, src, cm)
        elif isinstance(v, _Acc):
            r = v.layer.acc_scale.numpy() / q.scale
            m, s = quantize_multipliers(r, f"node {src}")
            if (m == 0).any():
                raise LoweringError(f"node {src}", f"rescaling factor {r.min():.3g} underflows the multiplier",
                                    "the output quantizer's scale is absurdly large; recalibrate")
            # Output zero point into the bias, in accumulator units of the realised multiplier. The int32
            # bias takes the integer part; the fraction goes into the per-channel rounding offset
            # (2^(s-1) + round(frac * M)), so the only rounding left is that of frac * M (< 1/2^(s-log2 M)).
            zp_acc = torch.from_numpy(q.zero_point * np.ldexp(1.0, s) / m.astype(np.float64))
            total = (v.layer.bias_acc.to(torch.float64) + zp_acc).numpy()
            b_int = np.floor(total + 0.5)
            offset = (np.left_shift(np.int64(1), s.astype(np.int64) - 1)
                      + np.round((total - b_int) * m.astype(np.float64)).astype(np.int64))
            acc = self.emit_acc(v, torch.from_numpy(b_int))
            out = self.call(Q.requantize, (acc, self.const(torch.from_numpy(m).to(torch.int32), f"{src}_M"),
                                           self.const(torch.from_numpy(s).to(torch.int32), f"{src}_shift")),
                            {"lo": lo, "hi": hi, "offset": self.const(torch.from_numpy(offset), f"{src}_offset")},
                            src=src, **cm)
        elif v.kind == "add":
            a, b = v.operands
            ra, rb = a.q.scale / q.scale, b.q.scale / q.scale
            c = q.zero_point + 0.5 - a.q.zero_point * ra - b.q.zero_point * rb
            fp = affine_fixed_point([ra, rb], c, [a.q.qmax, b.q.qmax], f"node {src}")
            out = self.call(Q.add, (a.node, b.node), {
                "multiplier_a": fp.multipliers[0], "multiplier_b": fp.multipliers[1], "offset": fp.offset,
                "shift": fp.shift, "lo": lo, "hi": hi}, src=src, **cm)
        elif v.kind == "mean":
            (x,) = v.operands
            assert v.hw is not None
            r = x.q.scale / (v.hw * q.scale)
            c = q.zero_point + 0.5 - x.q.zero_point * x.q.scale / q.scale
            fp = affine_fixed_point([r], c, [x.q.qmax * v.hw], f"node {src}")
            out = self.call(Q.mean, (x.node,), {"multiplier": fp.multipliers[0], "offset": fp.offset,
                                                "shift": fp.shift, "lo": lo, "hi": hi}, src=src, hw=v.hw, **cm)
        else:  # mul: (x - zx)(g - zg) sx sg / so + zo + 1/2 = r xg - r zx g - r zg x + r zx zg + zo + 1/2
            x, g = v.operands
            r = x.q.scale * g.q.scale / q.scale
            zx, zg = x.q.zero_point, g.q.zero_point
            fp = affine_fixed_point([r, -zx * r, -zg * r], q.zero_point + 0.5 + r * zx * zg,
                                    [x.q.qmax * g.q.qmax, g.q.qmax, x.q.qmax], f"node {src}")
            out = self.call(Q.mul, (x.node, g.node), {
                "multiplier": fp.multipliers[0], "offset_g": fp.multipliers[1], "offset_x": fp.multipliers[2],
                "offset": fp.offset, "shift": fp.shift, "lo": lo, "hi": hi}, src=src, **cm)
        if v.flat:
            out = self.call(Q.flatten, (out,), src=src)
        return _Codes(out, q, pooled=v.pooled, src=src)

    def qdq_epilogue(self, v: _Acc | _Pending, q: InputQuant, lo: int, hi: int, src: str, cm: dict) -> fx.Node:
        """The qdq flavour's epilogues: `requantize_float` (QLinearConv), `add_float`, `mul_float`, `mean_float`.

        A conv's weight scale is `acc_scale / x_scale` in float32 (BN folded into it, BatchQuant Eq. 6 with an
        integer zero point), so onnxruntime's `X_scale * W_scale / Y_scale` is the real requantization factor;
        the int32 bias is `round(b / acc_scale) - zx sum w`, the integer the QDQ bias (int32, scale
        `X_scale * W_scale`) and the input zero point put in QLinearConv's accumulator.
        """
        zp = _int_zp(q, src)
        if isinstance(v, _Acc):
            xq = v.x.q
            w_scale = (v.layer.acc_scale.to(torch.float64) / xq.scale).to(torch.float32)
            if not bool(torch.isfinite(w_scale).all()) or bool((w_scale <= 0).any()):
                raise LoweringError(f"node {src}", "weight scale acc_scale / x_scale is not a positive float32",
                                    "recalibrate: a zero or non-finite scale means a dead channel or broken statistics")
            acc = self.emit_acc(v, v.layer.bias_acc)
            return self.call(Q.requantize_float, (acc, self.const(w_scale, f"{src}_w_scale")), {
                "x_scale": xq.scale, "x_zero_point": _int_zp(xq, src), "y_scale": q.scale, "zero_point": zp,
                "lo": lo, "hi": hi}, src=src, **cm)
        if v.kind == "add":
            a, b = v.operands
            return self.call(Q.add_float, (a.node, b.node), {
                "a_scale": a.q.scale, "a_zero_point": _int_zp(a.q, src), "b_scale": b.q.scale,
                "b_zero_point": _int_zp(b.q, src), "y_scale": q.scale, "zero_point": zp, "lo": lo, "hi": hi},
                src=src, **cm)
        if v.kind == "mul":
            x, g = v.operands
            return self.call(Q.mul_float, (x.node, g.node), {
                "x_scale": x.q.scale, "x_zero_point": _int_zp(x.q, src), "g_scale": g.q.scale,
                "g_zero_point": _int_zp(g.q, src), "y_scale": q.scale, "zero_point": zp, "lo": lo, "hi": hi},
                src=src, **cm)
        (x,) = v.operands
        return self.call(Q.mean_float, (x.node,), {"x_scale": x.q.scale, "x_zero_point": _int_zp(x.q, src),
                                                    "y_scale": q.scale, "zero_point": zp, "lo": lo, "hi": hi},
                         src=src, hw=v.hw, **cm)

    # -- float layers
    def float_layer(self, node: fx.Node, mod: nn.Module) -> _Float:
        v = self.env[node.args[0]]
        x = self.as_float(v, f"input of float layer {type(mod).__name__}", node, allowed=True)
        w = mod.weight.detach().to(torch.float64)
        bits = weight_bits_of(mod)
        if bits < 32:  # quantized weights on a float input: dequantized weights, float island
            codes, scale = mod.weight_quant.codes(mod.weight)
            w = codes.to(torch.float64) * scale.detach().to(torch.float64).reshape((-1,) + (1,) * (w.ndim - 1))
        b = mod.bias.detach().to(torch.float64) if mod.bias is not None else None
        if isinstance(mod, FoldedQConv2d):
            w = w * mod.channel_scale.detach().to(torch.float64).reshape(-1, 1, 1, 1)
        wn = self.const(w, f"{node.name}_weight")
        bn_ = self.const(b, f"{node.name}_bias") if b is not None else None
        meta = {"weight_bits": bits, "float": True}
        if isinstance(mod, nn.Conv2d):
            if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                raise LoweringError(f"node {node.name}", f"padding {mod.padding!r}/{mod.padding_mode!r} unsupported",
                                    "use numeric zero padding")
            out = self.call(F.conv2d, (x, wn, bn_, tuple(mod.stride), tuple(mod.padding), tuple(mod.dilation),
                                       int(mod.groups)), src=node.name, **meta)
        else:
            out = self.call(F.linear, (x, wn, bn_), src=node.name, **meta)
        self.islands.append(f"{node.name}: {bits}-bit layer")
        return _Float(out, pooled=getattr(v, "pooled", False))

    # -- the walk
    def lower(self, shapes: dict[str, tuple[int, ...]]) -> IntegerGraph:
        output_node = None
        for node in self.gm.graph.nodes:
            k = classify(node, self.gm)
            self.env[node] = self._lower_node(node, k.kind, k.params, shapes)
            if node.op == "output":
                output_node = node
        assert output_node is not None
        return IntegerGraph(self.b.root, self.b.graph)

    def _unknown(self, node: fx.Node) -> LoweringError:
        what = node.target if node.op != "call_module" else type(get_module(self.gm, node.target)).__name__
        name = getattr(what, "__name__", str(what))
        return LoweringError(
            f"node {node.name} ({node.op} {name})",
            "this op has no integer form and is not a float-island op of docs/integer_semantics.md",
            _SUPPORTED_REMEDY,
        )

    def _lower_node(self, node: fx.Node, kind: str, params: dict, shapes: dict[str, tuple[int, ...]]) -> Any:
        if kind == "placeholder":
            if any(isinstance(v, _Float) and v.f32_input for v in self.env.values()):
                raise LoweringError(f"node {node.name}", "a second graph input", "an IntegerGraph has one input")
            return _Float(self.b.input(node.name), f32_input=True)
        if kind == "output":
            res = node.args[0]
            if not isinstance(res, fx.Node):
                raise LoweringError(f"node {node.name}", f"graph output {type(res).__name__} is not one tensor",
                                    "return a single tensor (the logits)")
            v = self.env[res]
            out = v.node if isinstance(v, _Float) else self.as_float(v, "graph output", node, allowed=True)
            self.b.graph.output(out)
            return None
        if kind in ("get_attr", "unknown"):
            raise self._unknown(node)
        x = node.args[0] if node.args else None
        v = self.env.get(x) if isinstance(x, fx.Node) else None
        if v is None and kind not in ("add", "mul"):
            raise self._unknown(node)
        if kind == "identity":
            return v
        if kind == "quantizer":
            q = input_quantizer_params(get_module(self.gm, node.target), node.name)
            return v if q is None else self.quantize_value(v, q, node)
        if kind == "acc_conv" or kind == "acc_linear":
            layer = get_module(self.gm, node.target)
            inq = InputQuant(layer.in_scale, layer.in_zero_point, layer.in_bits)
            if not (isinstance(v, _Codes) and not v.chain and _same_quant(v.q, inq)):
                raise LoweringError(f"node {node.name}", "its input is not the codes of the quantizer it was folded "
                                    "with", "run fold-batchquant-bias directly before to-integer")
            if self.widen_weights and layer.in_bits <= 7:
                # sub-8-bit weights spread over int8: the int32 bias rounds 2^k times finer. Inputs of at
                # most 7 bits keep u8 x s8 pair sums below 2^15 (no vpmaddubsw saturation).
                k = layer.max_widening()
                if k > 0:
                    layer = layer.widened(k)
            hw = shapes.get(x.name)
            return _Acc(layer, v, node.name, pooled=v.pooled, in_hw=None if hw is None else tuple(hw[2:]))
        if kind in ("conv", "linear"):
            return self.float_layer(node, get_module(self.gm, node.target))
        if kind == "bn":
            bn = get_module(self.gm, node.target)
            a, c = bn_affine(bn, f"node {node.name}")
            xf = self.as_float(v, "BatchNorm2d not folded into a conv", node)
            y = self.call(operator.mul, (xf, self.const(a.reshape(1, -1, 1, 1), f"{node.name}_scale")), src=node.name)
            y = self.call(operator.add, (y, self.const(c.reshape(1, -1, 1, 1), f"{node.name}_shift")), src=node.name)
            return _Float(y, pooled=getattr(v, "pooled", False))
        if kind == "act":
            act = params["act"]
            if isinstance(v, _Float):
                return _Float(self.call(ELEMENTWISE[act].fn, (self.as_float(v, "", node),), src=node.name),
                              pooled=v.pooled)
            if isinstance(v, (_Acc, _Pending)) and ELEMENTWISE[act].clamp is None:
                xf = self.as_float(v, f"{act} needs an 8-bit quantizer on its input for a lookup table", node)
                return _Float(self.call(ELEMENTWISE[act].fn, (xf,), src=node.name), pooled=v.pooled)
            return _replace(v, chain=v.chain + (act,))
        if kind == "flatten":
            if isinstance(v, _Float):
                return _Float(self.call(torch.flatten, (self.as_float(v, "", node), 1), src=node.name),
                              pooled=v.pooled)
            if isinstance(v, _Codes):
                return _Codes(self.call(Q.flatten, (v.node,), src=node.name), v.q, v.chain, v.pooled, v.src)
            return _replace(v, flat=True)
        if kind == "mean":
            if isinstance(v, _Codes) and not v.chain and x.name in shapes:
                hw = int(shapes[x.name][2] * shapes[x.name][3])
                return _Pending("mean", (v,), node.name, flat=not params["keepdim"], pooled=True, hw=hw)
            if isinstance(v, _Codes) and not v.chain:
                reason = "the spatial size is unknown (pass input_shape=)"
            else:
                reason = "average pool of a value that is not plain codes"
            xf = self.as_float(v, reason, node)
            y = self.call(torch.mean, (xf,), {"dim": (2, 3), "keepdim": True}, src=node.name)
            if not params["keepdim"]:
                y = self.call(torch.flatten, (y, 1), src=node.name)
            return _Float(y, pooled=True)
        if kind in ("add", "mul"):
            return self._binary(node, kind)
        if kind == "maxpool":
            return self._maxpool(node, v, params)
        raise self._unknown(node)

    def _maxpool(self, node: fx.Node, v: _Value, params: dict) -> _Codes:
        """Max pool on plain codes: the codes of the float max pool (ops.max_pool2d), same quantizer."""
        if not (isinstance(v, _Codes) and not v.chain):
            raise LoweringError(f"node {node.name}", "max pool of a value that is not plain activation codes",
                                "put an activation quantizer directly before the max pool (qc.quantize_model "
                                "does)")
        out = self.call(Q.max_pool2d, (v.node,), {k: tuple(params[k]) for k in
                                                  ("kernel_size", "stride", "padding", "dilation")},
                        src=node.name, **self._codes_meta(v.q))
        return _Codes(out, v.q, pooled=v.pooled, src=node.name)

    def _binary(self, node: fx.Node, kind: str) -> _Value:
        args = node.args
        vals = [self.env.get(a) if isinstance(a, fx.Node) else a for a in args]
        codes = [v for v in vals if isinstance(v, _Codes) and not v.chain]
        if len(codes) == 2:
            a, b = codes
            if kind == "add":
                return _Pending("add", (a, b), node.name, pooled=a.pooled and b.pooled)
            if a.pooled != b.pooled:
                x, g = (b, a) if a.pooled else (a, b)
                return _Pending("mul", (x, g), node.name)
            else:
                reason = "elementwise product of two full tensors"
        else:
            reason = f"{kind} of values that are not plain codes"
        fl = []
        for v in vals:
            if isinstance(v, (_Float, _Codes, _Acc, _Pending)):
                fl.append(self.as_float(v, reason, node))
            elif isinstance(v, (int, float)):
                fl.append(float(v))
            else:
                raise self._unknown(node)
        op = operator.add if kind == "add" else operator.mul
        pooled = all(getattr(v, "pooled", True) for v in vals)
        return _Float(self.call(op, tuple(fl), src=node.name), pooled=pooled)


def _int_zp(q: InputQuant, where: str) -> int:
    """The integer zero point of a qdq-flavour quantizer (LoweringError if a fractional one got mixed in)."""
    zp = q.zero_point
    if zp != math.floor(zp):
        raise LoweringError(f"node {where}", f"zero point {zp!r} is fractional in a 'qdq' flavour program",
                            "put every activation quantizer in one flavour: qcompile.quant.set_flavour(subnet, 'qdq')")
    return int(zp)


def _replace(v: _Value, **changes: Any) -> _Value:
    new = copy.copy(v)
    for k, val in changes.items():
        setattr(new, k, val)
    return new


# -- driver ------------------------------------------------------------------------------------------------


def _shapes_4d(gm: fx.GraphModule, input_shape: Sequence[int] | None) -> dict[str, tuple[int, ...]]:
    """Node name -> shape of 4-D node outputs, from ShapeProp on `input_shape` or existing tensor_meta."""
    if input_shape is not None:
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros(tuple(input_shape)))
    out = {}
    for n in gm.graph.nodes:
        tm = n.meta.get("tensor_meta")
        if tm is not None and hasattr(tm, "shape") and len(tm.shape) == 4:
            out[n.name] = tuple(int(d) for d in tm.shape)
    return out


def _input_shape_of(gm: fx.GraphModule) -> tuple[int, ...] | None:
    """The input shape `slice_subnet` / `quantize_model` recorded in `gm.meta["input_shape"]`, the one place
    it is kept on a fake-quant graph (`ProgramMeta.input_shape` carries it on to the IntegerGraph)."""
    shape = getattr(gm, "meta", {}).get("input_shape")
    return None if shape is None else tuple(int(s) for s in shape)


_SUPPORTED_REMEDY = (
    "replace it with a supported op (conv, linear, BN, ReLU/ReLU6, h-swish, swish, sigmoid, h-sigmoid, "
    "add, SE mul, global average pool, max pool, flatten) or extend qcompile.ops"
)


def unsupported_nodes(gm: fx.GraphModule) -> list[str]:
    """`"node name (op target)"` of every node of `gm` the lowering has no form for, in graph order."""
    out = []
    for n in gm.graph.nodes:
        if classify(n, gm).kind == "unknown" and n.op != "get_attr":
            what = n.target if n.op != "call_module" else type(get_module(gm, n.target)).__name__
            out.append(f"node {n.name} ({n.op} {getattr(what, '__name__', what)})")
    return out


def _check_supported(gm: fx.GraphModule) -> None:
    """Refuse unknown ops before folding, naming every unsupported node of the user's graph at once."""
    bad = unsupported_nodes(gm)
    if bad:
        where = bad[0] if len(bad) == 1 else f"{len(bad)} unsupported nodes: " + ", ".join(bad)
        raise LoweringError(
            where,
            "this op has no integer form and is not a float-island op of docs/integer_semantics.md"
            if len(bad) == 1 else
            "these ops have no integer form and are not float-island ops of docs/integer_semantics.md",
            _SUPPORTED_REMEDY,
        )


#: the passes of `to_integer` (each registered; the options of the last two come from its arguments)
DEFAULT_PIPELINE = "fold-bn,fold-batchquant-bias,lower-to-integer,accumulator-range"


def to_integer(
    gm: fx.GraphModule,
    check_overflow: bool = True,
    input_shape: Sequence[int] | None = None,
    strict: bool = False,
    bound: str = "bits",
    float_epilogue: bool = False,
    widen_weights: bool = False,
    *,
    pipeline: str | Sequence[Any] | None = None,
    verify: bool = True,
    copy_input: bool = True,
) -> IntegerGraph:
    """Lower a calibrated fake-quant subnet to an `IntegerGraph` (the subnet itself is not modified).

    Runs `DEFAULT_PIPELINE` (`fold-bn`, `fold-batchquant-bias`, `lower-to-integer`,
    `accumulator-range`) through a `PassManager` on a copy of `gm`, with the graph verifier after
    each pass and a reproducer file on failure.

    Args:
        gm: static fake-quant subnet (`slice_subnet` + calibration), or one already through
            `fold_bn` / `fold_batchquant_bias`.
        check_overflow: run the accumulator range analysis and refuse (LoweringError) on overflow.
        input_shape: `(N, C, H, W)` of the input; needed for integer global average pooling (the `mean`
            multiplier depends on H*W) and for shapes in `program_text()`. Defaults to the shape
            `slice_subnet` recorded (`gm.meta["input_shape"]`); without one, pools become float islands.
        strict: refuse (LoweringError) any float island other than float layers and the graph output.
        bound: accumulator bound, `"bits"` (any weights of the bit-width) or `"weights"` (these weights).
        float_epilogue: replace each `requantize` by `dequantize_acc`, an exact float64 correction
            (fractional bias, padding border) and `quantize`: integer convs with float epilogues that
            match the fake-quant model code for code (a diagnostic and reference mode; see module doc).
        widen_weights: store `b`-bit weight codes times `2^(8-b)` (same real weights) where the input has
            at most 7 bits, so the int32 bias rounds `2^(8-b)` times more finely (error term 1 below).
        pipeline: instead of the default, these passes (a pipeline string such as
            `"fold-bn,fold-batchquant-bias,lower-to-integer,my-pass"`, or pass instances); their
            options come from the string, so `check_overflow` .. `widen_weights` are not used then.
            `input_shape` still fills in `lower-to-integer`'s when the string leaves it out. The
            pipeline must produce an IntegerGraph (contain `lower-to-integer` or `to-integer`).
        verify: run the graph verifier after every pass.
        copy_input: run on a deep copy of `gm` (default); False lets the passes consume `gm` (callers that
            made `gm` only to convert it, and want to skip copying its weights).

    Returns an `IntegerGraph`; `ig(x)` runs the exact reference and returns float64 logits.
    """
    from qcompile.passes.infra import PassManager

    if not isinstance(gm, fx.GraphModule):
        raise LoweringError("subnet", f"got a {type(gm).__name__}",
                            "pass a calibrated subnet (qc.extract + qc.calibrate)")
    _check_supported(gm)
    shape = None if input_shape is None else tuple(int(s) for s in input_shape)
    if pipeline is None:
        passes: list[Any] = [FoldBN(), FoldBatchQuantBias(),
                             LowerToInteger(shape, strict=strict, float_epilogue=float_epilogue,
                                            widen_weights=widen_weights)]
        if check_overflow:
            passes.append(AccumulatorRange(bound=bound))
    else:
        passes = list(PassManager(pipeline, verify=False).passes)
        if shape is not None:
            passes = [dataclasses.replace(p, input_shape=shape)
                      if isinstance(p, (LowerToInteger, ToInteger)) and p.input_shape is None else p for p in passes]
    pm = PassManager(passes, verify=verify)
    work = (copy.deepcopy(gm) if copy_input else gm).eval()
    ig = pm.run(work).graph_module
    if not isinstance(ig, IntegerGraph):
        raise ConfigError("pipeline", pm.pipeline, "a pipeline that produces an IntegerGraph, e.g. "
                          f"'{DEFAULT_PIPELINE}' plus your passes")
    ig.program_meta = dataclasses.replace(ProgramMeta.from_dict(ig.program_meta), pipeline=pm.pipeline).to_dict()
    log.info("to_integer: %d ops, %d float islands (%s)", len(ig.ops()),
             len(ig.program_meta.get("float_islands", ())), pm.pipeline)
    return ig


def _pad_codes(ig: IntegerGraph) -> tuple[tuple[str, int], ...]:
    out = []
    for n in ig.graph.nodes:
        if n.op == "call_function" and n.target is Q.conv2d and any(n.kwargs.get("padding", (0, 0))):
            out.append((n.name, int(n.kwargs.get("pad_value", 0))))
    return tuple(out)


@register
@dataclass(frozen=True)
class LowerToInteger(Pass):
    """Lower a folded fake-quant subnet (after `fold-bn`, `fold-batchquant-bias`) to an `IntegerGraph`.

    The walk of the module doc. The result carries its `ProgramMeta` (subnet config and policy,
    input shape, padding codes, float islands) in `program_meta`; options as in `to_integer`.
    `input_shape` defaults to the shape `slice_subnet` recorded in `gm.meta`.
    """

    name = "lower-to-integer"
    input_shape: tuple[int, ...] | None = None
    strict: bool = False
    float_epilogue: bool = False
    widen_weights: bool = False

    def run(self, gm: fx.GraphModule) -> PassResult:
        _check_supported(gm)
        shape = tuple(self.input_shape) if self.input_shape is not None else _input_shape_of(gm)
        shapes = _shapes_4d(gm, shape)
        flavour = flavour_of(gm)
        if flavour != DEFAULT_FLAVOUR and self.float_epilogue:
            raise ConfigError("float_epilogue", True, (False,),
                              f"the {flavour!r} flavour has float epilogues of its own")
        lowering = _Lowering(gm, strict=self.strict, float_epilogue=self.float_epilogue,
                             widen_weights=self.widen_weights and flavour == DEFAULT_FLAVOUR, flavour=flavour)
        ig = lowering.lower(shapes)
        meta = ProgramMeta(config=gm.meta.get("subnet_config"), input_shape=shape, pad_codes=_pad_codes(ig),
                           float_islands=tuple(dict.fromkeys(lowering.islands)), flavour=flavour)
        ig.program_meta = meta.to_dict()
        if shape is not None:
            with torch.no_grad():
                ShapeProp(ig).propagate(torch.zeros(shape))
        return PassResult(ig, True)


@register
@dataclass(frozen=True)
class ToInteger(Pass):
    """`lower-to-integer`, then `accumulator-range` when `check_overflow`: the pipeline string
    `"fold-bn,fold-batchquant-bias,to-integer"` folds once (this pass does not fold)."""

    name = "to-integer"
    check_overflow: bool = True
    input_shape: tuple[int, ...] | None = None
    strict: bool = False
    bound: str = "bits"
    float_epilogue: bool = False
    widen_weights: bool = False

    def run(self, gm: fx.GraphModule) -> PassResult:
        res = LowerToInteger(self.input_shape, self.strict, self.float_epilogue, self.widen_weights).run(gm)
        if self.check_overflow:
            AccumulatorRange(bound=self.bound).run(res.graph_module)
        return res
