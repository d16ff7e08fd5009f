"""`link_bias_grid`: the qdq flavour's int32 bias grid in the fake-quant forward of a static subnet.

A graph-level companion of `qcompile.quant.flavour` (it reads the graph's patterns and `fold_bn`'s BN affine,
so it lives with the passes): `slice_subnet` links every extracted subnet; the hooks do nothing outside the
qdq flavour.
"""

from __future__ import annotations

import torch
from torch import nn

from qcompile.passes.fold_bn import bn_affine
from qcompile.quant.flavour import DEFAULT_FLAVOUR


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
