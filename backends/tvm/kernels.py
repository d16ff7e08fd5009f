"""Naive TE kernels for every op of docs/integer_semantics.md, bit-exact with `qcompile.ops.reference`.

These are the fallback kernels: the emitter uses them when no registered `Strategy` applies. Each
function takes TE tensors (and Python scalars for static parameters) and returns a TE tensor, for
`relax.BlockBuilder.emit_te`. Integer arithmetic follows the contract exactly: products accumulate
in int32 (`to_integer` proves no overflow), every fixed-point step (`requantize`, `rescale`, `add`,
`mean`, `mul`) runs in int64 with an arithmetic right shift (round half up through the offset,
docs/integer_semantics.md "Fixed-point rule", gemmlowp's rounding). Float islands are float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from tvm import te, tirx

__all__ = [
    "quantize",
    "quantize_checked",
    "dequantize",
    "conv2d_acc",
    "conv2d",
    "conv2d_requant",
    "linear_acc",
    "linear",
    "linear_requant",
    "requantize",
    "dequantize_acc",
    "rescale",
    "add",
    "mean",
    "mul",
    "lut",
    "max_pool2d",
    "float_conv2d",
    "float_linear",
    "float_unary",
    "float_mean",
    "float_gemv",
    "float_island",
    "schedule_float_island",
]

I64 = "int64"
F64 = "float64"

#: bound on |x * inv_scale| before adding the offset. Any product beyond it clamps to 0 or qmax
#: either way (qmax <= 255), so the clamp never changes a code; it exists to stop LLVM from
#: contracting `x * inv_scale + offset` into one fused multiply-add (TVM's LLVM backend allows
#: FP-op fusion), which rounds once instead of twice and could move a code next to a boundary.
_PRODUCT_BOUND = float(2**40)


def _c64(v: int) -> tirx.PrimExpr:
    return tirx.const(int(v), I64)


def _f64(v: float) -> tirx.PrimExpr:
    return tirx.const(float(v), F64)


def _clamp_u8(v: tirx.PrimExpr, lo: int, hi: int) -> tirx.PrimExpr:
    """Clamp an int64 value to [lo, hi] and narrow to uint8 (lo/hi lie within [0, 255])."""
    return tirx.max(tirx.min(v, _c64(hi)), _c64(lo)).astype("uint8")


def quantize_product_bounds(offset: float, qmax: int) -> tuple[float, float] | None:
    """`(p_lo, p_hi)` such that, for every float64 product `p` (x * inv_scale, rounded),
    `trunc(min(max(p, p_lo), p_hi) + offset)` (float64 add) equals `clamp(floor(p + offset), 0, qmax)`; None where
    `offset` is too large for the bounds to be exact (the kernel then keeps the floor-and-clamp form).

    Why it holds: `p_lo = -offset` makes `p_lo + offset` exactly 0, and `p_hi` is the float64 nearest `qmax - offset`
    moved until `p_hi + offset` (rounded) lies in `[qmax, qmax + 1)`. Rounding is monotone, so a product below
    `p_lo` gives a sum <= 0 (code 0 either way), one above `p_hi` a sum >= qmax (code qmax either way), and one
    between them a sum in `[0, qmax + 1)`, where truncation is the floor and the clamp changes nothing.
    """
    off, top = float(offset), float(qmax)
    if not (abs(off) <= _PRODUCT_BOUND / 2 and 0 < qmax <= 255):
        return None
    p_hi = top - off
    for _ in range(64):  # a few ulps at most: qmax - offset is rounded once
        s = p_hi + off
        if s < top:
            p_hi = math.nextafter(p_hi, math.inf)
        elif s >= top + 1.0:
            p_hi = math.nextafter(p_hi, -math.inf)
        else:
            return -off, p_hi
    return None


def quantize(x: te.Tensor, inv_scale: float, offset: float, qmax: int, name: str = "quantize", *,
             product_bounds: bool = True) -> te.Tensor:
    """`clamp(floor(f64(x) * inv_scale + offset), 0, qmax)` as uint8 (BatchQuant Eq. 5).

    Computed as `trunc(clamp(f64(x) * inv_scale, p_lo, p_hi) + offset)` (`quantize_product_bounds`, the same codes
    for every input): one clamp on the product instead of a clamp on the product, a floor and a clamp on the sum.
    The clamp also keeps the product a separately rounded float64 (see `_PRODUCT_BOUND`). A NaN product becomes
    `p_hi` (code qmax) in both forms: the `min` comes first and returns its bound on NaN.
    `product_bounds=False` builds the floor-and-clamp form (the kernel before session 15, for `benchmarks.front`).
    """
    bounds = quantize_product_bounds(offset, qmax) if product_bounds else None

    def f(*i: tirx.PrimExpr) -> tirx.PrimExpr:
        p = x(*i).astype(F64) * _f64(inv_scale)
        if bounds is not None:
            p = tirx.max(tirx.min(p, _f64(bounds[1])), _f64(bounds[0]))
            return (p + _f64(offset)).astype("uint8")
        # The clamp keeps the product a separately rounded float64 (see _PRODUCT_BOUND).
        p = tirx.max(tirx.min(p, _f64(_PRODUCT_BOUND)), _f64(-_PRODUCT_BOUND))
        v = tirx.floor(p + _f64(offset))
        return tirx.max(tirx.min(v, _f64(qmax)), _f64(0.0)).astype("uint8")

    return te.compute(x.shape, f, name=name)


#: float dtype -> (unsigned type of its width, its exponent bits): a value is NaN or inf exactly when its bits
#: without the sign are at least the exponent mask (IEEE 754: all-ones exponent); `driver.finite_check` and
#: `quantize_checked` test it
FINITE_BITS = {"float16": ("uint16", 0x7C00), "float32": ("uint32", 0x7F800000),
               "float64": ("uint64", 0x7FF0000000000000)}


def quantize_checked(shape: Sequence[int], dtype: str, inv_scale: float, offset: float, qmax: int,
                     chunks: int = 1, lanes: int = 16, out_shape: Sequence[int] | None = None) -> tirx.PrimFunc | None:
    """`quantize` of a `dtype` tensor of `shape` that also fails (an `assert`: TVM raises, the native driver
    returns the error) when a value is NaN or inf: the driver's finiteness check of its input (`driver.finite_check`)
    folded into the kernel that reads the same values (issue 20, session 16: one pass over MobileNetV2's 602 KB
    input instead of two, the first of them serial).

    The codes are `quantize`'s clamped-product form, the same float64 operations in the same order; None where
    that form does not apply (`quantize_product_bounds`) or `dtype` is not a key of `FINITE_BITS`. The check is
    `driver.finite_check`'s, on the integer bits so fast-math flags cannot fold it: per chunk a `lanes`-wide maximum
    of the sign-cleared bits (`vpmaxud`), the chunks' maxima 64 bytes apart, tested after the join against the
    all-ones exponent. `chunks > 1`: a parallel loop over that many contiguous chunks of whole vectors; the
    values past them (fewer than `chunks * lanes`) after the join. `out_shape`: the codes' buffer shape (default
    `shape`; the same number of values, row-major: the driver passes a reshaped view as it is)."""
    from tvm.script import tirx as T

    bounds = quantize_product_bounds(offset, qmax)
    if bounds is None or dtype not in FINITE_BITS:
        return None
    udt, exp_mask = FINITE_BITS[dtype]
    abs_mask = (1 << (8 * np.dtype(dtype).itemsize - 1)) - 1
    n = int(np.prod(shape, dtype=np.int64))
    chunks = max(1, int(chunks))
    per = n // (chunks * lanes)  # whole vectors per chunk
    done = per * chunks * lanes
    stride = max(lanes, 64 // np.dtype(udt).itemsize)
    inv, p_lo, p_hi, off = float(inv_scale), float(bounds[0]), float(bounds[1]), float(offset)
    shape = tuple(int(v) for v in shape)
    oshape = shape if out_shape is None else tuple(int(v) for v in out_shape)
    if int(np.prod(oshape, dtype=np.int64)) != n:
        raise ValueError(f"quantize_checked: out_shape {oshape} does not hold the {n} values of {shape}")

    @T.prim_func
    def quantize_check(x: T.Buffer(shape, dtype), y: T.Buffer(oshape, "uint8")):
        xf = T.decl_buffer((n,), dtype, data=x.data)
        yf = T.decl_buffer((n,), "uint8", data=y.data)
        accs = T.alloc_buffer((chunks * stride,), udt)
        for c in T.parallel(chunks):
            acc = T.alloc_buffer((lanes,), udt, scope="local")
            for v in T.vectorized(lanes):
                acc[v] = T.Cast(udt, 0)
            for i in range(per):
                for v in T.vectorized(lanes):
                    acc[v] = T.max(acc[v], T.bitwise_and(T.reinterpret(udt, xf[(c * per + i) * lanes + v]),
                                                         T.Cast(udt, abs_mask)))
                    yf[(c * per + i) * lanes + v] = T.Cast("uint8", T.max(T.min(
                        T.Cast("float64", xf[(c * per + i) * lanes + v]) * T.float64(inv), T.float64(p_hi)),
                        T.float64(p_lo)) + T.float64(off))
            for v in T.vectorized(lanes):
                accs[c * stride + v] = acc[v]
        top = T.alloc_buffer((1,), udt, scope="local")
        top[0] = T.Cast(udt, 0)
        for c in range(chunks):
            for v in range(lanes):
                top[0] = T.max(top[0], accs[c * stride + v])
        for t in range(n - done):
            top[0] = T.max(top[0], T.bitwise_and(T.reinterpret(udt, xf[done + t]), T.Cast(udt, abs_mask)))
            yf[done + t] = T.Cast("uint8", T.max(T.min(T.Cast("float64", xf[done + t]) * T.float64(inv),
                                                       T.float64(p_hi)), T.float64(p_lo)) + T.float64(off))
        assert top[0] < T.Cast(udt, exp_mask), "input: a non-finite value (NaN or inf)"

    return quantize_check


def dequantize(q: te.Tensor, scale: float, zero_point: float, name: str = "dequantize") -> te.Tensor:
    """`(f64(q) - zero_point) * scale`."""
    return te.compute(q.shape, lambda *i: (q(*i).astype(F64) - _f64(zero_point)) * _f64(scale), name=name)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_out_hw(
    hw: tuple[int, int], k: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int], dil: tuple[int, int]
) -> tuple[int, int]:
    """Output height/width of a convolution (PyTorch's formula)."""
    return tuple((hw[i] + 2 * pad[i] - dil[i] * (k[i] - 1) - 1) // stride[i] + 1 for i in range(2))  # type: ignore[return-value]


def _pad(x: te.Tensor, pad: tuple[int, int], value: tirx.PrimExpr, name: str) -> te.Tensor:
    if pad == (0, 0):
        return x
    n, c, h, w = (int(s) for s in x.shape)
    ph, pw = pad

    def f(b: tirx.PrimExpr, ch: tirx.PrimExpr, i: tirx.PrimExpr, j: tirx.PrimExpr) -> tirx.PrimExpr:
        inside = tirx.all(i >= ph, i < h + ph, j >= pw, j < w + pw)
        return tirx.if_then_else(inside, x[b, ch, i - ph, j - pw], value)

    return te.compute((n, c, h + 2 * ph, w + 2 * pw), f, name=name)


def _conv(
    x: te.Tensor,
    w: te.Tensor,
    stride: int | Sequence[int],
    padding: int | Sequence[int],
    dilation: int | Sequence[int],
    groups: int,
    pad_value: tirx.PrimExpr,
    acc_dtype: str,
    name: str,
) -> te.Tensor:
    """Grouped NCHW convolution `sum(w * x_padded)` in `acc_dtype` (depthwise is groups == C)."""
    st, pd, dl = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, wd = (int(s) for s in x.shape)
    o, cg, kh, kw = (int(s) for s in w.shape)
    oh, ow = conv_out_hw((h, wd), (kh, kw), st, pd, dl)
    og = o // groups
    xp = _pad(x, pd, pad_value, name + "_pad")
    rc = te.reduce_axis((0, cg), name="rc")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")

    def f(b: tirx.PrimExpr, oc: tirx.PrimExpr, i: tirx.PrimExpr, j: tirx.PrimExpr) -> tirx.PrimExpr:
        ic = (oc // og) * cg + rc if groups > 1 else rc
        xv = xp[b, ic, i * st[0] + ry * dl[0], j * st[1] + rx * dl[1]].astype(acc_dtype)
        return te.sum(xv * w[oc, rc, ry, rx].astype(acc_dtype), axis=[rc, ry, rx])

    return te.compute((n, o, oh, ow), f, name=name)


def conv2d_acc(
    x: te.Tensor,
    w: te.Tensor,
    bias: te.Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    pad_value: int = 0,
    name: str = "conv2d",
) -> te.Tensor:
    """int32 `sum(w * x_padded) + bias[o]`, x padded with the code `pad_value`."""
    acc = _conv(x, w, stride, padding, dilation, groups, tirx.const(pad_value, x.dtype), "int32", name + "_acc")
    return te.compute(acc.shape, lambda b, oc, i, j: acc[b, oc, i, j] + bias[oc], name=name)


#: integer conv2d (docs/integer_semantics.md `conv2d`): the accumulator kernel, under the op's name
conv2d = conv2d_acc


def _requant_expr(
    acc: te.Tensor, multiplier: te.Tensor, shift: te.Tensor, offset: te.Tensor, lo: int, hi: int,
    channel_axis: int = 1,
) -> callable:
    def f(*i: tirx.PrimExpr) -> tirx.PrimExpr:
        c = i[channel_axis]
        v = acc(*i).astype(I64) * multiplier[c].astype(I64) + offset[c].astype(I64)
        return _clamp_u8(tirx.shift_right(v, shift[c].astype(I64)), lo, hi)

    return f


def requantize(
    acc: te.Tensor, multiplier: te.Tensor, shift: te.Tensor, offset: te.Tensor, lo: int, hi: int,
    name: str = "requantize",
) -> te.Tensor:
    """`clamp((acc*M[c] + offset[c]) >> s[c], lo, hi)` per channel (dim 1) as uint8 (offset int64)."""
    return te.compute(acc.shape, _requant_expr(acc, multiplier, shift, offset, lo, hi), name=name)


def conv2d_requant(
    x: te.Tensor,
    w: te.Tensor,
    bias: te.Tensor,
    multiplier: te.Tensor,
    shift: te.Tensor,
    offset: te.Tensor,
    *post_operands: te.Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    pad_value: int = 0,
    lo: int = 0,
    hi: int = 255,
    post: tuple = (),
) -> te.Tensor:
    """conv2d then requantize in one PrimFunc (the fused group "conv2d_requant"), then the fused elementwise
    steps `post` (`schedules.requant.EpilogueStep`: lookup table, rescale, residual add) on each code, their
    tables and skip tensors (NCHW, the output's shape) being `post_operands`."""
    acc = conv2d_acc(x, w, bias, stride, padding, dilation, groups, pad_value)
    if not post:
        return requantize(acc, multiplier, shift, offset, lo, hi)
    from qcompile.backends.tvm.schedules.requant import apply_post

    rq = _requant_expr(acc, multiplier, shift, offset, lo, hi)
    return te.compute(acc.shape, lambda *i: apply_post(rq(*i), post, post_operands, i), name="requantize")


def linear_acc(x: te.Tensor, w: te.Tensor, bias: te.Tensor, name: str = "linear") -> te.Tensor:
    """int32 `x @ w.T + bias`."""
    n, k = (int(s) for s in x.shape)
    o = int(w.shape[0])
    rk = te.reduce_axis((0, k), name="rk")
    acc = te.compute(
        (n, o),
        lambda i, j: te.sum(x[i, rk].astype("int32") * w[j, rk].astype("int32"), axis=rk),
        name=name + "_acc",
    )
    return te.compute((n, o), lambda i, j: acc[i, j] + bias[j], name=name)


#: integer linear (docs/integer_semantics.md `linear`): the accumulator kernel, under the op's name
linear = linear_acc


def linear_requant(
    x: te.Tensor, w: te.Tensor, bias: te.Tensor, multiplier: te.Tensor, shift: te.Tensor, offset: te.Tensor,
    lo: int = 0, hi: int = 255,
) -> te.Tensor:
    """linear then requantize in one PrimFunc (the fused group "linear_requant")."""
    return requantize(linear_acc(x, w, bias), multiplier, shift, offset, lo, hi)


def dequantize_acc(acc: te.Tensor, scale: te.Tensor) -> te.Tensor:
    """`f64(acc) * scale[c]` (channel = dim 1)."""
    return te.compute(acc.shape, lambda *i: acc(*i).astype(F64) * scale[i[1]], name="dequantize_acc")


def rescale(x: te.Tensor, multiplier: int, offset: int, shift: int, lo: int, hi: int) -> te.Tensor:
    """`clamp((x*M + offset) >> s, lo, hi)` in int64."""

    def f(*i: tirx.PrimExpr) -> tirx.PrimExpr:
        v = x(*i).astype(I64) * _c64(multiplier) + _c64(offset)
        return _clamp_u8(tirx.shift_right(v, _c64(shift)), lo, hi)

    return te.compute(x.shape, f, name="rescale")


def add(
    a: te.Tensor, b: te.Tensor, multiplier_a: int, multiplier_b: int, offset: int, shift: int, lo: int, hi: int
) -> te.Tensor:
    """Residual add `clamp((a*Ma + b*Mb + offset) >> s, lo, hi)` in int64."""

    def f(*i: tirx.PrimExpr) -> tirx.PrimExpr:
        v = a(*i).astype(I64) * _c64(multiplier_a) + b(*i).astype(I64) * _c64(multiplier_b) + _c64(offset)
        return _clamp_u8(tirx.shift_right(v, _c64(shift)), lo, hi)

    return te.compute(a.shape, f, name="add")


def mean(x: te.Tensor, multiplier: int, offset: int, shift: int, lo: int, hi: int) -> te.Tensor:
    """Global average pool on codes: `clamp((sum_hw(x)*M + offset) >> s, lo, hi)`, keepdim."""
    n, c, h, w = (int(s) for s in x.shape)
    ry = te.reduce_axis((0, h), name="ry")
    rx = te.reduce_axis((0, w), name="rx")
    total = te.compute(
        (n, c, 1, 1), lambda b, ch, _i, _j: te.sum(x[b, ch, ry, rx].astype(I64), axis=[ry, rx]), name="mean_sum"
    )

    def f(b: tirx.PrimExpr, ch: tirx.PrimExpr, i: tirx.PrimExpr, j: tirx.PrimExpr) -> tirx.PrimExpr:
        v = total[b, ch, i, j] * _c64(multiplier) + _c64(offset)
        return _clamp_u8(tirx.shift_right(v, _c64(shift)), lo, hi)

    return te.compute((n, c, 1, 1), f, name="mean")


def mul(
    x: te.Tensor, g: te.Tensor, multiplier: int, offset_g: int, offset: int, shift: int, lo: int, hi: int,
    offset_x: int = 0,
) -> te.Tensor:
    """SE gating `clamp((x*g*M + g*offset_g + x*offset_x + offset) >> s, lo, hi)`, g broadcast over H, W."""

    def f(b: tirx.PrimExpr, ch: tirx.PrimExpr, i: tirx.PrimExpr, j: tirx.PrimExpr) -> tirx.PrimExpr:
        gi = g[b, ch, 0, 0].astype(I64)
        xi = x[b, ch, i, j].astype(I64)
        v = xi * gi * _c64(multiplier) + gi * _c64(offset_g) + xi * _c64(offset_x) + _c64(offset)
        return _clamp_u8(tirx.shift_right(v, _c64(shift)), lo, hi)

    return te.compute(x.shape, f, name="mul")


def lut(x: te.Tensor, table: te.Tensor) -> te.Tensor:
    """`table[x]` (256-entry table on codes)."""
    return te.compute(x.shape, lambda *i: table[x(*i).astype("int32")], name="lut")


def max_pool2d(
    x: te.Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int] = (0, 0),
    dilation: Sequence[int] = (1, 1),
) -> te.Tensor:
    """Max pool on uint8 codes, padding with the code 0 (exact, see `qcompile.ops.reference.max_pool2d`)."""
    k, st, pad, dil = _pair(kernel_size), _pair(stride), _pair(padding), _pair(dilation)
    n, c = int(x.shape[0]), int(x.shape[1])
    oh, ow = conv_out_hw((int(x.shape[2]), int(x.shape[3])), k, st, pad, dil)
    xp = _pad(x, pad, tirx.const(0, x.dtype), "max_pool_pad")
    ry = te.reduce_axis((0, k[0]), name="ry")
    rx = te.reduce_axis((0, k[1]), name="rx")
    return te.compute(
        (n, c, oh, ow),
        lambda b, ch, i, j: te.max(xp[b, ch, i * st[0] + ry * dil[0], j * st[1] + rx * dil[1]], axis=[ry, rx]),
        name="max_pool2d",
    )


# -- float64 islands ------------------------------------------------------------------------------


def float_conv2d(
    x: te.Tensor,
    w: te.Tensor,
    bias: te.Tensor | None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> te.Tensor:
    """float64 `F.conv2d` (zero padding, optional bias)."""
    acc = _conv(x, w, stride, padding, dilation, groups, _f64(0.0), F64, "float_conv2d_acc")
    if bias is None:
        return acc
    return te.compute(acc.shape, lambda b, oc, i, j: acc[b, oc, i, j] + bias[oc], name="float_conv2d")


def float_linear(x: te.Tensor, w: te.Tensor, bias: te.Tensor | None) -> te.Tensor:
    """float64 `F.linear`."""
    n, k = (int(s) for s in x.shape)
    o = int(w.shape[0])
    rk = te.reduce_axis((0, k), name="rk")
    acc = te.compute((n, o), lambda i, j: te.sum(x[i, rk] * w[j, rk], axis=rk), name="float_linear_acc")
    if bias is None:
        return acc
    return te.compute((n, o), lambda i, j: acc[i, j] + bias[j], name="float_linear")


def _unary_expr(kind: str, v: tirx.PrimExpr) -> tirx.PrimExpr:
    """The float64 formula of each activation, written in torch's CPU kernel order."""
    zero, three, six, one = _f64(0.0), _f64(3.0), _f64(6.0), _f64(1.0)
    if kind == "relu":
        return tirx.max(v, zero)
    if kind == "relu6":
        return tirx.min(tirx.max(v, zero), six)
    if kind == "hardswish":
        return v * tirx.min(tirx.max(v + three, zero), six) / six
    if kind == "hardsigmoid":
        return tirx.min(tirx.max(v + three, zero), six) / six
    if kind == "sigmoid":
        return one / (one + tirx.exp(-v))
    if kind == "silu":
        return v / (one + tirx.exp(-v))
    raise ValueError(kind)


FLOAT_UNARY = ("relu", "relu6", "hardswish", "hardsigmoid", "sigmoid", "silu")


def float_unary(x: te.Tensor, kind: str) -> te.Tensor:
    """float64 activation `kind` (one of FLOAT_UNARY)."""
    return te.compute(x.shape, lambda *i: _unary_expr(kind, x(*i)), name=f"float_{kind}")


def float_mean(x: te.Tensor) -> te.Tensor:
    """float64 `torch.mean(x, dim=(2, 3), keepdim=True)`."""
    n, c, h, w = (int(s) for s in x.shape)
    ry = te.reduce_axis((0, h), name="ry")
    rx = te.reduce_axis((0, w), name="rx")
    total = te.compute((n, c, 1, 1), lambda b, ch, _i, _j: te.sum(x[b, ch, ry, rx], axis=[ry, rx]), name="float_sum")
    return te.compute((n, c, 1, 1), lambda *i: total(*i) / _f64(h * w), name="float_mean")


def float_gemv(x: te.Tensor, wt: te.Tensor, bias: te.Tensor | None) -> te.Tensor:
    """float64 1x1 conv of a pooled input `x[1, C, 1, 1]` (squeeze-excite's reduce and expand convs) with its
    weights transposed to `wt[C, O]`: `acc[o] = sum_c x[c] * f64(wt[c, o])`, c ascending from 0.0 as in
    `float_conv2d`, then `+ bias[o]`. `wt` may be float32 when every weight is a float32 value (widening is
    exact, so the products are the same; half the bytes to read). `schedule_float_island` vectorises the stage
    `gemv_acc` over `o`: each lane runs the same operations in the same order as the scalar `float_conv2d` of
    its channel, so the bits are the same, with independent accumulators instead of one serial add chain."""
    c, o = (int(v) for v in wt.shape)
    rc = te.reduce_axis((0, c), name="rc")
    acc = te.compute((1, o, 1, 1), lambda b, oc, i, j: te.sum(x[b, rc, i, j] * wt[rc, oc].astype(F64), axis=rc),
                     name="gemv_acc")
    if bias is None:
        return acc
    return te.compute(acc.shape, lambda b, oc, i, j: acc[b, oc, i, j] + bias[oc], name="gemv_bias")


#: float64 lanes of the float-island GEMV (an AVX-512 register; on AVX2 and NEON LLVM splits it)
GEMV_LANES = 8


def schedule_float_island(func: tirx.PrimFunc, lanes: int = GEMV_LANES) -> tirx.PrimFunc:
    """Vectorise each `gemv_acc` stage of a float island over its output channels, with the channel reduction
    outside. Each channel's reduction order is unchanged (so are its bits); the other stages run as written."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    for blk in sch.get_child_blocks(sch.get_sblock("root")):
        if not sch.get(blk).name_hint.startswith("gemv_acc"):
            continue
        b, oc, i, j, rc = sch.get_loops(blk)
        sch.reorder(b, i, j, rc, oc)
        if int(sch.get(oc).extent) % lanes == 0:  # vectorise before decompose_reduction (TVM requires it)
            _, inner = sch.split(oc, [None, lanes])
            sch.vectorize(inner)
        sch.decompose_reduction(blk, rc)
    return sch.mod["main"]


def float_island(x: te.Tensor, *consts: te.Tensor, steps: tuple[tuple[str, tuple], ...]) -> te.Tensor:
    """A whole float island in one kernel: `steps` applied in order to the codes `x`, each the kernel of this
    module that computes it alone, as its own stage (materialised, not inlined: the same float64 operations
    in the same order as separate kernels, so the same bits).

    Each step is `(kind, keywords)`: `("dequantize", (scale, zero_point))`, `("float_mean", ())`,
    `("float_conv2d", (has_bias, stride, padding, dilation, groups))`, `("float_gemv", (has_bias,))` (a 1x1 conv
    of a pooled `[1, C, 1, 1]` input with weights `[C, O]`: `float_gemv`) and `("float_linear", (has_bias,))`
    (their weights and biases next in `consts`), `("float_unary", (kind,))`, `("quantize", (inv_scale, offset,
    qmax))`,
    and last, optionally, `("mul", (multiplier, offset_g, offset, shift, lo, hi, offset_x))`: the gate multiply
    of squeeze-excite, `x` gated by the island's codes (Howard et al. 2019, MobileNetV3 Fig. 4).
    """
    it = iter(consts)
    t = x
    for kind, kw in steps:
        if kind == "dequantize":
            t = dequantize(t, *kw)
        elif kind == "float_mean":
            t = float_mean(t)
        elif kind == "float_conv2d":
            has_bias, stride, padding, dilation, groups = kw
            w = next(it)
            t = float_conv2d(t, w, next(it) if has_bias else None, stride, padding, dilation, groups)
        elif kind == "float_gemv":
            wt = next(it)
            t = float_gemv(t, wt, next(it) if kw[0] else None)
        elif kind == "float_linear":
            w = next(it)
            t = float_linear(t, w, next(it) if kw[0] else None)
        elif kind == "float_unary":
            t = float_unary(t, kw[0])
        elif kind == "quantize":
            t = quantize(t, *kw)
        elif kind == "mul":
            t = mul(x, t, *kw)
        else:
            raise ValueError(f"float island step {kind!r}")
    return t


# -- the "qdq" flavour: float32 epilogues (qcompile.ops.reference, QDQ_OPS) ------------------------------------
# TVM's LLVM backend contracts a float multiply and add into one FMA. Where the reference rounds a float32
# product before an add, the product is formed in float64 (exact for these operands: a code or an int32 times a
# float32) and narrowed to float32 explicitly, so no contraction can merge the two roundings.
F32 = "float32"


def _f32c(v: float) -> tirx.PrimExpr:
    return tirx.const(float(v), F32)


def _rne_u8(v: tirx.PrimExpr, zero_point: int, lo: int, hi: int) -> tirx.PrimExpr:
    """`clamp(round_half_even(v) + zero_point, lo, hi)` as uint8 (v float32; nearbyint = ties to even)."""
    return _clamp_u8(tirx.nearbyint(v).astype(I64) + _c64(zero_point), lo, hi)


def quantize_linear(x: te.Tensor, scale: float, zero_point: int, qmax: int) -> te.Tensor:
    """ONNX QuantizeLinear: `clamp(round_half_even(f32(x) / scale) + zero_point, 0, qmax)`."""
    return te.compute(x.shape, lambda *i: _rne_u8(x(*i).astype(F32) / _f32c(scale), zero_point, 0, qmax),
                      name="quantize_linear")


def requantize_float(acc: te.Tensor, scale: te.Tensor, zero_point: int, lo: int, hi: int) -> te.Tensor:
    """QLinearConv's epilogue `clamp(round_half_even(f32(acc) * scale[c]) + zero_point, lo, hi)`; `scale` is the
    float32 `x_scale * w_scale[c] / y_scale` the emitter computed as onnxruntime does."""

    def f(*i: tirx.PrimExpr) -> tirx.PrimExpr:
        return _rne_u8(acc(*i).astype(F32) * scale[i[1]], zero_point, lo, hi)

    return te.compute(acc.shape, f, name="requantize_float")


def rescale_float(x: te.Tensor, x_scale: float, x_zero_point: int, y_scale: float, zero_point: int, lo: int,
                  hi: int) -> te.Tensor:
    """DequantizeLinear then QuantizeLinear in float32."""

    def f(*i: tirx.PrimExpr) -> tirx.PrimExpr:
        v = (x(*i).astype("int32") - tirx.const(x_zero_point, "int32")).astype(F32) * _f32c(x_scale)
        return _rne_u8(v / _f32c(y_scale), zero_point, lo, hi)

    return te.compute(x.shape, f, name="rescale_float")


def add_float(a: te.Tensor, b: te.Tensor, ra: float, rb: float, k: float, lo: int, hi: int) -> te.Tensor:
    """onnxruntime's x86 QLinearAdd: `v = fma(a, ra, fma(b, rb, k))` (float32), `clamp(round_half_even(v), lo,
    hi)`; each fma is the float64 `x * y + z` (product exact) narrowed once to float32."""

    def f(*i: tirx.PrimExpr) -> tirx.PrimExpr:
        t = (b(*i).astype(F64) * _f64(rb) + _f64(k)).astype(F32)
        t = (a(*i).astype(F64) * _f64(ra) + t.astype(F64)).astype(F32)
        return _rne_u8(t, 0, lo, hi)

    return te.compute(a.shape, f, name="add_float")


def mean_float(x: te.Tensor, x_zero_point: int, scale: float, zero_point: int, lo: int, hi: int) -> te.Tensor:
    """QLinearGlobalAveragePool: `clamp(round_half_even(f32(sum_hw(x) - zx HW) * scale) + zero_point, lo, hi)`."""
    n, c, h, w = (int(s) for s in x.shape)
    ry = te.reduce_axis((0, h), name="ry")
    rx = te.reduce_axis((0, w), name="rx")
    total = te.compute((n, c, 1, 1), lambda b, ch, _i, _j: te.sum(x[b, ch, ry, rx].astype("int32"), axis=[ry, rx]),
                       name="mean_float_sum")
    off = tirx.const(x_zero_point * h * w, "int32")
    return te.compute((n, c, 1, 1), lambda *i: _rne_u8((total(*i) - off).astype(F32) * _f32c(scale), zero_point,
                                                       lo, hi), name="mean_float")


def mul_float(x: te.Tensor, g: te.Tensor, x_zero_point: int, g_zero_point: int, r: float, zero_point: int, lo: int,
              hi: int) -> te.Tensor:
    """QLinearMul with the gate broadcast over H, W: `round_half_even(f32(f32((x - zx)(g - zg)) * r) + zy)`."""

    def f(b: tirx.PrimExpr, ch: tirx.PrimExpr, y: tirx.PrimExpr, xx: tirx.PrimExpr) -> tirx.PrimExpr:
        prod = ((x[b, ch, y, xx].astype("int32") - tirx.const(x_zero_point, "int32"))
                * (g[b, ch, 0, 0].astype("int32") - tirx.const(g_zero_point, "int32")))
        v = (prod.astype(F64) * _f64(r)).astype(F32)
        v = (v.astype(F64) + _f64(zero_point)).astype(F32)
        return _rne_u8(v, 0, lo, hi)

    return te.compute(x.shape, f, name="mul_float")
