"""Pass `float-copy`: the float twin of a fake-quant subnet, every quantizer removed.

Activation quantizer nodes are bypassed and erased, weight quantizers detached, so the result computes
the same network in float32 (the model the peer runtimes of `qcompile bench` run: the same work as the
quantized subnet, not its quantized function). The input graph is not modified.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import fx

from qcompile.passes.infra import Pass, PassResult, register
from qcompile.quant import ActQuantizer

__all__ = ["FloatCopy", "float_copy"]


def float_copy(sub: fx.GraphModule) -> fx.GraphModule:
    """A float copy of `sub` in eval mode: no activation quantizer nodes, every `weight_quant` set to None."""
    return FloatCopy().run(sub).graph_module


@register
@dataclass(frozen=True)
class FloatCopy(Pass):
    """Pass form of `float_copy` (no options); the result is a new GraphModule."""

    name = "float-copy"

    def run(self, gm: fx.GraphModule) -> PassResult:
        f = copy.deepcopy(gm)
        modified = False
        for node in list(f.graph.nodes):
            if node.op == "call_module" and isinstance(f.get_submodule(node.target), ActQuantizer):
                node.replace_all_uses_with(node.args[0])
                f.graph.erase_node(node)
                modified = True
        for m in f.modules():
            if getattr(m, "weight_quant", None) is not None:
                m.weight_quant = None
                modified = True
        f.delete_all_unused_submodules()
        f.recompile()
        return PassResult(f.eval(), modified)
