"""`IntegerGraph`: an fx.GraphModule over `qcompile.ops`, with a readable form and save/load.

Backends (TVM, ONNX) read the graph node by node: `placeholder` (float input), `get_attr`
(constant tensors: weights, biases, multipliers, tables), `call_function` (an op of the op table
`qcompile.ops.table`: an integer op or a float-island op), `output`. `IntegerGraphBuilder` writes such graphs by
hand, which the backend tests use to exercise one op at a time.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import fx

from qcompile.errors import CheckpointError
from qcompile.ops.table import OPS, op_def
from qcompile.utils.io import atomic_write as _atomic_write

log = logging.getLogger(__name__)

_FORMAT_VERSION = 1


def op_name(target: Any) -> str:
    """Short printable name of a call_function target (`OpDef.display` for ops of the table)."""
    d = op_def(target)
    if d is not None:
        return d.display
    mod = getattr(target, "__module__", "") or ""
    return f"float.{target.__name__}" if mod else str(target)


class IntegerGraph(fx.GraphModule):
    """An integer program. `ig(x)` runs the exact reference (float in, float out)."""

    def __init__(self, root: torch.nn.Module | dict, graph: fx.Graph, meta: dict | None = None):
        super().__init__(root, graph, class_name="IntegerGraph")
        self.program_meta: dict = dict(meta or {})

    # -- readable form -------------------------------------------------------------------------
    def _describe_arg(self, a: Any) -> str:
        if isinstance(a, fx.Node):
            if a.op == "get_attr":
                t = _fetch_attr(self, a.target)
                return f"{a.target}:{str(t.dtype).replace('torch.', '')}{list(t.shape)}"
            return f"%{a.name}"
        if isinstance(a, float):
            return f"{a:.6g}"
        if isinstance(a, (list, tuple)):
            return "(" + ", ".join(self._describe_arg(x) for x in a) + ")"
        return repr(a)

    def program_text(self) -> str:
        """One line per op: name, op, operands, keyword parameters, output shape/dtype if known."""
        lines = []
        for n in self.graph.nodes:
            if n.op == "placeholder":
                lines.append(f"%{n.name} = input")
            elif n.op == "get_attr":
                continue
            elif n.op == "call_function":
                args = ", ".join(self._describe_arg(a) for a in n.args)
                kw = ", ".join(f"{k}={self._describe_arg(v)}" for k, v in n.kwargs.items())
                sig = ", ".join(s for s in (args, kw) if s)
                tm = n.meta.get("tensor_meta")
                shape = f"  : {str(tm.dtype).replace('torch.', '')}{list(tm.shape)}" if tm is not None else ""
                extra = n.meta.get("qcompile", {})
                note = f"  # {extra}" if extra else ""
                lines.append(f"%{n.name} = {op_name(n.target)}({sig}){shape}{note}")
            elif n.op == "output":
                lines.append(f"return {self._describe_arg(n.args[0])}")
            else:
                lines.append(f"%{n.name} = {n.op} {n.target}")
        return "\n".join(lines)

    def __str__(self) -> str:  # noqa: D105
        return self.program_text()

    def ops(self) -> list[str]:
        """The op names in program order (FileCheck-style tests read this)."""
        return [op_name(n.target) for n in self.graph.nodes if n.op == "call_function"]

    # -- persistence -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write `program.json` (graph, params, meta) and `constants.safetensors` into `path`, atomically.

        No pickle: the op set is closed, so the graph is stored as data and rebuilt on load.
        """
        from safetensors.torch import save as st_save

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        consts = {n.target: _fetch_attr(self, n.target).contiguous() for n in self.graph.nodes if n.op == "get_attr"}
        doc = {"format": _FORMAT_VERSION, "graph": _graph_to_json(self.graph), "meta": _jsonable(self.program_meta)}
        blob = st_save(consts) if consts else st_save({"__empty__": torch.zeros(0)})
        _atomic_write(path / "constants.safetensors", lambda f: f.write(blob))
        _atomic_write(path / "program.json", lambda f: f.write(json.dumps(doc, indent=1).encode()))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> IntegerGraph:
        from safetensors.torch import load as st_load

        path = Path(path)
        pj, pc = path / "program.json", path / "constants.safetensors"
        if not pj.exists() or not pc.exists():
            raise CheckpointError(f"{path}: no integer program here (expected program.json and constants.safetensors)")
        try:
            doc = json.loads(pj.read_text())
            consts = st_load(pc.read_bytes())
        except Exception as e:  # corrupt or truncated file
            raise CheckpointError(f"{path}: cannot be read ({type(e).__name__}: {e})") from e
        if doc.get("format") != _FORMAT_VERSION:
            raise CheckpointError(f"{pj}: unknown format {doc.get('format')!r}, expected {_FORMAT_VERSION}")
        root = torch.nn.Module()
        for k, v in consts.items():
            if k != "__empty__":
                _set_attr(root, k, v)
        return cls(root, _graph_from_json(doc["graph"]), doc.get("meta"))


