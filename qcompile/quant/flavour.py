"""Quantization flavours: which arithmetic the fake-quant model, the integer program and the exports share.

Two flavours exist:

- ``"fixed-point"`` (default): BatchQuant exactly as QFA Eq. 5 writes it, with a fractional zero point
  `z + beta`, round half up everywhere and gemmlowp fixed-point requantization
  (docs/integer_semantics.md). The QOperator export and TVM reproduce it bit for bit; a standard QDQ
  graph cannot (integer zero points, round half to even, float scales), so its QDQ export is approximate.
- ``"qdq"``: the arithmetic of a standard ONNX QDQ graph as onnxruntime runs it, so the QDQ export computes
  what was evaluated:

  * the activation zero point is an integer: BatchQuant's `z + beta` (Eq. 5) made an integer by the
    quantizer's zero-point rule (`zero_rounding`, QFA Eq. 1's bracket), as a straight-through round so
    beta keeps its gradient; the scale `delta gamma` is a float32 number;
  * quantization is ONNX QuantizeLinear: `y = saturate(round(x / y_scale) + y_zero_point)`, "rounding to
    nearest ties to even" (ONNX Operators.md, QuantizeLinear), in float32; sub-8-bit codes are further
    clamped to `[0, 2^b - 1]` (a Clip on the uint8 codes in the export);
  * requantization of an int32 accumulator is onnxruntime's QLinearConv: the output scale is
    `X_scale * W_scale[c] / Y_scale` evaluated in float32 left to right (qlinearconv.cc,
    `ComputeOutputScale`), and MlasRequantizeOutput computes `float32(acc + bias) * scale`, clamps to
    `[0 - zp, 255 - zp]`, rounds to nearest even (`cvtps2dq`) and adds the zero point.

`set_flavour` / `flavour_of` change and read the flavour of every activation quantizer of a model; the
flavour is a buffer of each quantizer, so it travels with the state dict and checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

from qcompile.errors import ConfigError

__all__ = [
    "DEFAULT_FLAVOUR",
    "FLAVOURS",
    "BiasGrid",
    "check_flavour",
    "fake_quant_qdq",
    "flavour_of",
    "link_bias_grid",
    "round_half_even_ste",
    "set_flavour",
]

#: the flavours, default first
FLAVOURS = ("fixed-point", "qdq")
DEFAULT_FLAVOUR = "fixed-point"


def check_flavour(flavour: object, field: str = "flavour") -> str:
    """`flavour` if it names a flavour, else `ConfigError` naming `field`, the value and the choices."""
    if not isinstance(flavour, str) or flavour not in FLAVOURS:
        raise ConfigError(field, flavour, FLAVOURS,
                          "'qdq' computes what a standard ONNX QDQ graph computes; 'fixed-point' is QFA Eq. 5")
    return flavour


class _RoundEvenSTE(torch.autograd.Function):
    """Round half to even (torch.round, IEEE roundTiesToEven) forward, identity gradient (STE)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        return torch.round(t)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def round_half_even_ste(t: torch.Tensor) -> torch.Tensor:
    """`round(t)` with ties to even (ONNX QuantizeLinear's rounding) and a straight-through gradient."""
    return _RoundEvenSTE.apply(t)


def fake_quant_qdq(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, n: int, p: int) -> torch.Tensor:
    """QuantizeLinear then DequantizeLinear in float32 with an integer `zero_point`:
    `(clamp(round_even(x / scale) + zp, n, p) - zp) * scale`.

    Clamped before rounding (`n - zp`, `p - zp` are integers, so the forward is unchanged) so that the STE
    passes gradient exactly inside the range, as `fake_quant_affine` does for the fixed-point flavour.
    """
    xs = x.float() / scale.float()
    q = round_half_even_ste(torch.clamp(xs, n - zero_point, p - zero_point)) + zero_point
    return ((q - zero_point) * scale.float()).to(x.dtype)


def _act_quantizers(model: nn.Module) -> list[nn.Module]:
    from qcompile.quant.base import ActQuantizer

    return [m for m in model.modules() if isinstance(m, ActQuantizer)]


def set_flavour(model: nn.Module, flavour: str) -> nn.Module:
    """Put every activation quantizer of `model` in `flavour` (returns `model`); ConfigError for a quantizer
    that has no such flavour (only BatchQuant implements ``"qdq"``)."""
    check_flavour(flavour)
    for q in _act_quantizers(model):
        if not hasattr(q, "flavour"):
            if flavour != DEFAULT_FLAVOUR:
                raise ConfigError(f"flavour of {type(q).__name__}", flavour, (DEFAULT_FLAVOUR,),
                                  "the 'qdq' flavour is implemented by BatchQuant (act_quant='batchquant')")
            continue
        q.flavour = flavour
    return model


def flavour_of(model: nn.Module) -> str:
    """The flavour shared by all activation quantizers of `model` (the default when it has none);
    ConfigError when they disagree."""
    found = {getattr(q, "flavour", DEFAULT_FLAVOUR) for q in _act_quantizers(model)}
    if len(found) > 1:
        raise ConfigError("flavour", sorted(found), "one flavour for the whole model",
                          "set it with qcompile.quant.set_flavour(model, flavour)")
    return found.pop() if found else DEFAULT_FLAVOUR


