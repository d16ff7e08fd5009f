"""Translate an `IntegerGraph` node by node into ONNX nodes (docs/integer_semantics.md).

Two encodings of the same integer program:

* ``qoperator``: integer operators only. Conv/linear become ConvInteger/MatMulInteger (int32),
  the bias is added in int64 and every fixed-point rule `clamp((v*M + offset) >> s, lo, hi)` is
  spelled out with int64 Mul/Add/Div and Clip. ONNX integer Div truncates toward zero where `>>`
  floors, but the two differ only for negative quotients, which the clamp maps to `lo >= 0`
  either way, so the result is bit-exact.
* ``qdq``: a conv/linear whose accumulator feeds only a `requantize` becomes
  DequantizeLinear -> Conv/Gemm -> QuantizeLinear, which onnxruntime fuses into QLinearConv /
  QGemm. The activation scale is 1 (tensors hold the codes), the per-channel weight scale is the
  fixed-point factor `M / 2^s` in float32 and the zero point is the pad code, so the fused kernel
  computes `round_half_even(float32(M / 2^s) * acc)`: within one code of the reference's
  round-half-up (ties and the 24-bit mantissa of the scale). All other ops are emitted as in
  ``qoperator``.

Float islands run in float64 where onnxruntime has a float64 kernel (MatMul, Gemm, Relu, Clip,
Sigmoid, ReduceMean, Add, Mul); hardswish/hardsigmoid are written with the formulas torch uses;
a k x k conv island has no float64 kernel in onnxruntime and runs in float32 (recorded in the
model metadata as ``float32_islands``), 1 x 1 convs become a float64 MatMul.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx

from qcompile.errors import LoweringError
from qcompile.ops import reference as R
from qcompile.ops.table import op_def

log = logging.getLogger(__name__)

FORMATS = ("qdq", "qoperator")

#: How conv / linear weight codes are stored (`OnnxExportOptions.weights`): "int8" codes with zero point 0,
#: "uint8" codes `w + 128` with zero point 128 (the same integers), or "auto": uint8 for a layer whose codes
#: leave [-64, 64], int8 otherwise. Why: onnxruntime's MLAS u8 x s8 GEMM on x86 without VNNI (AVX2, AVX-512
#: without VNNI) adds pairs of u8 * s8 products with `vpmaddubsw` into a *saturating* int16, and
#: 2 * 255 * 127 > 32767; its u8 x u8 path widens to int16 first and is exact (docs/qdq.md, measured).
WEIGHT_STORAGE = ("auto", "int8", "uint8")

#: With |w| <= 64 no pair of u8 * s8 products leaves int16 (2 * 255 * 64 = 32640 <= 32767): the bound under
#: which onnxruntime's own Avx2WeightS8ToU8Transformer (`session.x64quantprecision`) leaves a layer int8.
U8S8_SAFE_ABS_WEIGHT = 64


@dataclass(frozen=True)
class ValueInfo:
    """dtype and shape (batch 1) of one node's value in the reference executor."""

    dtype: torch.dtype
    shape: tuple[int, ...]


def onnx_dtype(dtype: torch.dtype) -> int:
    """ONNX TensorProto element type of a torch dtype used by IntegerGraphs."""
    from onnx import TensorProto as T

    table = {
        torch.uint8: T.UINT8,
        torch.int8: T.INT8,
        torch.int32: T.INT32,
        torch.int64: T.INT64,
        torch.float32: T.FLOAT,
        torch.float64: T.DOUBLE,
    }
    if dtype not in table:
        raise LoweringError("onnx export", f"dtype {dtype} has no ONNX counterpart here", f"use one of {list(table)}")
    return table[dtype]


_NP = {
    torch.uint8: np.uint8,
    torch.int8: np.int8,
    torch.int32: np.int32,
    torch.int64: np.int64,
    torch.float32: np.float32,
    torch.float64: np.float64,
}

def _bind(node: fx.Node) -> dict[str, Any]:
    """Operands and parameters of a node by name, as the op table declares them (defaults filled in)."""
    d = op_def(node.target)
    if d is None:
        raise LoweringError(f"node {node.name}", f"op {node.target} is not in the op table",
                            "only qcompile.ops and the float-island ops are allowed")
    return d.bind(node.args, node.kwargs, f"node {node.name}")


def _bind_integer(node: fx.Node) -> dict[str, Any]:
    return _bind(node)


def _bind_float(node: fx.Node) -> dict[str, Any]:
    return _bind(node)


def _pair(v: int | Sequence[int], what: str, node: fx.Node) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, str):
        if v == "valid":
            return (0, 0)
        raise LoweringError(f"node {node.name}", f"{what}={v!r} is not supported", "give explicit integer padding")
    t = tuple(int(x) for x in v)
    return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])


