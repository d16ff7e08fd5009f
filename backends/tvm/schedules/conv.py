"""What the conv kernels of every target share: the conv's kind and geometry, the packed-GEMM stages, and
the one `emit` of the `conv2d_requant` / `conv2d` strategies.

A target (`schedules.x86`, `schedules.arm`) only says which kernel computes a conv (`ConvStrategy.kernel`:
a scheduled PrimFunc, its packed weights and bias operand); `ConvStrategy.emit` reads the OpCall
(`ConvCall`), reshapes the NCHW input to the kernel's layout, calls the kernel and reshapes the result back
to NCHW (integer_semantics.md: layout between kernels stays NCHW; the reshapes are views, not copies).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm
from tvm import relax, te

from qcompile.backends.tvm.schedules.requant import requant_expr
from qcompile.backends.tvm.strategy import OpCall
from qcompile.errors import LoweringError

__all__ = [
    "ConvCall",
    "ConvGeometry",
    "ConvKernel",
    "ConvStrategy",
    "const_value",
    "conv_kind",
    "fit_to",
    "gemm_requant_stages",
    "pack_weights",
    "pair",
]


def pair(v: Any) -> tuple[int, int]:
    """An int or a pair as a pair of ints (stride, padding, dilation)."""
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_kind(params: dict) -> str | None:
    """'pointwise', 'depthwise', 'full' or None (unsupported) for conv params of batch 1."""
    n, c, _h, _w = params["x_shape"]
    o, cg, kh, kw = params["w_shape"]
    groups = int(params.get("groups", 1))
    if n != 1:
        return None
    if groups == 1:
        pointwise = (kh, kw) == (1, 1) and pair(params.get("stride", 1)) == (1, 1)
        pointwise = pointwise and pair(params.get("padding", 0)) == (0, 0)
        return "pointwise" if pointwise else "full"
    if groups == c == o and cg == 1:
        return "depthwise"
    return None


def const_value(expr: relax.Expr, what: str, node: str) -> np.ndarray:
    """numpy value of a Relax constant (weights, bias, multipliers are constants by contract)."""
    val = getattr(expr, "value", None)
    if val is None:
        val = getattr(expr, "data", None)
    if val is None or not hasattr(val, "numpy"):
        raise LoweringError(
            node, f"{what} is not a Relax constant ({type(expr).__name__})", "bind weights as relax.const"
        )
    return val.numpy()


def pack_weights(w: np.ndarray, group: int, dtype: str) -> np.ndarray:
    """[O, K(,1,1)] int8 weights -> [O, ceil(K/g), g] in `dtype`, zero-padded on K (zero adds nothing)."""
    w2 = np.asarray(w).reshape(w.shape[0], -1).astype(np.int64)
    o, k = w2.shape
    kp = -(-k // group) * group
    out = np.zeros((o, kp), dtype=np.int64)
    out[:, :k] = w2
    return out.reshape(o, kp // group, group).astype(dtype)


@dataclass(frozen=True)
class ConvGeometry:
    """Static shape of a groups=1 conv lowered as im2col + GEMM (batch 1, NCHW)."""

    c: int
    h: int
    w: int
    kh: int
    kw: int
    ho: int
    wo: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    pad_value: int = 0


def fit_to(o: int, to: int) -> int:
    """Largest divisor of `o` not above `to` (the channel tile must divide O: no channel padding)."""
    for t in range(min(to, o), 0, -1):
        if o % t == 0:
            return t
    return 1


def gemm_requant_stages(gather: Any, kgroups: tuple[int, int], wp: te.Tensor, bias: te.Tensor, o: int, p: int,
                        pp: int, lo: int | None, hi: int | None, shift_min: int) -> list[te.Tensor]:
    """The stages every packed-GEMM conv kernel shares (x86 and aarch64), named as their schedules expect:
    `xpack[K/g, Pp, g]` from `gather(k, j)`, `gemm` (int32 `acc[o, j]`), `epilogue` (requantize with the
    `bterm` bias, or add the int32 bias when `lo is None`) over whole tiles, and `crop` to P columns when the
    pixels were padded to whole tiles (a predicated requantize on ragged tiles would run scalar int64 code).
    Returns the tensors after `(x, wp, bias)` in the kernel's signature: `[mult, shift,] out`."""
    kb, g = kgroups
    xp = te.compute((kb, pp, g), lambda b, j, i: gather(b * g + i, j), name="xpack")
    rb = te.reduce_axis((0, kb), name="rb")
    ri = te.reduce_axis((0, g), name="ri")
    acc = te.compute(
        (o, pp),
        lambda c, j: te.sum(xp[rb, j, ri].astype("int32") * wp[c, rb, ri].astype("int32"), axis=[rb, ri]),
        name="gemm",
    )
    shape = (o, pp) if pp != p else (o, p)
    if lo is not None:
        mult = te.placeholder((o,), "int32", name="mult")
        shift = te.placeholder((o,), "int32", name="shift")
        res = te.compute(shape, lambda c, j: requant_expr(acc[c, j], bias[c], mult[c], shift[c], lo, hi, shift_min),
                         name="epilogue")
        ins = [mult, shift]
    else:
        res = te.compute(shape, lambda c, j: acc[c, j] + bias[c], name="epilogue")
        ins = []
    out = te.compute((o, p), lambda c, j: res[c, j], name="crop") if pp != p else res
    return [*ins, out]