class BiasGrid:
    """Forward hook putting a layer's folded bias on the int32 grid of the qdq flavour's integer program.

    A standard QDQ graph carries a conv's bias as int32 codes at scale `X_scale * W_scale[c]` (QLinearConv,
    ONNX Operators.md), and the requantization reads `float32(acc + bias)` (BatchQuant Eq. 6 with an integer
    zero point). With BN folded (`a_c`, `c_c`), one accumulator unit is `A_c = |w_scale_c x_scale a_c|` and the
    bias the integer program adds is `A_c floor(c_c / A_c + 1/2)` (`fold_batchquant_bias`), not the float `c_c`.
    For a 2-bit input and an 8-bit output one unit can be tens of output codes, so the hook adds
    `A_c floor(c_c / A_c + 1/2) - c_c` to the output of the module that ends the affine part (the BN, or the
    conv / linear without one): the fake-quant forward then computes what the QDQ graph computes.

    Active in eval mode only, once both quantizers are calibrated, in the qdq flavour, below 32 bits, and
    only where the layer's output is requantized (`link_bias_grid` checks the graph): training sees the
    float bias, whose batch statistics fold into no fixed grid.
    """

    def __init__(self, layer: nn.Module, bn: nn.Module | None, in_quant: nn.Module, out_quant: nn.Module):
        self.layer, self.bn, self.in_quant, self.out_quant = layer, bn, in_quant, out_quant

    def active(self) -> bool:
        qs = (self.in_quant, self.out_quant)
        return (not self.layer.training and getattr(self.layer, "weight_quant", None) is not None
                and self.layer.weight_quant.active_bits < 32
                and all(getattr(q, "flavour", DEFAULT_FLAVOUR) == "qdq" and q.active_bits < 32 and q.is_calibrated
                        and not q.calibrating for q in qs))

    @torch.no_grad()
    def shift(self) -> torch.Tensor:
        """Per-channel `A_c floor(c_c / A_c + 1/2) - c_c` (float64), as `fold_bn` + `eq6_fold` compute it."""
        from qcompile.passes.fold_bn import bn_affine

        layer = self.layer
        dtype = layer.weight.dtype
        _, w_scale = layer.weight_quant.codes(layer.weight)
        o = layer.weight.shape[0]
        sw = w_scale.to(torch.float64).reshape(-1).expand(o)
        bias = layer.bias.detach().to(torch.float64) if layer.bias is not None else torch.zeros(o, dtype=torch.float64)
        if self.bn is None:
            a, c = torch.ones(o, dtype=torch.float64), bias
        else:  # fold_bn stores the folded scale and bias in the weights' dtype: round them the same way
            a, b = bn_affine(self.bn, "BiasGrid")
            a, c = a.to(dtype).to(torch.float64), (a * bias + b).to(dtype).to(torch.float64)
        x_scale, _ = self.in_quant.qparams()
        acc_scale = (sw * x_scale * a).abs()
        acc_scale = torch.where(acc_scale == 0, sw * x_scale, acc_scale)  # a dead channel (eq6_fold)
        return acc_scale * torch.floor(c / acc_scale + 0.5) - c

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not self.active():
            return None
        d = self.shift().to(output.dtype)
        return output + d.reshape((1, -1) + (1,) * (output.ndim - 2))


def _requantized_by(node, gm) -> object | None:
    """The activation quantizer node that requantizes `node`'s output (through ReLU-like clamps and identities),
    or None when the output stays float (logits, a float island, a float activation)."""
    from qcompile.passes.elementwise import ELEMENTWISE
    from qcompile.passes.patterns import classify

    cur = node
    while len(cur.users) == 1:
        nxt = next(iter(cur.users))
        k = classify(nxt, gm)
        if k.kind == "quantizer":
            return nxt
        if k.kind == "identity" or (k.kind == "act" and ELEMENTWISE[k.params["act"]].clamp is not None):
            cur = nxt
            continue
        return None
    return None


def link_bias_grid(gm) -> int:
    """Install `BiasGrid` on every quantized conv / linear of a static fake-quant graph whose input comes from
    an activation quantizer and whose (BN-folded) output is requantized; returns how many. Idempotent; the hooks
    do nothing outside the qdq flavour, so a subnet may change flavour afterwards (`set_flavour`)."""
    from qcompile.passes.patterns import classify, get_module, source_through_shape_ops

    n = 0
    for node in gm.graph.nodes:
        kind = classify(node, gm).kind
        if kind not in ("conv", "linear") or not node.args:
            continue
        layer = get_module(gm, node.target)
        src = source_through_shape_ops(node.args[0], gm)
        if getattr(layer, "weight_quant", None) is None or classify(src, gm).kind != "quantizer":
            continue
        tail, bn = node, None
        if len(node.users) == 1 and classify(next(iter(node.users)), gm).kind == "bn":
            tail = next(iter(node.users))
            bn = get_module(gm, tail.target)
        out_q = _requantized_by(tail, gm)
        if out_q is None:
            continue
        hooked = bn if bn is not None else layer
        for key, hook in list(hooked._forward_hooks.items()):
            if isinstance(hook, BiasGrid):  # relinking replaces the hook (a deep copy carries it along)
                del hooked._forward_hooks[key]
        hooked.register_forward_hook(BiasGrid(layer, bn, get_module(gm, src.target), get_module(gm, out_q.target)))
        n += 1
    return n