class Emitter:
    """Builds the ONNX node list for one IntegerGraph; see the module docstring for the encodings."""

    def __init__(self, gm: fx.GraphModule, info: dict[str, ValueInfo], fmt: str, weights: str = "int8"):
        if fmt not in FORMATS:
            raise LoweringError("onnx export", f"format {fmt!r} is unknown", f"use one of {FORMATS}")
        if weights not in WEIGHT_STORAGE:
            raise LoweringError("onnx export", f"weights {weights!r} is unknown", f"use one of {WEIGHT_STORAGE}")
        self.gm, self.info, self.fmt, self.weights = gm, info, fmt, weights
        self.weight_storage: dict[str, str] = {}  # conv / linear node -> "int8" | "uint8"
        self.nodes: list = []
        self.inits: list = []
        self._used: set[str] = set()
        # node name -> {dtype: onnx value name}; a value may exist in several dtypes (lazy Casts)
        self.values: dict[str, dict[torch.dtype, str]] = {}
        self.ranges: dict[str, dict[str, int]] = {}
        self.weight_ranges: dict[str, dict[str, int]] = {}
        self.float32_islands: list[str] = []
        self.fused: list[str] = []
        self.exact_float_convs: list[str] = []
        self._skip: set[str] = set()
        self._const_cache: dict[tuple, str] = {}

    # -- naming and constants ------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self._used:
            i += 1
            name = f"{base}_{i}"
        self._used.add(name)
        return name

    def const(self, array: np.ndarray | float | int, base: str, dtype: Any = None) -> str:
        """An initializer; identical small constants are shared."""
        from onnx import numpy_helper

        arr = np.asarray(array, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes()) if arr.size <= 16 else None
        if key is not None and key in self._const_cache:
            return self._const_cache[key]
        name = self.fresh(base)
        # 0-d stays 0-d (np.ascontiguousarray would make it 1-d): QLinearAdd & co. require scalar scales
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr) if arr.ndim else arr.copy(), name))
        if key is not None:
            self._const_cache[key] = name
        return name

    def op(self, op_type: str, inputs: Sequence[str], base: str, **attrs: Any) -> str:
        from onnx import helper

        out = self.fresh(base)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=self.fresh(f"{base}/{op_type}"), **attrs))
        return out

    def tensor(self, arg: Any, node: fx.Node, what: str) -> torch.Tensor:
        """The constant tensor behind a get_attr argument (weights, biases, multipliers, tables)."""
        if isinstance(arg, torch.Tensor):
            return arg
        if isinstance(arg, fx.Node) and arg.op == "get_attr":
            obj: Any = self.gm
            for part in arg.target.split("."):
                obj = getattr(obj, part)
            return obj.detach()
        raise LoweringError(f"node {node.name}", f"{what} must be a constant tensor (get_attr), got {arg!r}",
                            "fold it into a buffer before export")

    # -- values ----------------------------------------------------------------------------------------
    def define(self, node: fx.Node, name: str, dtype: torch.dtype | None = None) -> None:
        self.values.setdefault(node.name, {})[dtype or self.info[node.name].dtype] = name

    def get(self, arg: Any, dtype: torch.dtype | None = None, node: fx.Node | None = None) -> str:
        """ONNX name of `arg`'s value in `dtype` (default: the reference dtype); inserts a Cast once."""
        if not isinstance(arg, fx.Node):
            raise LoweringError(f"node {node.name if node else '?'}", f"expected a tensor operand, got {arg!r}", "")
        if arg.op == "get_attr":
            t = self.tensor(arg, arg, "operand")
            want = dtype or t.dtype
            return self.const(t.to(want).numpy(), arg.target.replace(".", "_"))
        have = self.values.get(arg.name)
        if not have:
            raise LoweringError(f"node {arg.name}", "value was not emitted (fused into a QDQ conv)",
                                "export with format='qoperator' to expose accumulators")
        want = dtype or self.info[arg.name].dtype
        if want in have:
            return have[want]
        src = have.get(self.info[arg.name].dtype) or next(iter(have.values()))
        name = self.op("Cast", [src], f"{arg.name}_{str(want).replace('torch.', '')}", to=onnx_dtype(want))
        have[want] = name
        return name

    def channel(self, values: np.ndarray, ndim: int) -> np.ndarray:
        """Per-channel vector [C] shaped to broadcast over dim 1 of an `ndim`-d tensor (scalars stay scalars)."""
        values = np.asarray(values)
        if values.size == 1:
            return values.reshape(())
        return values.reshape((1, -1) + (1,) * (ndim - 2))

    def fixed_point(self, v: str, base: str, offset: Any, shift: Any, lo: int, hi: int, node: fx.Node,
                    ndim: int = 0) -> str:
        """`clamp((v + offset) >> shift, lo, hi)` -> uint8, `v` int64; per-channel offset/shift allowed.

        For shift > 45 an int64 Div: it truncates where `>>` floors, and both give the same clamped code
        because lo >= 0 (see module doc).
        """
        self.check_range(node, lo, hi)
        off = np.asarray(offset, dtype=np.int64)
        sh = np.asarray(shift, dtype=np.int64)
        if np.any(sh < 0) or np.any(sh > 62):
            raise LoweringError(f"node {node.name}", f"shift {sh.tolist()} outside [0, 62]", "check to_integer")
        div = np.left_shift(np.ones_like(sh), sh)
        if np.any(off != 0):
            v = self.op("Add", [v, self.const(self.channel(off, ndim), f"{base}_offset")], base)
        if int(sh.max()) + 8 <= 53:
            # No int64 Div (slow) and no int64 Clip/Max/Min: in onnxruntime 1.31 they return wrong results
            # for values in [2^31, 2^32) (measured: Clip(3353429933, 0, 2^34) = 0). In float64, v * 2^-s and
            # floor are exact wherever |v| < 2^(s+8) <= 2^53, i.e. wherever the code can land in [lo, hi];
            # larger |v| are rounded monotonically and stay beyond the clamp bounds. Same codes as
            # clamp(v >> s, lo, hi).
            v = self.op("Cast", [v], base, to=onnx_dtype(torch.float64))
            if np.any(div != 1):
                v = self.op("Mul", [v, self.const(self.channel(1.0 / div.astype(np.float64), ndim), f"{base}_2^-s")],
                            base)
            v = self.op("Floor", [v], base)
            v = self.op("Clip", [v, self.const(np.float64(lo), "lo_f64"), self.const(np.float64(hi), "hi_f64")], base)
        else:
            # quotients of an int64 by 2^s with s > 45 are below 2^18: int64 Clip is correct there
            if np.any(div != 1):
                v = self.op("Div", [v, self.const(self.channel(div, ndim), f"{base}_div")], base)
            v = self.op("Clip", [v, self.const(np.int64(lo), "lo"), self.const(np.int64(hi), "hi")], base)
        out = self.op("Cast", [v], base, to=onnx_dtype(torch.uint8))
        self.ranges[node.name] = {"lo": int(lo), "hi": int(hi), "bits": _ubits(hi)}
        return out

    @staticmethod
    def check_range(node: fx.Node, lo: int, hi: int) -> None:
        if not (0 <= lo <= hi <= 255):
            raise LoweringError(f"node {node.name}", f"code range [{lo}, {hi}] does not fit uint8 codes [0, 255]",
                                "activation codes must be unsigned 8-bit (or narrower) with 0 <= lo <= hi <= 255")

    def record_weight(self, node: fx.Node, w: torch.Tensor) -> None:
        if w.dtype != torch.int8:
            raise LoweringError(f"node {node.name}", f"weight dtype {w.dtype}, expected int8 codes",
                                "weights wider than 8 bits cannot be expressed by ONNX integer ops; keep them at "
                                "<= 8 bits or as a float island (32)")
        lo, hi = int(w.min()), int(w.max())
        self.weight_ranges[node.name] = {"min": lo, "max": hi, "bits": _sbits(lo, hi)}

    def weight_codes(self, node: fx.Node, w: torch.Tensor, base: str, zp_shape: tuple[int, ...]) -> tuple[str, str]:
        """(weight codes, weight zero point) initializers for the int8 codes `w` of `node`, stored as
        `WEIGHT_STORAGE` says: int8 with zero point 0, or uint8 `w + 128` with zero point 128 (exact under
        onnxruntime's u8 x u8 kernels on every x86 host). The choice is recorded in `weight_storage`."""
        storage = self.weights
        if storage == "auto":
            storage = "int8" if int(w.to(torch.int16).abs().max()) <= U8S8_SAFE_ABS_WEIGHT else "uint8"
        self.weight_storage[node.name] = storage
        if storage == "uint8":
            codes, zp = (w.to(torch.int16) + 128).to(torch.uint8).numpy(), np.full(zp_shape, 128, np.uint8)
        else:
            codes, zp = w.numpy(), np.zeros(zp_shape, np.int8)
        return self.const(codes, base), self.const(zp, f"{base}zp")

    # -- driver ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        if self.fmt == "qdq":
            self._plan_fusion()
        for n in self.gm.graph.nodes:
            if n.op == "placeholder":
                self.define(n, n.name)
                self._used.add(n.name)
            elif n.op == "call_function":
                if n.name in self._skip:
                    continue
                handler = _HANDLERS.get(n.target)
                if handler is None:
                    raise LoweringError(f"node {n.name}", f"op {n.target} has no ONNX translation",
                                        "only qcompile.ops and the float-island ops are allowed")
                handler(self, n)

    def _plan_fusion(self) -> None:
        for n in self.gm.graph.nodes:
            if n.op == "call_function" and n.target in (R.conv2d, R.linear):
                users = list(n.users)
                if len(users) == 1 and users[0].target in (R.requantize, R.requantize_float) and users[0].args[0] is n:
                    self._skip.add(n.name)