@dataclass(frozen=True)
class ConvCall:
    """A `conv2d_requant` / `conv2d` OpCall read once (strategy.py documents its params and args)."""

    node: str
    kind: str  # conv_kind: "pointwise", "full" or "depthwise"
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    ho: int
    wo: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    pad_value: int
    requant: bool
    lo: int | None  # None: the int32 accumulator op
    hi: int | None
    shift_min: int  # the layer's smallest shift (requant.requant_expr), 1 without requantize
    weight: np.ndarray

    @classmethod
    def read(cls, call: OpCall, args: list[relax.Expr], requant: bool) -> ConvCall:
        p = call.params
        node = str(p.get("node", call.op))
        _, c, h, w = (int(v) for v in p["x_shape"])
        o, _, kh, kw = (int(v) for v in p["w_shape"])
        _, _, ho, wo = (int(v) for v in p["out_shape"])
        if requant:
            lo, hi = int(p["lo"]), int(p["hi"])
            shift_np = const_value(args[4], "shift", node)
            shift_min = int(shift_np.min()) if shift_np.size else 1
        else:
            lo = hi = None
            shift_min = 1
        return cls(node, conv_kind(p) or "", c, h, w, o, kh, kw, ho, wo, pair(p.get("stride", 1)),
                   pair(p.get("padding", 0)), pair(p.get("dilation", 1)), int(p.get("pad_value", 0)), requant,
                   lo, hi, shift_min, const_value(args[1], "weight", node))

    @property
    def tag(self) -> str:
        """Shape part of the kernel's symbol name."""
        kind = "rq" if self.requant else "acc"
        return f"{kind}_{self.c}x{self.h}x{self.w}_{self.o}x{self.kh}x{self.kw}_s{self.stride[0]}"

    @property
    def geometry(self) -> ConvGeometry | None:
        """The im2col geometry of a full conv; None for a pointwise conv (a plain GEMM)."""
        if self.kind != "full":
            return None
        return ConvGeometry(self.c, self.h, self.w, self.kh, self.kw, self.ho, self.wo, self.stride, self.padding,
                            self.dilation, self.pad_value)

    @property
    def out_dtype(self) -> str:
        return "uint8" if self.requant else "int32"


@dataclass(frozen=True)
class ConvKernel:
    """The kernel a target picked for one conv: `func(x, weight, bias[, mult, shift]) -> out`."""

    func: tvm.tirx.PrimFunc
    name: str  # global symbol
    x_shape: tuple[int, ...]  # the NCHW input reshaped for the kernel (a view)
    weight: np.ndarray  # packed weights, bound as a Relax constant
    bias: relax.Expr  # int64 `bterm` (requant.bias_term) with requantize, else the int32 bias
    out_shape: tuple[int, ...]  # the kernel's output, reshaped to (1, O, Ho, Wo)


class ConvStrategy:
    """`conv2d_requant` (u8 out, `requant = True`) and `conv2d` (i32 out) on one target: subclasses say where
    they apply and which kernel computes the conv (`kernel`); `emit` is the same for all targets."""

    name = "conv"
    requant = True

    def applies(self, call: OpCall) -> bool:
        raise NotImplementedError

    def kernel(self, call: OpCall, conv: ConvCall, args: list[relax.Expr]) -> ConvKernel:
        raise NotImplementedError

    def emit(self, bb: relax.BlockBuilder, call: OpCall, args: list[relax.Expr]) -> relax.Expr:
        conv = ConvCall.read(call, args, self.requant)
        k = self.kernel(call, conv, args)
        xr = bb.emit(relax.op.reshape(args[0], k.x_shape))
        gv = bb.add_func(k.func.with_attr("global_symbol", k.name), k.name)
        extra = [args[3], args[4]] if self.requant else []
        y = bb.emit(relax.call_tir(gv, [xr, relax.const(k.weight), k.bias, *extra],
                                   relax.TensorType(k.out_shape, conv.out_dtype)))
        return bb.emit(relax.op.reshape(y, (1, conv.o, conv.ho, conv.wo)))