_OP_TABLE: dict[str, Callable] = {d.key: d.fn for d in OPS}


def _arg_to_json(a: Any) -> Any:
    if isinstance(a, fx.Node):
        return {"node": a.name}
    if isinstance(a, tuple):
        return {"tuple": [_arg_to_json(x) for x in a]}
    if isinstance(a, list):
        return [_arg_to_json(x) for x in a]
    if isinstance(a, torch.dtype):
        return {"dtype": str(a).replace("torch.", "")}
    if isinstance(a, (int, float, str, bool)) or a is None:
        return a
    raise CheckpointError(f"cannot serialise argument {a!r} of type {type(a).__name__}")


def _arg_from_json(a: Any, env: dict[str, fx.Node]) -> Any:
    if isinstance(a, dict):
        if "node" in a:
            return env[a["node"]]
        if "tuple" in a:
            return tuple(_arg_from_json(x, env) for x in a["tuple"])
        if "dtype" in a:
            return getattr(torch, a["dtype"])
    if isinstance(a, list):
        return [_arg_from_json(x, env) for x in a]
    return a


def _graph_to_json(graph: fx.Graph) -> list[dict]:
    out = []
    for n in graph.nodes:
        rec: dict[str, Any] = {"op": n.op, "name": n.name}
        if n.op == "call_function":
            d = op_def(n.target)
            if d is None:
                raise CheckpointError(f"node {n.name}: op {n.target} is not an integer or float-island op")
            rec["target"] = d.key
        elif n.op in ("get_attr", "placeholder"):
            rec["target"] = n.target
        elif n.op != "output":
            raise CheckpointError(f"node {n.name}: {n.op} nodes cannot be stored in an IntegerGraph")
        rec["args"] = _arg_to_json(tuple(n.args))
        rec["kwargs"] = {k: _arg_to_json(v) for k, v in n.kwargs.items()}
        out.append(rec)
    return out


def _graph_from_json(recs: list[dict]) -> fx.Graph:
    g = fx.Graph()
    env: dict[str, fx.Node] = {}
    for rec in recs:
        args = _arg_from_json(rec["args"], env)
        kwargs = {k: _arg_from_json(v, env) for k, v in rec["kwargs"].items()}
        if rec["op"] == "placeholder":
            node = g.placeholder(rec["target"])
        elif rec["op"] == "get_attr":
            node = g.get_attr(rec["target"])
        elif rec["op"] == "call_function":
            if rec["target"] not in _OP_TABLE:
                raise CheckpointError(f"unknown op {rec['target']!r} in stored program")
            node = g.call_function(_OP_TABLE[rec["target"]], args, kwargs)
        else:
            node = g.output(args[0])
        node.name = rec["name"]
        env[rec["name"]] = node
    g.lint()
    return g


def _set_attr(root: torch.nn.Module, target: str, value: torch.Tensor) -> None:
    *path, leaf = target.split(".")
    mod = root
    for p in path:
        if not hasattr(mod, p):
            mod.add_module(p, torch.nn.Module())
        mod = getattr(mod, p)
    mod.register_buffer(leaf, value)


def _fetch_attr(mod: torch.nn.Module, target: str) -> torch.Tensor:
    obj: Any = mod
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return obj
    return repr(obj)


class IntegerGraphBuilder:
    """Write an IntegerGraph by hand: `b.input()`, `b.const(t)`, `b.call(op, *args, **kw)`, `b.build(out)`."""

    def __init__(self) -> None:
        self.graph = fx.Graph()
        self.root = torch.nn.Module()
        self._n = 0

    def input(self, name: str = "x") -> fx.Node:
        return self.graph.placeholder(name)

    def const(self, t: torch.Tensor, name: str | None = None) -> fx.Node:
        name = name or f"c{self._n}"
        self._n += 1
        self.root.register_buffer(name, t.clone())
        return self.graph.get_attr(name)

    def call(self, op: Callable, *args: Any, **kwargs: Any) -> fx.Node:
        return self.graph.call_function(op, tuple(args), kwargs)

    def build(self, out: fx.Node, meta: dict | None = None) -> IntegerGraph:
        self.graph.output(out)
        self.graph.lint()
        return IntegerGraph(self.root, self.graph, meta)