def _ubits(hi: int) -> int:
    return max(1, int(hi).bit_length())


def _sbits(lo: int, hi: int) -> int:
    b = 1
    while not (-(1 << (b - 1)) <= lo and hi <= (1 << (b - 1)) - 1):
        b += 1
    return b


# ---- integer ops ----------------------------------------------------------------------------------------------
def _quantize(e: Emitter, n: fx.Node) -> None:
    a = _bind_integer(n)
    x = e.get(a["x"], torch.float64, n)
    v = e.op("Mul", [x, e.const(np.float64(a["inv_scale"]), "inv_scale")], n.name)
    v = e.op("Add", [v, e.const(np.float64(a["offset"]), "offset")], n.name)
    v = e.op("Floor", [v], n.name)
    qmax = int(a["qmax"])
    e.check_range(n, 0, qmax)
    v = e.op("Clip", [v, e.const(np.float64(0.0), "zero_f64"), e.const(np.float64(qmax), "qmax_f64")], n.name)
    e.define(n, e.op("Cast", [v], n.name, to=onnx_dtype(torch.uint8)))
    e.ranges[n.name] = {"lo": 0, "hi": qmax, "bits": _ubits(qmax)}


def _dequantize(e: Emitter, n: fx.Node) -> None:
    a = _bind_integer(n)
    v = e.get(a["q"], torch.float64, n)
    v = e.op("Sub", [v, e.const(np.float64(a["zero_point"]), "zero_point")], n.name)
    e.define(n, e.op("Mul", [v, e.const(np.float64(a["scale"]), "scale")], n.name))


def _conv_params(e: Emitter, n: fx.Node, a: dict[str, Any]) -> tuple[torch.Tensor, np.ndarray, int, dict]:
    """int8 weight, the int64 bias with the pad code folded in, the pad code, and Conv attributes."""
    w = e.tensor(a["w"], n, "weight")
    e.record_weight(n, w)
    bias = e.tensor(a["bias"], n, "bias").to(torch.int64)
    pad = _pair(a["padding"], "padding", n)
    pv = int(a["pad_value"]) if pad != (0, 0) else 0
    if not 0 <= pv <= 255:
        raise LoweringError(f"node {n.name}", f"pad_value {pv} is not a uint8 code", "use the rounded zero point")
    # ConvInteger subtracts x_zero_point = pad code from every tap (padding taps included), which
    # removes pv * sum(w[o]) from each output; add it back to the bias (exact, int64).
    b = bias + pv * w.to(torch.int64).sum(dim=(1, 2, 3))
    attrs = dict(
        strides=list(_pair(a["stride"], "stride", n)),
        pads=[pad[0], pad[1], pad[0], pad[1]],
        dilations=list(_pair(a["dilation"], "dilation", n)),
        group=int(a["groups"]),
        kernel_shape=list(w.shape[2:]),
    )
    return w, b.numpy(), pv, attrs


