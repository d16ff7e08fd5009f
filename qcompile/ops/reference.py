"""Exact torch implementations of the integer operators (see docs/integer_semantics.md).

These functions are the ground truth every backend reproduces. They compute in int64 where an
intermediate can exceed int32 and return the dtype the contract names. Each is FX-callable: an
`IntegerGraph` calls them through `call_function` nodes. Each op is declared (operands, static
parameters, output dtype) in `qcompile.ops.table`; `fixmul` is a helper, not an op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "quantize",
    "dequantize",
    "conv2d",
    "linear",
    "requantize",
    "dequantize_acc",
    "rescale",
    "add",
    "mean",
    "mul",
    "lut",
    "flatten",
    "max_pool2d",
    "fixmul",
    "quantize_linear",
    "requantize_float",
    "rescale_float",
    "add_float",
    "mean_float",
    "mul_float",
]


def _channel_view(p: torch.Tensor, ndim: int) -> torch.Tensor:
    """Broadcast a per-channel vector [C] over dim 1 of an `ndim`-d tensor."""
    return p.reshape((1, -1) + (1,) * (ndim - 2))


def fixmul(v: torch.Tensor, multiplier: torch.Tensor | int, shift: torch.Tensor | int) -> torch.Tensor:
    """`(v * M + 2^(s-1)) >> s` in int64: round half up (the fixed-point rule)."""
    v = v.to(torch.int64)
    m = torch.as_tensor(multiplier, dtype=torch.int64)
    s = torch.as_tensor(shift, dtype=torch.int64)
    return (v * m + (torch.ones_like(s) << (s - 1))) >> s


def quantize(x: torch.Tensor, inv_scale: float, offset: float, qmax: int) -> torch.Tensor:
    """Float -> codes: `clamp(floor(x * inv_scale + offset), 0, qmax)` in float64 (BatchQuant Eq. 5)."""
    v = torch.floor(x.to(torch.float64) * inv_scale + offset)
    return v.clamp(0, qmax).to(torch.uint8)


def dequantize(q: torch.Tensor, scale: float, zero_point: float) -> torch.Tensor:
    """Codes -> float64: `(q - zero_point) * scale`."""
    return (q.to(torch.float64) - zero_point) * scale


def conv2d(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    pad_value: int = 0,
) -> torch.Tensor:
    """uint8 codes (x) int8 weights -> int32 accumulator + bias; pads x with the code `pad_value`.

    Computed in float64, which is exact for these magnitudes (|sum| < 2^53), then cast to int32;
    `to_integer` has proven the int32 range.
    """
    pad = (padding, padding) if isinstance(padding, int) else tuple(padding)
    xd = x.to(torch.float64)
    if pad != (0, 0):
        xd = F.pad(xd, (pad[1], pad[1], pad[0], pad[0]), value=float(pad_value))
    acc = F.conv2d(xd, w.to(torch.float64), None, stride, 0, dilation, groups)
    return (acc.round().to(torch.int64) + _channel_view(bias.to(torch.int64), acc.ndim)).to(torch.int32)


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K] x int8 [O, K] -> int32 [N, O] accumulator + bias."""
    acc = x.to(torch.float64) @ w.to(torch.float64).T
    return (acc.round().to(torch.int64) + bias.to(torch.int64)).to(torch.int32)


