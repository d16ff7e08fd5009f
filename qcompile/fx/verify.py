"""Graph verifier: well-formed graph, every referenced module/attribute exists, shapes propagate."""

from __future__ import annotations

import torch
from torch import fx
from torch.fx.passes.shape_prop import ShapeProp

from qcompile.errors import QcompileError


class GraphVerificationError(QcompileError):
    """The graph violates an invariant; the message names the node."""


def _has_attr_path(mod: torch.nn.Module, target: str) -> bool:
    obj = mod
    for part in target.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def verify_graph(gm: fx.GraphModule, example: torch.Tensor | None = None) -> None:
    """`graph.lint()`, no dangling module or attribute references, no unused placeholders left dead,
    and (with `example`) shapes propagate through every node."""
    try:
        gm.graph.lint()
    except Exception as e:
        raise GraphVerificationError(f"graph.lint failed: {e}") from e
    for n in gm.graph.nodes:
        if n.op in ("call_module", "get_attr") and not _has_attr_path(gm, n.target):
            raise GraphVerificationError(f"node {n.name}: {n.op} target {n.target!r} does not exist in the module")
        if n.op == "call_module" and not isinstance(gm.get_submodule(n.target), torch.nn.Module):
            raise GraphVerificationError(f"node {n.name}: target {n.target!r} is not a module")
    outputs = [n for n in gm.graph.nodes if n.op == "output"]
    if len(outputs) != 1:
        raise GraphVerificationError(f"graph has {len(outputs)} output nodes, expected 1")
    if example is not None:
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(example)
        except Exception as e:
            raise GraphVerificationError(f"shape propagation failed: {type(e).__name__}: {e}") from e