#: float32 holds every integer below 2^24 exactly
_F32_EXACT = 1 << 24


def _conv2d(e: Emitter, n: fx.Node) -> None:
    """Exact int accumulator: a float32 Conv on codes when no partial sum can reach 2^24, else ConvInteger.

    Every product and partial sum is an integer bounded by sum|w[o]| * 255 + |b[o]|; below 2^24
    float32 represents all of them, so MLAS's fast float conv (any summation order, FMA or not)
    returns the exact accumulator, several times faster than ConvInteger (no int depthwise kernel).
    """
    a = _bind_integer(n)
    w, b, pv, attrs = _conv_params(e, n, a)
    x = e.get(a["x"], torch.uint8, n)
    bound = int((w.to(torch.int64).abs().sum(dim=(1, 2, 3)) * 255 + torch.from_numpy(np.abs(b))).max())
    if bound < _F32_EXACT:
        # DequantizeLinear(scale 1, zp = pad code) = codes - pad code in float32, so zero padding is the pad code
        xf = e.op("DequantizeLinear", [x, e.const(np.float32(1.0), "one_f32"), e.const(np.uint8(pv), "zp_u8")],
                  f"{n.name}_x")
        acc = e.op("Conv", [xf, e.const(w.to(torch.float32).numpy(), f"{n.name}_wf"),
                            e.const(b.astype(np.float32), f"{n.name}_bf")], n.name, **attrs)
        e.define(n, e.op("Cast", [acc], n.name, to=onnx_dtype(torch.int64)), torch.int64)
        e.exact_float_convs.append(n.name)
        return
    wq, wzp = e.weight_codes(n, w, f"{n.name}_w", ())
    ins = [x, wq]
    if pv or e.weight_storage[n.name] == "uint8":
        ins.append(e.const(np.uint8(pv), "pad_code"))
    if e.weight_storage[n.name] == "uint8":
        ins.append(wzp)
    acc = e.op("ConvInteger", ins, n.name, **attrs)
    acc = e.op("Cast", [acc], n.name, to=onnx_dtype(torch.int64))
    acc = e.op("Add", [acc, e.const(e.channel(b, 4), f"{n.name}_bias")], n.name)
    e.define(n, acc, torch.int64)


def _linear(e: Emitter, n: fx.Node) -> None:
    a = _bind_integer(n)
    w = e.tensor(a["w"], n, "weight")
    e.record_weight(n, w)
    bias = e.tensor(a["bias"], n, "bias").to(torch.int64).numpy()
    wq, wzp = e.weight_codes(n, w.T.contiguous(), f"{n.name}_wT", ())
    ins = [e.get(a["x"], torch.uint8, n), wq]
    if e.weight_storage[n.name] == "uint8":
        ins += [e.const(np.uint8(0), "zp_u8_0"), wzp]
    acc = e.op("MatMulInteger", ins, n.name)
    acc = e.op("Cast", [acc], n.name, to=onnx_dtype(torch.int64))
    acc = e.op("Add", [acc, e.const(bias, f"{n.name}_bias")], n.name)
    e.define(n, acc, torch.int64)


def _requantize(e: Emitter, n: fx.Node) -> None:
    a = _bind_integer(n)
    src: fx.Node = a["acc"]
    m = e.tensor(a["multiplier"], n, "multiplier").to(torch.int64).numpy()
    s = e.tensor(a["shift"], n, "shift").to(torch.int64).numpy()
    lo, hi = int(a["lo"]), int(a["hi"])
    if src.name in e._skip:
        _requantize_qdq(e, n, src, m, s, lo, hi)
        return
    ndim = len(e.info[src.name].shape)
    v = e.get(src, torch.int64, n)
    v = e.op("Mul", [v, e.const(e.channel(m, ndim), f"{n.name}_M")], n.name)
    if a.get("offset") is not None:  # rounding term plus the fractional part of the folded bias
        rnd = np.broadcast_to(e.tensor(a["offset"], n, "offset").to(torch.int64).numpy(), np.shape(s))
    else:
        rnd = np.left_shift(np.ones_like(s), s - 1)
    e.define(n, e.fixed_point(v, n.name, rnd, s, lo, hi, n, ndim))


