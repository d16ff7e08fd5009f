"""Tracing supernets to torch.fx with elastic operators (and quantizers) kept as leaf modules."""

from __future__ import annotations

from torch import fx, nn

from qcompile.errors import QcompileError
from qcompile.nn.elastic import ElasticModule, QuantPoint

_EXTRA_LEAVES: list[type] = []


def register_leaf(cls: type) -> type:
    """Make instances of `cls` leaf modules for `qcompile.trace` (quantizers register themselves)."""
    if cls not in _EXTRA_LEAVES:
        _EXTRA_LEAVES.append(cls)
    return cls


class SupernetTracer(fx.Tracer):
    """`fx.Tracer` that keeps elastic ops, quantization points and quantizers as leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (ElasticModule, QuantPoint, *_EXTRA_LEAVES)):
            return True
        from qcompile.quant import LSQ, ActQuantizer

        if isinstance(m, (ActQuantizer, LSQ)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(net: nn.Module) -> fx.GraphModule:
    """Trace `net` (a supernet or any module built from qcompile.nn) into an `fx.GraphModule`.

    Module paths are preserved, so `qcompile.set_active` works on the result as on `net`.
    """
    try:
        tracer = SupernetTracer()
        graph = tracer.trace(net)
    except Exception as e:  # surface tracing failures as one readable error
        raise QcompileError(f"trace: cannot trace {type(net).__name__}: {type(e).__name__}: {e}") from e
    for node in graph.nodes:
        node.type = None  # annotations such as torch.Tensor break GraphModule pickling in torch 2.13
    gm = fx.GraphModule(tracer.root, graph, class_name=type(net).__name__ + "Graph")
    if hasattr(net, "space_info"):
        gm.space_info = dict(net.space_info)
    return gm


def set_active(model: nn.Module, cfg) -> nn.Module:
    """Make `model` (supernet, its traced graph or its quantized graph) run subnet `cfg`.

    Calls `apply_config(cfg)` on every elastic leaf and quantizer; validates `cfg` against the model's
    space when the model knows it.
    """
    info = getattr(model, "space_info", None)
    if info is not None:
        from qcompile.spaces import from_dict

        from_dict(info).validate(cfg)
    for m in model.modules():
        fn = getattr(m, "apply_config", None)
        if fn is not None and callable(fn):
            fn(cfg)
        binding = getattr(m, "qc_binding", None)
        if binding is not None:  # quantizers: active bits from the policy (see insert_quantizers.PolicyBits)
            m.active_bits = binding(cfg)
    return model


def is_traced(model: nn.Module) -> bool:
    return isinstance(model, fx.GraphModule)


__all__ = ["SupernetTracer", "trace", "set_active", "register_leaf", "is_traced"]
