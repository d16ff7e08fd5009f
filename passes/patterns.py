"""Recognising the nodes of a fake-quant subnet (torch.fx) for the lowering passes.

`classify(node, gm)` maps each fx node to one `NodeKind` with the parameters the lowering needs,
whatever spelling the tracer produced (`nn.ReLU()` module, `F.relu`, `x.relu()`; `nn.AdaptiveAvgPool2d(1)`,
`torch.mean(x, (2, 3), keepdim=True)`, `x.mean((2, 3), keepdim=True)`; `torch.flatten(x, 1)`,
`x.flatten(1)`, `nn.Flatten()`).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from qcompile.passes.elementwise import classify_elementwise
from qcompile.quant.base import ActQuantizer

__all__ = [
    "NodeKind",
    "classify",
    "get_module",
    "is_act_quantizer",
    "set_module",
    "source_through_shape_ops",
]


@dataclass(frozen=True)
class NodeKind:
    """What a node computes: `kind` plus its parameters (`act` name, mean `keepdim`, ...)."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)


def get_module(gm: fx.GraphModule, target: str) -> nn.Module:
    """The submodule of `gm` a `call_module` target names."""
    return gm.get_submodule(target)


def set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path `target`."""
    parent_name, _, leaf = target.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, leaf, module)


def is_act_quantizer(module: nn.Module) -> bool:
    """An activation quantizer (BatchQuant or a baseline with the same interface, `qcompile.quant.base`)."""
    if isinstance(module, ActQuantizer):
        return True
    return all(hasattr(module, a) for a in ("qparams", "is_calibrated", "active_bits")) and not hasattr(
        module, "codes"
    )


def _is_hw_dims(dims: Any) -> bool:
    if isinstance(dims, int):
        return False
    try:
        d = sorted(int(v) % 4 if int(v) < 0 else int(v) for v in dims)
    except TypeError:
        return False
    return d == [2, 3]


def _mean_kind(args: tuple, kwargs: dict) -> NodeKind | None:
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    if dims is None or not _is_hw_dims(dims) or kwargs.get("dtype") is not None:
        return None
    return NodeKind("mean", {"keepdim": bool(keepdim)})


def _flatten_kind(args: tuple, kwargs: dict) -> NodeKind | None:
    start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
    end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
    if start == 1 and end == -1:
        return NodeKind("flatten")
    return None


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(x) for x in v)
    return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])


def _maxpool_kind(kernel_size: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: Any,
                  return_indices: Any) -> NodeKind:
    """`maxpool` with pairs `kernel_size`, `stride`, `padding`, `dilation`; `unknown` for ceil mode or indices."""
    if ceil_mode or return_indices:
        return NodeKind("unknown")
    k = _pair(kernel_size)
    return NodeKind("maxpool", {"kernel_size": k, "stride": _pair(stride) if stride not in (None, ()) else k,
                                "padding": _pair(padding), "dilation": _pair(dilation)})


def _maxpool_call(args: tuple, kwargs: dict) -> NodeKind:
    names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    p = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False}
    p.update(dict(zip(names, args)))
    p.update(kwargs)
    return _maxpool_kind(p["kernel_size"], p["stride"], p["padding"], p["dilation"], p["ceil_mode"],
                         p["return_indices"])


_MAXPOOL_FNS = tuple(f for f in (F.max_pool2d, getattr(F, "_max_pool2d", None), torch.max_pool2d) if f is not None)


def _is_global_pool(output_size: Any) -> bool:
    return output_size == 1 or output_size == (1, 1) or output_size == [1, 1]


def classify(node: fx.Node, gm: fx.GraphModule) -> NodeKind:
    """Classify one node of a fake-quant subnet (kind `"unknown"` if the lowering has no form for it)."""
    if node.op in ("placeholder", "output", "get_attr"):
        return NodeKind(node.op)
    if node.op == "call_module":
        mod = get_module(gm, node.target)
        from qcompile.nn.folded import AccConv2d, AccLinear

        if isinstance(mod, AccConv2d):
            return NodeKind("acc_conv")
        if isinstance(mod, AccLinear):
            return NodeKind("acc_linear")
        if is_act_quantizer(mod):
            return NodeKind("quantizer")
        if isinstance(mod, nn.Conv2d):
            return NodeKind("conv")
        if isinstance(mod, nn.Linear):
            return NodeKind("linear")
        if isinstance(mod, nn.BatchNorm2d):
            return NodeKind("bn")
        if isinstance(mod, (nn.Identity, nn.Dropout)):
            return NodeKind("identity")
        if isinstance(mod, nn.Flatten) and mod.start_dim == 1 and mod.end_dim == -1:
            return NodeKind("flatten")
        if isinstance(mod, nn.AdaptiveAvgPool2d) and _is_global_pool(mod.output_size):
            return NodeKind("mean", {"keepdim": True})
        if isinstance(mod, nn.MaxPool2d):
            return _maxpool_kind(mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode,
                                 mod.return_indices)
        act = classify_elementwise(node.op, node.target, mod)
        if act is not None:
            return NodeKind("act", {"act": act})
        return NodeKind("unknown")
    if node.op == "call_function":
        t = node.target
        if t in (operator.add, torch.add) and not node.kwargs:
            return NodeKind("add")
        if t in (operator.mul, torch.mul) and not node.kwargs:
            return NodeKind("mul")
        if t is torch.mean:
            k = _mean_kind(node.args, node.kwargs)
            return k if k is not None else NodeKind("unknown")
        if t is F.adaptive_avg_pool2d:
            size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
            return NodeKind("mean", {"keepdim": True}) if _is_global_pool(size) else NodeKind("unknown")
        if t in _MAXPOOL_FNS:
            return _maxpool_call(node.args, node.kwargs)
        if t is torch.flatten:
            k = _flatten_kind(node.args, node.kwargs)
            return k if k is not None else NodeKind("unknown")
        if t is F.dropout:
            return NodeKind("identity")
        act = classify_elementwise(node.op, t)
        if act is not None and len(node.args) == 1 and set(node.kwargs) <= {"inplace"}:
            return NodeKind("act", {"act": act})
        return NodeKind("unknown")
    if node.op == "call_method":
        m = str(node.target)
        if m == "mean":
            k = _mean_kind(node.args, node.kwargs)
            return k if k is not None else NodeKind("unknown")
        if m == "flatten":
            k = _flatten_kind(node.args, node.kwargs)
            return k if k is not None else NodeKind("unknown")
        if m == "contiguous":
            return NodeKind("identity")
        if m in ("add", "__add__") and len(node.args) == 2 and not node.kwargs:
            return NodeKind("add")
        if m in ("mul", "__mul__") and len(node.args) == 2 and not node.kwargs:
            return NodeKind("mul")
        act = classify_elementwise(node.op, m)
        if act is not None and len(node.args) == 1 and set(node.kwargs) <= {"inplace"}:
            return NodeKind("act", {"act": act})
        return NodeKind("unknown")
    return NodeKind("unknown")


def source_through_shape_ops(node: fx.Node, gm: fx.GraphModule) -> fx.Node:
    """Walk back from `node` through identity / flatten nodes to the node that produced the values."""
    cur = node
    while isinstance(cur, fx.Node) and cur.op != "placeholder":
        k = classify(cur, gm).kind
        if k not in ("identity", "flatten") or not cur.args or not isinstance(cur.args[0], fx.Node):
            break
        cur = cur.args[0]
    return cur