def _requantize_qdq(e: Emitter, n: fx.Node, src: fx.Node, m: np.ndarray, s: np.ndarray, lo: int, hi: int) -> None:
    """DequantizeLinear -> Conv/Gemm -> QuantizeLinear; onnxruntime fuses it (within 1 code, module doc)."""
    a = _bind_integer(src)
    e.check_range(n, lo, hi)
    nout = e.info[src.name].shape[1]
    scale = np.broadcast_to((m.astype(np.float64) / np.exp2(s.astype(np.float64))).reshape(-1), (nout,))
    scale32 = scale.astype(np.float32)
    if np.any(scale32 <= 0) or not np.all(np.isfinite(scale32)):
        raise LoweringError(f"node {n.name}", "fixed-point factor M/2^s is not a positive float32",
                            "export with format='qoperator'")
    if src.target is R.conv2d:
        w, b, pv, attrs = _conv_params(e, src, a)
    else:
        w = e.tensor(a["w"], src, "weight")
        e.record_weight(src, w)
        b, pv, attrs = e.tensor(a["bias"], src, "bias").to(torch.int64).numpy(), 0, {}
    if np.any(np.abs(b) > 2**31 - 1):
        raise LoweringError(f"node {src.name}", "bias with the folded pad code exceeds int32",
                            "export with format='qoperator'")
    one = e.const(np.float32(1.0), "one_f32")
    x = e.op("DequantizeLinear", [e.get(a["x"], torch.uint8, src), one, e.const(np.uint8(pv), "zp_u8")],
             f"{src.name}_x")
    wq, wzp = e.weight_codes(src, w, f"{src.name}_w", (nout,))
    wscale = e.const(scale32, f"{src.name}_wscale")
    wf = e.op("DequantizeLinear", [wq, wscale, wzp], f"{src.name}_w", axis=0)
    # bias in the QDQ convention: int32 codes with scale x_scale * w_scale = w_scale
    bf = e.op("DequantizeLinear", [e.const(b.astype(np.int32), f"{src.name}_bias"), wscale,
                                   e.const(np.zeros(nout, np.int32), f"{src.name}_bzp")], f"{src.name}_b", axis=0)
    if src.target is R.conv2d:
        y = e.op("Conv", [x, wf, bf], src.name, **attrs)
    else:
        y = e.op("Gemm", [x, wf, bf], src.name, transB=1)
    q = e.op("QuantizeLinear", [y, one, e.const(np.uint8(0), "zp_u8_0")], n.name)
    if lo > 0 or hi < 255:
        q = e.op("Clip", [q, e.const(np.uint8(lo), "lo_u8"), e.const(np.uint8(hi), "hi_u8")], n.name)
    e.define(n, q)
    e.ranges[n.name] = {"lo": lo, "hi": hi, "bits": _ubits(hi)}
    e.fused.append(src.name)


def _dequantize_acc(e: Emitter, n: fx.Node) -> None:
    a = _bind_integer(n)
    scale = e.tensor(a["scale"], n, "scale").to(torch.float64).numpy()
    v = e.get(a["acc"], torch.float64, n)
    e.define(n, e.op("Mul", [v, e.const(e.channel(scale, len(e.info[n.name].shape)), f"{n.name}_scale")], n.name))


def _rescale(e: Emitter, n: fx.Node) -> None:
    a = _bind_integer(n)
    v = e.op("Mul", [e.get(a["x"], torch.int64, n), e.const(np.int64(a["multiplier"]), "M")], n.name)
    e.define(n, e.fixed_point(v, n.name, a["offset"], a["shift"], a["lo"], a["hi"], n))


def _add(e: Emitter, n: fx.Node) -> None:
    a = _bind_integer(n)
    va = e.op("Mul", [e.get(a["a"], torch.int64, n), e.const(np.int64(a["multiplier_a"]), "M")], n.name)
    vb = e.op("Mul", [e.get(a["b"], torch.int64, n), e.const(np.int64(a["multiplier_b"]), "M")], n.name)
    v = e.op("Add", [va, vb], n.name)
    e.define(n, e.fixed_point(v, n.name, a["offset"], a["shift"], a["lo"], a["hi"], n))


def _mean(e: Emitter, n: fx.Node) -> None:
    a = _bind_integer(n)
    v = e.op("ReduceSum", [e.get(a["x"], torch.int64, n), e.const(np.array([2, 3], np.int64), "axes_hw")],
             n.name, keepdims=1)
    v = e.op("Mul", [v, e.const(np.int64(a["multiplier"]), "M")], n.name)
    e.define(n, e.fixed_point(v, n.name, a["offset"], a["shift"], a["lo"], a["hi"], n))


def _mul(e: Emitter, n: fx.Node) -> None:
    a = _bind_integer(n)
    g = e.get(a["g"], torch.int64, n)
    v = e.op("Mul", [e.get(a["x"], torch.int64, n), g], n.name)
    v = e.op("Mul", [v, e.const(np.int64(a["multiplier"]), "M")], n.name)
    if int(a["offset_g"]) != 0:
        vg = e.op("Mul", [g, e.const(np.int64(a["offset_g"]), "M")], n.name)
        v = e.op("Add", [v, vg], n.name)
    if int(a.get("offset_x", 0)) != 0:
        vx = e.op("Mul", [e.get(a["x"], torch.int64, n), e.const(np.int64(a["offset_x"]), "M")], n.name)
        v = e.op("Add", [v, vx], n.name)
    e.define(n, e.fixed_point(v, n.name, a["offset"], a["shift"], a["lo"], a["hi"], n))


def _lut(e: Emitter, n: fx.Node) -> None:
    a = _bind_integer(n)
    table = e.tensor(a["table"], n, "table").to(torch.uint8).reshape(-1)
    if table.numel() != 256:
        raise LoweringError(f"node {n.name}", f"table has {table.numel()} entries", "lut tables have 256 entries")
    idx = e.get(a["x"], torch.int32, n)
    e.define(n, e.op("Gather", [e.const(table.numpy(), f"{n.name}_table"), idx], n.name, axis=0))
    e.ranges[n.name] = {"lo": int(table.min()), "hi": int(table.max()), "bits": _ubits(int(table.max()))}


def _flatten(e: Emitter, n: fx.Node) -> None:
    a = _bind_integer(n)
    e.define(n, e.op("Flatten", [e.get(a["x"], None, n)], n.name, axis=1))
    if a["x"].name in e.ranges:
        e.ranges[n.name] = dict(e.ranges[a["x"].name])