def requantize(
    acc: torch.Tensor,
    multiplier: torch.Tensor,
    shift: torch.Tensor,
    *,
    lo: int,
    hi: int,
    offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """int32 accumulator -> codes: `clamp((acc*M[c] + offset[c]) >> s[c], lo, hi)` in int64.

    `offset` (int64 per channel) defaults to the rounding term `2^(s-1)`; `to_integer` adds the
    fractional part of the folded bias to it, which the int32 bias cannot hold.
    """
    m = _channel_view(multiplier.to(torch.int64), acc.ndim)
    s = _channel_view(shift.to(torch.int64), acc.ndim)
    if offset is None:
        return fixmul(acc, m, s).clamp(lo, hi).to(torch.uint8)
    off = _channel_view(offset.to(torch.int64), acc.ndim)
    return ((acc.to(torch.int64) * m + off) >> s).clamp(lo, hi).to(torch.uint8)


def dequantize_acc(acc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int32 accumulator -> float64 with a per-channel scale."""
    return acc.to(torch.float64) * _channel_view(scale.to(torch.float64), acc.ndim)


def rescale(x: torch.Tensor, *, multiplier: int, offset: int, shift: int, lo: int, hi: int) -> torch.Tensor:
    """Codes of one quantizer -> codes of another: `clamp((x*M + offset) >> s, lo, hi)`."""
    v = (x.to(torch.int64) * multiplier + offset) >> shift
    return v.clamp(lo, hi).to(torch.uint8)


def add(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    multiplier_a: int,
    multiplier_b: int,
    offset: int,
    shift: int,
    lo: int,
    hi: int,
) -> torch.Tensor:
    """Requantized residual add: `clamp((a*Ma + b*Mb + offset) >> s, lo, hi)`."""
    v = (a.to(torch.int64) * multiplier_a + b.to(torch.int64) * multiplier_b + offset) >> shift
    return v.clamp(lo, hi).to(torch.uint8)


def mean(x: torch.Tensor, *, multiplier: int, offset: int, shift: int, lo: int, hi: int) -> torch.Tensor:
    """Global average pool on codes: `clamp((sum_hw(x)*M + offset) >> s, lo, hi)`, keepdim."""
    total = x.to(torch.int64).sum(dim=(2, 3), keepdim=True)
    return ((total * multiplier + offset) >> shift).clamp(lo, hi).to(torch.uint8)


def mul(
    x: torch.Tensor,
    g: torch.Tensor,
    *,
    multiplier: int,
    offset_g: int,
    offset: int,
    shift: int,
    lo: int,
    hi: int,
    offset_x: int = 0,
) -> torch.Tensor:
    """SE gating on codes: `clamp((x*g*M + g*offset_g + x*offset_x + offset) >> s, lo, hi)`.

    `(x - zx)(g - zg) = xg - zx g - zg x + zx zg`: `offset_g` carries x's zero point, `offset_x` the
    gate's (BatchQuant's zero point `z + beta` is fractional, so the gate's is rarely exactly 0).
    """
    xi, gi = x.to(torch.int64), g.to(torch.int64)
    v = (xi * gi * multiplier + gi * offset_g + xi * offset_x + offset) >> shift
    return v.clamp(lo, hi).to(torch.uint8)


def lut(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """256-entry lookup table on codes (h-swish, swish, sigmoid)."""
    return table.to(torch.uint8)[x.to(torch.int64)]


def flatten(x: torch.Tensor) -> torch.Tensor:
    """[N, ...] -> [N, prod(...)]."""
    return x.reshape(x.shape[0], -1)


def max_pool2d(
    x: torch.Tensor,
    *,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
) -> torch.Tensor:
    """Max pool on codes (uint8 in, uint8 out, same quantizer): exact, no requantization.

    Dequantization `(q - z) s` with `s > 0` is increasing, so `max` commutes with it: the codes of the
    float max pool are the max pool of the codes. Padding is the code 0: every window holds at least one
    real element (PyTorch requires `padding <= kernel / 2`) and every code is `>= 0`, so a padded tap never
    wins, exactly as PyTorch's implicit `-inf` padding.
    """
    ph, pw = padding
    xd = x.to(torch.int32)
    if ph or pw:
        xd = F.pad(xd, (pw, pw, ph, ph), value=0)
    kh, kw = kernel_size
    dh, dw = dilation
    sh, sw = stride
    oh = (xd.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xd.shape[3] - dw * (kw - 1) - 1) // sw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = xd[:, :, i * dh : i * dh + (oh - 1) * sh + 1 : sh, j * dw : j * dw + (ow - 1) * sw + 1 : sw]
            out = tap if out is None else torch.maximum(out, tap)
    assert out is not None
    return out.to(torch.uint8)


# -- the "qdq" flavour: float32 requantization as ONNX QuantizeLinear and onnxruntime's MLAS compute it ----------
#
# Every op below ends like ONNX QuantizeLinear, `saturate(round(v) + zero_point)` with "rounding to nearest ties
# to even" (ONNX Operators.md), in float32, then clamps to the consumer's `[lo, hi]` (ReLU/ReLU6 and sub-8-bit
# ranges). Zero points are integers (qcompile.quant.flavour). The float32 operations and their order follow
# onnxruntime: QLinearConv's output scale is `X_scale * W_scale[c] / Y_scale` (qlinearconv.cc), applied by
# MlasRequantizeOutput as `float(acc) * scale`, round to nearest even (cvtps2dq), + zero point; DequantizeLinear
# is `float(q - zp) * scale`; QLinearGlobalAveragePool's scale is `ScaleInput / (ScaleOutput * float(ImageSize))`
# applied to `sum - zp * ImageSize` (qlgavgpool.cpp); QLinearAdd is its x86 AVX2 kernel (qladd_avx2.cpp; the
# ARM kernel is fixed point and is not reproduced).

_F32 = torch.float32


def _f32(v: float) -> torch.Tensor:
    return torch.tensor(float(v), dtype=_F32)


def _saturate(v: torch.Tensor, zero_point: int, lo: int, hi: int) -> torch.Tensor:
    """`clamp(round_half_even(v) + zero_point, lo, hi)` -> uint8 (v float32)."""
    return (torch.round(v).to(torch.int64) + int(zero_point)).clamp(lo, hi).to(torch.uint8)


def quantize_linear(x: torch.Tensor, scale: float, zero_point: int, qmax: int) -> torch.Tensor:
    """ONNX QuantizeLinear in float32: `clamp(round_half_even(f32(x) / f32(scale)) + zero_point, 0, qmax)`."""
    return _saturate(x.to(_F32) / _f32(scale), zero_point, 0, qmax)


def requantize_float(
    acc: torch.Tensor, w_scale: torch.Tensor, *, x_scale: float, y_scale: float, zero_point: int, lo: int, hi: int,
    x_zero_point: int = 0,
) -> torch.Tensor:
    """QLinearConv's epilogue: `clamp(round_half_even(f32(acc) * s[c]) + zero_point, lo, hi)`,
    `s = (f32(x_scale) * f32(w_scale[c])) / f32(y_scale)` in float32. The accumulator already holds the
    int32 bias and the input zero point's `- x_zero_point * sum w` (the conv's `pad_value` is
    `x_zero_point`); `x_zero_point` is recorded here for exporters, which write it as the input's zero point."""
    s = (_f32(x_scale) * w_scale.to(_F32)) / _f32(y_scale)
    return _saturate(acc.to(_F32) * _channel_view(s, acc.ndim), zero_point, lo, hi)


def rescale_float(
    x: torch.Tensor, *, x_scale: float, x_zero_point: int, y_scale: float, zero_point: int, lo: int, hi: int,
) -> torch.Tensor:
    """DequantizeLinear then QuantizeLinear: `clamp(round_half_even(f32(x - zx) * sx / sy) + zero_point, lo, hi)`."""
    v = (x.to(torch.int32) - int(x_zero_point)).to(_F32) * _f32(x_scale)
    return _saturate(v / _f32(y_scale), zero_point, lo, hi)


def add_float(
    a: torch.Tensor, b: torch.Tensor, *, a_scale: float, a_zero_point: int, b_scale: float, b_zero_point: int,
    y_scale: float, zero_point: int, lo: int, hi: int,
) -> torch.Tensor:
    """QLinearAdd as onnxruntime's x86 kernel (MlasQLinearAddKernelAvx2Helper) computes it, in float32:
    `rA = sa / sy`, `rB = sb / sy`, `k = zy - (rA za + rB zb)`, `v = fma(a, rA, fma(b, rB, k))`, then
    `clamp(round_half_even(v), lo, hi)` (the zero point is inside `k`). Each fma is one float32 rounding of the
    exact float64 `x * y + z` (products of a code and a float32 are exact in float64)."""
    ra = _f32(a_scale) / _f32(y_scale)
    rb = _f32(b_scale) / _f32(y_scale)
    k = _f32(zero_point) - (ra * _f32(a_zero_point) + rb * _f32(b_zero_point))
    f64 = torch.float64
    t = (b.to(f64) * rb.to(f64) + k.to(f64)).to(_F32)
    t = (a.to(f64) * ra.to(f64) + t.to(f64)).to(_F32)
    return _saturate(t, 0, lo, hi)


def mean_float(
    x: torch.Tensor, *, x_scale: float, x_zero_point: int, y_scale: float, zero_point: int, lo: int, hi: int,
) -> torch.Tensor:
    """QLinearGlobalAveragePool (keepdim): `clamp(round_half_even(f32(sum_hw(x) - zx HW) * s) + zero_point, lo, hi)`,
    `s = sx / (sy * f32(HW))` in float32."""
    hw = x.shape[2] * x.shape[3]
    acc = x.to(torch.int64).sum(dim=(2, 3), keepdim=True) - int(x_zero_point) * hw
    s = _f32(x_scale) / (_f32(y_scale) * _f32(hw))
    return _saturate(acc.to(torch.int32).to(_F32) * s, zero_point, lo, hi)


def mul_float(
    x: torch.Tensor, g: torch.Tensor, *, x_scale: float, x_zero_point: int, g_scale: float, g_zero_point: int,
    y_scale: float, zero_point: int, lo: int, hi: int,
) -> torch.Tensor:
    """QLinearMul (SE gating, `g` broadcast over H, W) as onnxruntime's kernels compute it:
    `clamp(round_half_even(f32((x - zx)(g - zg)) * r + zy), lo, hi)`, `r = sx * sg / sy` in float32."""
    r = (_f32(x_scale) * _f32(g_scale)) / _f32(y_scale)
    prod = (x.to(torch.int32) - int(x_zero_point)) * (g.to(torch.int32) - int(g_zero_point))
    return _saturate(prod.to(_F32) * r + _f32(zero_point), 0, lo, hi)


#: the ops of the "qdq" flavour (float32 requantization)
QDQ_OPS = (quantize_linear, requantize_float, rescale_float, add_float, mean_float, mul_float)