def _max_pool2d(e: Emitter, n: fx.Node) -> None:
    """MaxPool on uint8 codes (onnxruntime has uint8 MaxPool since opset 12); ONNX pads with -inf, the
    reference with code 0: the same result, as every window holds a real code >= 0."""
    a = _bind_integer(n)
    k, st = _pair(a["kernel_size"], "kernel_size", n), _pair(a["stride"], "stride", n)
    pad, dil = _pair(a["padding"], "padding", n), _pair(a["dilation"], "dilation", n)
    e.define(n, e.op("MaxPool", [e.get(a["x"], torch.uint8, n)], n.name, kernel_shape=list(k), strides=list(st),
                     pads=[pad[0], pad[1], pad[0], pad[1]], dilations=list(dil)))
    if a["x"].name in e.ranges:
        e.ranges[n.name] = dict(e.ranges[a["x"].name])


# ---- the qdq flavour: plain QuantizeLinear / DequantizeLinear around float ops ------------------------------------
# Each op of qcompile.ops.QDQ_OPS is the float32 arithmetic onnxruntime runs for the pattern written here (the
# module doc of qcompile.ops.reference cites it), so these patterns are exact on onnxruntime. Scales are float32
# and zero points uint8, as the reference ops take them; sub-8-bit ranges and ReLU/ReLU6 are a Clip on the codes.
def _f32(v: float) -> np.float32:
    return np.float32(v)


def _clip_codes(e: Emitter, n: fx.Node, q: str, lo: int, hi: int) -> str:
    e.check_range(n, lo, hi)
    if lo > 0 or hi < 255:
        q = e.op("Clip", [q, e.const(np.uint8(lo), "lo_u8"), e.const(np.uint8(hi), "hi_u8")], n.name)
    e.ranges[n.name] = {"lo": lo, "hi": hi, "bits": _ubits(hi)}
    return q


def _dq(e: Emitter, n: fx.Node, x: Any, scale: float, zp: int, base: str) -> str:
    return e.op("DequantizeLinear", [e.get(x, torch.uint8, n), e.const(_f32(scale), "scale_f32"),
                                     e.const(np.uint8(zp), "zp_u8")], base)


def _q(e: Emitter, v: str, scale: float, zp: int, base: str) -> str:
    return e.op("QuantizeLinear", [v, e.const(_f32(scale), "scale_f32"), e.const(np.uint8(zp), "zp_u8")], base)


def _quantize_linear(e: Emitter, n: fx.Node) -> None:
    a = _bind_integer(n)
    q = _q(e, e.get(a["x"], torch.float32, n), a["scale"], int(a["zero_point"]), n.name)
    e.define(n, _clip_codes(e, n, q, 0, int(a["qmax"])))


def _requantize_float(e: Emitter, n: fx.Node) -> None:
    """DequantizeLinear -> Conv/Gemm (int32 bias) -> QuantizeLinear: onnxruntime's QLinearConv (exact, see
    reference.requantize_float); an accumulator with other users is rescaled as MlasRequantizeOutput does."""
    a = _bind_integer(n)
    src: fx.Node = a["acc"]
    w_scale = e.tensor(a["w_scale"], n, "w_scale").to(torch.float32).numpy().reshape(-1)
    xs, ys, zx, zy = a["x_scale"], a["y_scale"], int(a["x_zero_point"]), int(a["zero_point"])
    lo, hi = int(a["lo"]), int(a["hi"])
    if src.name not in e._skip:
        ndim = len(e.info[src.name].shape)
        scale = (_f32(xs) * w_scale).astype(np.float32) / _f32(ys)
        v = e.op("Cast", [e.get(src, torch.int32, n)], n.name, to=onnx_dtype(torch.float32))
        v = e.op("Mul", [v, e.const(e.channel(scale.astype(np.float32), ndim), f"{n.name}_scale")], n.name)
        e.define(n, _clip_codes(e, n, _q(e, v, 1.0, zy, n.name), lo, hi))
        return
    sa = _bind_integer(src)
    w = e.tensor(sa["w"], src, "weight")
    e.record_weight(src, w)
    nout = w.shape[0]
    # the accumulator's bias holds -zx sum(w); QLinearConv subtracts the input zero point itself
    b = e.tensor(sa["bias"], src, "bias").to(torch.int64) + zx * w.to(torch.int64).reshape(nout, -1).sum(1)
    if bool((b.abs() > 2**31 - 1).any()):
        raise LoweringError(f"node {src.name}", "bias exceeds int32", "export with format='qoperator'")
    w_scale = np.broadcast_to(w_scale, (nout,)).astype(np.float32)
    x = _dq(e, src, sa["x"], xs, zx, f"{src.name}_x")
    wq, wzp = e.weight_codes(src, w, f"{src.name}_w", (nout,))
    wf = e.op("DequantizeLinear", [wq, e.const(w_scale, f"{src.name}_wscale"), wzp], f"{src.name}_w", axis=0)
    bscale = (_f32(xs) * w_scale).astype(np.float32)  # the QDQ bias convention: scale x_scale * w_scale, zp 0
    bf = e.op("DequantizeLinear", [e.const(b.numpy().astype(np.int32), f"{src.name}_bias"),
                                   e.const(bscale, f"{src.name}_bscale"),
                                   e.const(np.zeros(nout, np.int32), f"{src.name}_bzp")], f"{src.name}_b", axis=0)
    if src.target is R.conv2d:
        pad = _pair(sa["padding"], "padding", src)
        if pad != (0, 0) and int(sa["pad_value"]) != zx:
            raise LoweringError(f"node {src.name}", f"pad code {sa['pad_value']} is not the input zero point {zx}",
                                "a qdq-flavour conv pads with its input's zero point; re-run to_integer")
        attrs = dict(strides=list(_pair(sa["stride"], "stride", src)), pads=[pad[0], pad[1], pad[0], pad[1]],
                     dilations=list(_pair(sa["dilation"], "dilation", src)), group=int(sa["groups"]),
                     kernel_shape=list(w.shape[2:]))
        y = e.op("Conv", [x, wf, bf], src.name, **attrs)
    else:
        y = e.op("Gemm", [x, wf, bf], src.name, transB=1)
    e.define(n, _clip_codes(e, n, _q(e, y, ys, zy, n.name), lo, hi))
    e.fused.append(src.name)


def _rescale_float(e: Emitter, n: fx.Node) -> None:
    """A lookup of the 256 input codes, the table computed by the reference op (DequantizeLinear then
    QuantizeLinear, float32). As `DQ -> Q` runtimes compute another function: onnxruntime's
    DoubleQDQPairsRemover merges `Q1 -> DQ1 -> Q2` into one QuantizeLinear of the float value (no rounding to
    Q1's codes), and OpenVINO 2026.4 passed the codes through unchanged where the two scales were within
    0.6 % of each other (measured: one code off on 12 % of a head conv's inputs). A table of codes is exact
    on every runtime."""
    a = _bind_integer(n)
    lo, hi = int(a["lo"]), int(a["hi"])
    e.check_range(n, lo, hi)
    codes = torch.arange(256, dtype=torch.int32)
    table = R.rescale_float(codes, x_scale=a["x_scale"], x_zero_point=int(a["x_zero_point"]), y_scale=a["y_scale"],
                            zero_point=int(a["zero_point"]), lo=lo, hi=hi).to(torch.uint8)
    idx = e.get(a["x"], torch.int32, n)
    e.define(n, e.op("Gather", [e.const(table.numpy(), f"{n.name}_table"), idx], n.name, axis=0))
    e.ranges[n.name] = {"lo": lo, "hi": hi, "bits": _ubits(hi)}


def _add_float(e: Emitter, n: fx.Node) -> None:
    a = _bind_integer(n)
    va = _dq(e, n, a["a"], a["a_scale"], int(a["a_zero_point"]), f"{n.name}_a")
    vb = _dq(e, n, a["b"], a["b_scale"], int(a["b_zero_point"]), f"{n.name}_b")
    v = e.op("Add", [va, vb], n.name)
    e.define(n, _clip_codes(e, n, _q(e, v, a["y_scale"], int(a["zero_point"]), n.name), int(a["lo"]), int(a["hi"])))


def _mul_float(e: Emitter, n: fx.Node) -> None:
    a = _bind_integer(n)
    vx = _dq(e, n, a["x"], a["x_scale"], int(a["x_zero_point"]), f"{n.name}_x")
    vg = _dq(e, n, a["g"], a["g_scale"], int(a["g_zero_point"]), f"{n.name}_g")
    v = e.op("Mul", [vx, vg], n.name)
    e.define(n, _clip_codes(e, n, _q(e, v, a["y_scale"], int(a["zero_point"]), n.name), int(a["lo"]), int(a["hi"])))


def _mean_float(e: Emitter, n: fx.Node) -> None:
    a = _bind_integer(n)
    v = _dq(e, n, a["x"], a["x_scale"], int(a["x_zero_point"]), n.name)
    v = e.op("GlobalAveragePool", [v], n.name)
    e.define(n, _clip_codes(e, n, _q(e, v, a["y_scale"], int(a["zero_point"]), n.name), int(a["lo"]), int(a["hi"])))


# ---- float islands --------------------------------------------------------------------------------------------
def _fdtype(e: Emitter, n: fx.Node) -> torch.dtype:
    return e.info[n.name].dtype


def _fin(e: Emitter, n: fx.Node, arg: Any) -> str:
    """A float operand in the node's dtype; python scalars become constants."""
    dt = _fdtype(e, n)
    if isinstance(arg, (int, float)):
        return e.const(np.asarray(arg, dtype=_NP[dt]), "scalar")
    return e.get(arg, dt, n)


def _fconv2d(e: Emitter, n: fx.Node) -> None:
    a = _bind_float(n)
    dt = _fdtype(e, n)
    w = e.tensor(a["weight"], n, "weight")
    bias = None if a["bias"] is None else e.tensor(a["bias"], n, "bias")
    stride, dil = _pair(a["stride"], "stride", n), _pair(a["dilation"], "dilation", n)
    pad = _pair(a["padding"], "padding", n)
    groups = int(a["groups"])
    pointwise = w.shape[2:] == (1, 1) and stride == (1, 1) and pad == (0, 0) and groups == 1
    if dt == torch.float64 and pointwise:
        # 1x1 conv = channel matmul; onnxruntime has a float64 MatMul, so the island stays float64
        x = e.op("Transpose", [_fin(e, n, a["input"])], n.name, perm=[0, 2, 3, 1])
        y = e.op("MatMul", [x, e.const(w.reshape(w.shape[0], -1).T.to(dt).numpy(), f"{n.name}_wT")], n.name)
        if bias is not None:
            y = e.op("Add", [y, e.const(bias.to(dt).numpy(), f"{n.name}_b")], n.name)
        e.define(n, e.op("Transpose", [y], n.name, perm=[0, 3, 1, 2]))
        return
    if dt == torch.float64:
        e.float32_islands.append(n.name)
        log.info("node %s: float64 conv island runs in float32 (no float64 Conv kernel in onnxruntime)", n.name)
    x = e.get(a["input"], torch.float32, n)
    ins = [x, e.const(w.to(torch.float32).numpy(), f"{n.name}_w")]
    if bias is not None:
        ins.append(e.const(bias.to(torch.float32).numpy(), f"{n.name}_b"))
    y = e.op("Conv", ins, n.name, strides=list(stride), pads=[pad[0], pad[1], pad[0], pad[1]],
             dilations=list(dil), group=groups, kernel_shape=list(w.shape[2:]))
    e.define(n, y, torch.float32)


def _flinear(e: Emitter, n: fx.Node) -> None:
    a = _bind_float(n)
    dt = _fdtype(e, n)
    w = e.tensor(a["weight"], n, "weight")
    y = e.op("MatMul", [_fin(e, n, a["input"]), e.const(w.T.contiguous().to(dt).numpy(), f"{n.name}_wT")], n.name)
    if a["bias"] is not None:
        y = e.op("Add", [y, e.const(e.tensor(a["bias"], n, "bias").to(dt).numpy(), f"{n.name}_b")], n.name)
    e.define(n, y)


def _unary(onnx_op: str) -> Callable[[Emitter, fx.Node], None]:
    def handler(e: Emitter, n: fx.Node) -> None:
        e.define(n, e.op(onnx_op, [_fin(e, n, _bind_float(n)["input"])], n.name))

    return handler


def _frelu6(e: Emitter, n: fx.Node) -> None:
    dt = _NP[_fdtype(e, n)]
    x = _fin(e, n, _bind_float(n)["input"])
    e.define(n, e.op("Clip", [x, e.const(dt(0), "zero"), e.const(dt(6), "six")], n.name))


def _hardsigmoid_expr(e: Emitter, n: fx.Node, x: str) -> str:
    # torch: min(max(x + 3, 0), 6) / 6 (same operation order, so float64 results agree bit for bit)
    dt = _NP[_fdtype(e, n)]
    v = e.op("Add", [x, e.const(dt(3), "three")], n.name)
    return e.op("Clip", [v, e.const(dt(0), "zero"), e.const(dt(6), "six")], n.name)


def _fhardsigmoid(e: Emitter, n: fx.Node) -> None:
    dt = _NP[_fdtype(e, n)]
    v = _hardsigmoid_expr(e, n, _fin(e, n, _bind_float(n)["input"]))
    e.define(n, e.op("Div", [v, e.const(dt(6), "six")], n.name))


def _fhardswish(e: Emitter, n: fx.Node) -> None:
    # torch: x * min(max(x + 3, 0), 6) / 6
    dt = _NP[_fdtype(e, n)]
    x = _fin(e, n, _bind_float(n)["input"])
    v = e.op("Mul", [x, _hardsigmoid_expr(e, n, x)], n.name)
    e.define(n, e.op("Div", [v, e.const(dt(6), "six")], n.name))


def _fsilu(e: Emitter, n: fx.Node) -> None:
    x = _fin(e, n, _bind_float(n)["input"])
    e.define(n, e.op("Mul", [x, e.op("Sigmoid", [x], n.name)], n.name))


def _fmean(e: Emitter, n: fx.Node) -> None:
    a = _bind_float(n)
    dims = a["dim"]
    if dims is None:
        raise LoweringError(f"node {n.name}", "torch.mean over all dims is not a float-island op",
                            "use torch.mean(x, dim=(2, 3), keepdim=True)")
    dims = [dims] if isinstance(dims, int) else list(dims)
    e.define(n, e.op("ReduceMean", [_fin(e, n, a["input"]), e.const(np.array(dims, np.int64), "axes")], n.name,
                     keepdims=int(bool(a["keepdim"]))))


def _fbinary(onnx_op: str) -> Callable[[Emitter, fx.Node], None]:
    def handler(e: Emitter, n: fx.Node) -> None:
        a = _bind_float(n)
        e.define(n, e.op(onnx_op, [_fin(e, n, a["a"]), _fin(e, n, a["b"])], n.name))

    return handler


def _fflatten(e: Emitter, n: fx.Node) -> None:
    a = _bind_float(n)
    start, end = int(a["start_dim"]), int(a["end_dim"])
    x = e.get(a["input"], None, n)
    rank = len(e.info[a["input"].name].shape)
    if end in (-1, rank - 1):
        e.define(n, e.op("Flatten", [x], n.name, axis=start))
        return
    shape = list(e.info[n.name].shape)
    shape[0] = 0 if start > 0 else shape[0]  # keep a dynamic batch when dim 0 is untouched
    e.define(n, e.op("Reshape", [x, e.const(np.array(shape, np.int64), f"{n.name}_shape")], n.name))


_HANDLERS: dict[Callable, Callable[[Emitter, fx.Node], None]] = {
    R.quantize: _quantize,
    R.dequantize: _dequantize,
    R.conv2d: _conv2d,
    R.linear: _linear,
    R.requantize: _requantize,
    R.dequantize_acc: _dequantize_acc,
    R.rescale: _rescale,
    R.add: _add,
    R.mean: _mean,
    R.mul: _mul,
    R.lut: _lut,
    R.flatten: _flatten,
    R.max_pool2d: _max_pool2d,
    R.quantize_linear: _quantize_linear,
    R.requantize_float: _requantize_float,
    R.rescale_float: _rescale_float,
    R.add_float: _add_float,
    R.mean_float: _mean_float,
    R.mul_float: _mul_float,
    F.conv2d: _fconv2d,
    F.linear: _flinear,
    F.relu: _unary("Relu"),
    F.relu6: _frelu6,
    F.hardswish: _fhardswish,
    F.hardsigmoid: _fhardsigmoid,
    torch.sigmoid: _unary("Sigmoid"),
    F.silu: _fsilu,
    torch.mean: _fmean,
    operator.add: _fbinary("Add"),
    operator.mul: _fbinary("Mul"),
    torch.flatten: _fflatten,
}



def handled_ops() -> frozenset[Callable]:
    """The ops of `qcompile.ops.table.OPS` this emitter translates (a test checks that it is all of them)."""
    return frozenset(_HANDLERS)


__all__ = ["FORMATS", "Emitter", "ValueInfo", "handled_ops", "onnx_dtype"]
