"""IntegerGraph -> Relax IRModule (BlockBuilder), one PrimFunc per op or fused group.

The emitter walks the fx graph in program order. A `conv2d` (or `linear`) whose only user is a
`requantize` becomes one "conv2d_requant" ("linear_requant") group. A conv2d group also takes the chain of
integer elementwise ops that follow it while each is the only user of the one before (`FUSED_EPILOGUE_OPS`:
a lookup-table activation, a residual add reading the other operand as its skip tensor; a rescale on request): they run
on the code in the kernel's epilogue (`schedules.requant.EpilogueStep`), and the group is emitted at the
chain's last node. A float island that is a chain `dequantize -> float ops -> quantize` (each step the only
user of the one before; squeeze-excite's pool, two 1x1 convs and activations), with the gate multiply that
reads it when there is one, is one "float_island" kernel (`kernels.float_island`), emitted at its last node.
For each group it builds an `OpCall` and asks `select_strategy` (schedule engineers' kernels) first;
otherwise it emits the naive
TE kernel from `kernels.py` with `emit_te`, names the PrimFunc `<op>_<node>` and marks it with the
attribute `qcompile.schedule = "default"` so the pipeline's schedule phase knows it may schedule it.
PrimFuncs a strategy emits carry no such mark and are left as the strategy scheduled them.

Constants (weights, biases, multipliers, shifts, tables) are bound as **Relax constants**: they are
embedded in the executable (its constant pool, inside the exported shared library), the Relax
`main` takes only the float input, and compile-time passes (FoldConstant, weight layout transforms
of a strategy) can see and rewrite them.

Semantics: docs/integer_semantics.md; ground truth `qcompile.ops.reference`.
"""

from __future__ import annotations

import functools
import logging
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx

from qcompile.backends.tvm import kernels as K
from qcompile.backends.tvm.schedules.conv import const_array
from qcompile.backends.tvm.schedules.requant import EpilogueStep
from qcompile.backends.tvm.strategy import OpCall, select_strategy
from qcompile.errors import LoweringError
from qcompile.ops import reference as R
from qcompile.ops.graph import IntegerGraph, _fetch_attr, op_name
from qcompile.ops.meta import program_meta
from qcompile.ops.table import OPS, OpDef, is_integer_op, op_def

log = logging.getLogger(__name__)

__all__ = ["EmitResult", "KernelRecord", "emit_relax", "plan_kernels", "kernel_workload", "graph_input_shape",
           "handled_ops", "SCHEDULE_ATTR", "QUANTIZE_ATTR", "FUSED_EPILOGUE_OPS",
           "FUSE_FLOAT_ISLANDS"]

#: PrimFunc attribute marking naive kernels the default schedule phase may schedule
SCHEDULE_ATTR = "qcompile.schedule"
#: PrimFunc attribute of a `quantize` kernel: its `[inv_scale, offset, qmax]`, so that the native driver can rebuild
#: the input's quantize with its finiteness check folded in (`driver.native_driver`, `kernels.quantize_checked`)
QUANTIZE_ATTR = "qcompile.quantize"


@dataclass(frozen=True)
class KernelRecord:
    """One emitted kernel: its PrimFunc name(s), the op/group, the fx node(s), who emitted it."""

    op: str
    nodes: tuple[str, ...]
    primfuncs: tuple[str, ...]
    strategy: str  # "naive" or the Strategy's name
    #: what decides the kernel's speed (op, strategy, mode, shapes, stride, groups): `kernel_workload`
    workload: dict = field(default_factory=dict, compare=False, hash=False)


class _Shaped:
    """Shape and dtype of a value in a dry emission (`plan_kernels`): no TVM expression is built. A constant
    keeps its numpy `value`, so weight-dependent choices are described as the real emission describes them."""

    def __init__(self, shape: tuple[int, ...], dtype: str, value: np.ndarray | None = None) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.dtype = str(dtype)
        self.value = value


_WORKLOAD_PARAMS = ("stride", "padding", "dilation", "groups")


def kernel_workload(op: str, strategy: Any, shapes: tuple[tuple[int, ...], ...], params: dict[str, Any],
                    call: OpCall | None, weight: np.ndarray | None) -> dict[str, Any]:
    """The latency-relevant description of one emitted kernel (nn-Meter's "kernel" unit, Zhang et al. 2021):
    op, strategy, the strategy's kernel kind and mode (`Strategy.describe`, e.g. the x86 GEMM intrinsic, which
    on AVX2 depends on the bits), operand shapes, stride, padding, dilation, groups. Both `emit_relax` and the
    dry `plan_kernels` call it, so the kernels a config plans and the kernels a lowering emits cannot drift."""
    w: dict[str, Any] = {"op": op, "strategy": strategy if isinstance(strategy, str) else strategy.name,
                         "shapes": [list(s) for s in shapes]}
    for k in _WORKLOAD_PARAMS:
        if k in params:
            v = params[k]
            w[k] = list(v) if isinstance(v, tuple) else v
    w.setdefault("groups", 1)
    if params.get("post"):  # the fused epilogue changes the kernel's cost: part of its identity
        w["epilogue"] = [st.op for st in params["post"]]
    if params.get("island"):  # the steps of a fused float island
        w["island"] = list(params["island"])
    if "out_shape" in params:
        w["out_shape"] = list(params["out_shape"])
    describe = getattr(strategy, "describe", None)
    if describe is not None and call is not None:
        w.update(describe(call, weight))
    return w


@dataclass
class EmitResult:
    mod: Any  # tvm.IRModule
    input_shape: tuple[int, ...]
    input_dtype: str
    output_shape: tuple[int, ...]
    output_dtype: str
    kernels: list[KernelRecord] = field(default_factory=list)


def graph_input_shape(ig: IntegerGraph, input_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    """The static input shape: the argument, else the graph's `ProgramMeta` (`qcompile.ops.meta.program_meta`)."""
    shape = program_meta(ig, input_shape).input_shape
    if shape is None:
        raise LoweringError(
            "input", "the IntegerGraph carries no input shape",
            "pass input_shape=(N, C, H, W) or set ig.program_meta['input_shape']",
        )
    return shape


def _shape(e: Any) -> tuple[int, ...]:
    if isinstance(e, _Shaped):
        return e.shape
    return tuple(int(v) for v in e.ty.shape.values)


def _dtype(e: Any) -> str:
    if isinstance(e, _Shaped):
        return e.dtype
    return str(e.ty.dtype)


def _node_shaped(node: fx.Node) -> _Shaped:
    tm = node.meta.get("tensor_meta")
    if tm is None:
        raise LoweringError(f"node {node.name}", "no tensor_meta (shape) on the node", "run ShapeProp on the graph")
    return _Shaped(tuple(tm.shape), str(tm.dtype).replace("torch.", ""))


#: float-island activations of the op table that `kernels.float_unary` computes
_FLOAT_UNARY: dict[Callable, str] = {d.fn: d.name for d in OPS if d.elementwise and d.name in K.FLOAT_UNARY}

#: integer op -> its naive TE kernel (`flatten` is a reshape, `requantize` after a conv/linear is fused)
_INT_KERNELS: dict[Callable, Callable] = {
    R.quantize: K.quantize,
    R.dequantize: K.dequantize,
    R.conv2d: K.conv2d,
    R.linear: K.linear,
    R.requantize: K.requantize,
    R.dequantize_acc: K.dequantize_acc,
    R.rescale: K.rescale,
    R.add: K.add,
    R.mean: K.mean,
    R.mul: K.mul,
    R.lut: K.lut,
    R.max_pool2d: K.max_pool2d,
}

#: integer elementwise ops a conv2d + requantize group takes into its epilogue (`schedules.requant.apply_post`):
#: lookup-table activations and the residual add; an empty set emits each of them as its own kernel. `R.rescale`
#: is supported too but not fused by default: in the search spaces a rescale is the *next* block's input
#: quantizer, so fusing it would put one block's kernel in another's, which the per-block latency memo
#: (`search/latency/workloads.py`) keys by each block's own choices.
FUSED_EPILOGUE_OPS: frozenset[Callable] = frozenset({R.lut, R.add})

#: whether a `dequantize -> float ops -> quantize (-> gate mul)` chain is one kernel (`_Emitter.float_island`)
FUSE_FLOAT_ISLANDS = True

#: the qdq flavour's float32 epilogues (emitted by `Emitter.qdq_op`)
_QDQ_KERNELS: dict[Callable, Callable] = {
    R.quantize_linear: K.quantize_linear,
    R.requantize_float: K.requantize_float,
    R.rescale_float: K.rescale_float,
    R.add_float: K.add_float,
    R.mean_float: K.mean_float,
    R.mul_float: K.mul_float,
}


def _op(node: fx.Node) -> OpDef:
    """The table entry of a node's op; an op outside `qcompile.ops.table` is a `LoweringError`."""
    d = op_def(node.target)
    if d is None:
        raise LoweringError(f"node {node.name}", f"op {op_name(node.target)} is not in the op table",
                            "use an op of qcompile.ops.table.OPS (docs/integer_semantics.md)")
    return d


def _as_static(v: Any) -> Any:
    """Static parameter as plain Python (tuples stay tuples; 0-d tensors become numbers)."""
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else tuple(v.tolist())
    if isinstance(v, list):
        return tuple(v)
    return v


class _Emitter:
    def __init__(self, ig: IntegerGraph, target: Any, input_shape: tuple[int, ...], input_dtype: str,
                 use_strategies: bool, dry: bool = False) -> None:
        self.dry = dry
        if dry:
            self.relax: Any = None
            self.bb: Any = None
        else:
            from tvm import relax

            self.relax = relax
            self.bb = relax.BlockBuilder()
        self.ig = ig
        self.target = target
        self.input_shape = input_shape
        self.input_dtype = input_dtype
        self.use_strategies = use_strategies
        self.env: dict[fx.Node, Any] = {}
        self.kernels: list[KernelRecord] = []
        self.fused: set[fx.Node] = set()
        #: last node of an epilogue chain -> (the requantize, the chain's ops after it)
        self.chains: dict[fx.Node, tuple[fx.Node, tuple[fx.Node, ...]]] = {}
        self.claimed: set[fx.Node] = set()  # the ops of every chain in `chains` (kept as chains are found)
        self.deferred: set[fx.Node] = set()  # requantize and inner chain nodes: emitted with the chain's end
        self.islands: dict[fx.Node, tuple[fx.Node, ...]] = {}  # last node -> a float island fused in one kernel
        self.call_log: list | None = None

    # -- operands --------------------------------------------------------------------------------
    def const_value(self, node: fx.Node) -> np.ndarray:
        t = _fetch_attr(self.ig, node.target)
        return t.detach().contiguous().numpy()

    def operand(self, a: Any, where: str, dtype: str | None = None, length: int | None = None) -> Any:
        """A relax expression for a tensor operand (fx node, constant, or a scalar broadcast to `length`)."""
        relax = self.relax
        if isinstance(a, fx.Node):
            if a.op == "get_attr":
                v = self.const_value(a)
                if dtype is not None:
                    v = v.astype(dtype)
                if self.dry:
                    return _Shaped(v.shape, str(v.dtype), v)
                # relax.const narrows float64 arrays to float32 unless told the dtype
                return relax.const(v, str(v.dtype))
            if a not in self.env:
                raise LoweringError(f"node {where}", f"operand {a.name} has no value (not emitted)",
                                    "check the graph order")
            return self.env[a]
        if isinstance(a, (int, float)) and length is not None and dtype is not None:
            if self.dry:
                return _Shaped((length,), dtype)
            return relax.const(np.full((length,), a, dtype=dtype), dtype)
        raise LoweringError(f"node {where}", f"operand {a!r} is not a tensor", "pass a get_attr constant or a node")

    def offset_operand(self, a: dict[str, Any], where: str, length: int) -> Any:
        """requantize's int64 per-channel `offset`; absent, the rounding term `2^(s-1)` from the shifts."""
        if self.dry:
            return _Shaped((length,), "int64")
        if a.get("offset") is not None:
            return self.operand(a["offset"], where, "int64", length)
        shift = a["shift"]
        if isinstance(shift, fx.Node) and shift.op == "get_attr":
            s = np.broadcast_to(self.const_value(shift).astype(np.int64), (length,))
        elif isinstance(shift, int):
            s = np.full((length,), shift, dtype=np.int64)
        else:
            raise LoweringError(f"node {where}", "requantize shift is computed at run time", "pass it as a constant")
        return self.relax.const(np.left_shift(np.int64(1), s - 1), "int64")

    def _new_funcs(self, before: set[str]) -> list[str]:
        mod = self.bb.get()
        return [gv.name_hint for gv in mod.get_global_vars() if gv.name_hint not in before and gv.name_hint != "main"]

    def _funcs(self) -> set[str]:
        return {gv.name_hint for gv in self.bb.get().get_global_vars()}

    def emit_group(self, op: str, nodes: tuple[fx.Node, ...], fn: Callable, args: list[Any], static: dict[str, Any],
                   call_params: dict[str, Any] | None = None, schedule: bool = True,
                   described: dict[str, Any] | None = None) -> Any:
        """Emit one kernel: a strategy if one applies, else `fn` through emit_te (marked for default scheduling
        unless `schedule` is False: it then runs its stages as written). `described`: parameters that only
        describe the kernel in its workload (`kernel_workload`), not passed to `fn`."""
        relax = self.relax
        name = f"{op}_{nodes[-1].name}"
        shapes = tuple(_shape(a) for a in args)
        node_names = tuple(n.name for n in nodes)
        if self.dry:  # plan_kernels: the same choice as below, no TVM expression
            strat = None
            call = None
            if self.use_strategies and call_params is not None:
                call = OpCall(op=op, params={**call_params, "node": nodes[-1].name}, target=self.target)
                strat = select_strategy(call)
            w = args[1] if len(args) > 1 else None
            wl = kernel_workload(op, strat or "naive", shapes, {**static, **(call_params or {}), **(described or {})},
                                 call if strat is not None else None, getattr(w, "value", None))
            self.kernels.append(KernelRecord(op, node_names, (), wl["strategy"], wl))
            return _node_shaped(nodes[-1])
        before = self._funcs()
        if self.use_strategies and call_params is not None:
            call = OpCall(op=op, params={**call_params, "node": nodes[-1].name}, target=self.target)
            w = args[1] if len(args) > 1 else None
            # the layer's constant weights: `describe` and the tuner's call log see what the kernel is built from
            wnp = const_array(w)
            if self.call_log is not None:
                self.call_log.append((call, wnp))
            strat = select_strategy(call)
            if strat is not None:
                out = strat.emit(self.bb, call, args)
                if not isinstance(out, relax.Var):
                    out = self.bb.emit(out)
                new = self._new_funcs(before)
                self._unique_symbols(new)
                wl = kernel_workload(op, strat, shapes, {**static, **call_params}, call, wnp)
                self.kernels.append(KernelRecord(op, node_names, tuple(new), strat.name, wl))
                log.debug("%s: strategy %s", name, strat.name)
                return out
        out = self.bb.emit_te(fn, *args, **static, primfunc_name_hint=name)
        new = self._new_funcs(before)
        mod = self.bb.get()
        for gname in new if schedule else ():
            gv = mod.get_global_var(gname)
            self.bb.update_func(gv, mod[gv].with_attr(SCHEDULE_ATTR, "default"))
        wl = kernel_workload(op, "naive", shapes, {**static, **(call_params or {}), **(described or {})}, None, None)
        self.kernels.append(KernelRecord(op, node_names, tuple(new), "naive", wl))
        return out

    def _unique_symbols(self, names: list[str]) -> None:
        """Make each new PrimFunc's global_symbol its (unique) GlobalVar name: two calls of a strategy
        that name kernels by shape would otherwise export one symbol twice."""
        from tvm import tirx

        mod = self.bb.get()
        for gname in names:
            gv = mod.get_global_var(gname)
            f = mod[gv]
            if isinstance(f, tirx.PrimFunc) and f.attrs is not None and "global_symbol" in f.attrs \
                    and str(f.attrs["global_symbol"]) != gname:
                self.bb.update_func(gv, f.with_attr("global_symbol", gname))

    # -- ops ---------------------------------------------------------------------------------------
    def bind(self, node: fx.Node) -> dict[str, Any]:
        return _op(node).bind(node.args, node.kwargs, f"node {node.name}")

    def integer_op(self, node: fx.Node) -> Any:
        f = node.target
        a = self.bind(node)
        tensor_names = _op(node).operands
        static = {k: _as_static(v) for k, v in a.items() if k not in tensor_names}
        for k, v in static.items():
            if isinstance(v, fx.Node):
                if v.op != "get_attr":
                    raise LoweringError(f"node {node.name}", f"parameter {k} is computed at run time",
                                        "pass it as a constant")
                static[k] = _as_static(torch.from_numpy(self.const_value(v)))
        if f is R.flatten:
            x = self.operand(a["x"], node.name)
            shp = _shape(x)
            new_shape = (shp[0], int(np.prod(shp[1:], dtype=np.int64)))
            if self.dry:
                return _Shaped(new_shape, _dtype(x))
            return self.bb.emit(self.relax.op.reshape(x, new_shape))
        if f in _QDQ_KERNELS:
            return self.qdq_op(node, f, a, static)
        if f is R.requantize:
            acc_node = a["acc"]
            if acc_node in self.fused:
                return self.fused_requant(node, acc_node, a, static)
            acc = self.operand(acc_node, node.name)
            c = _shape(acc)[1]
            args = [acc, self.operand(a["multiplier"], node.name, "int32", c),
                    self.operand(a["shift"], node.name, "int32", c), self.offset_operand(a, node.name, c)]
            params = {"shapes": (_shape(acc),), **static}
            return self.emit_group("requantize", (node,), K.requantize, args, static, params)
        args = []
        for k in tensor_names:
            length = None
            if k in ("bias",) and isinstance(a[k], (int, float)):
                length = int(self.const_value(a["w"]).shape[0]) if isinstance(a["w"], fx.Node) else None
            args.append(self.operand(a[k], node.name, "int32" if k == "bias" else None, length))
        if f is R.conv2d:
            static = self._conv_static(static, node)
        if f is R.dequantize_acc:
            args[1] = self.operand(a["scale"], node.name, "float64", _shape(args[0])[1])
        params = {"shapes": tuple(_shape(x) for x in args), **static}
        if f in (R.conv2d, R.linear):
            params.update(self._mm_params(f, args, static))
            params["x_max"] = self._code_max(a["x"])
        out = self.emit_group(f.__name__, (node,), _INT_KERNELS[f], args, static, params)
        if f is R.quantize and not self.dry:
            consts = [float(static["inv_scale"]), float(static["offset"]), float(static["qmax"])]
            mod = self.bb.get()
            for gname in self.kernels[-1].primfuncs:
                gv = mod.get_global_var(gname)
                self.bb.update_func(gv, mod[gv].with_attr(QUANTIZE_ATTR, consts))
        return out

    def qdq_op(self, node: fx.Node, f: Callable, a: dict[str, Any], static: dict[str, Any]) -> Any:
        """A float32 epilogue of the qdq flavour. Its float32 constants (QLinearConv's `x_scale * w_scale /
        y_scale`, QLinearAdd's ratios and offset, ...) are computed here with numpy float32 in the reference's
        order, so the kernel only applies them."""
        f32 = np.float32
        lo_hi = {"lo": int(static.get("lo", 0)), "hi": int(static.get("hi", static.get("qmax", 255)))}
        if f is R.quantize_linear:
            args = [self.operand(a["x"], node.name)]
            kw = {"scale": float(f32(static["scale"])), "zero_point": int(static["zero_point"]),
                  "qmax": int(static["qmax"])}
        elif f is R.requantize_float:
            acc = self.operand(a["acc"], node.name)
            c = _shape(acc)[1]
            w = np.broadcast_to(self.const_value(a["w_scale"]).astype(f32).reshape(-1), (c,))
            scale = (f32(static["x_scale"]) * w).astype(f32) / f32(static["y_scale"])
            args = [acc, self.relax.const(scale.astype(f32), "float32") if not self.dry else _Shaped((c,), "float32")]
            kw = {"zero_point": int(static["zero_point"]), **lo_hi}
        elif f is R.rescale_float:
            args = [self.operand(a["x"], node.name)]
            kw = {k: static[k] for k in ("x_scale", "x_zero_point", "y_scale", "zero_point")} | lo_hi
        elif f is R.add_float:
            args = [self.operand(a["a"], node.name), self.operand(a["b"], node.name)]
            ra = f32(static["a_scale"]) / f32(static["y_scale"])
            rb = f32(static["b_scale"]) / f32(static["y_scale"])
            k = f32(static["zero_point"]) - (ra * f32(static["a_zero_point"]) + rb * f32(static["b_zero_point"]))
            kw = {"ra": float(ra), "rb": float(rb), "k": float(k), **lo_hi}
        elif f is R.mean_float:
            x = self.operand(a["x"], node.name)
            hw = _shape(x)[2] * _shape(x)[3]
            scale = f32(static["x_scale"]) / (f32(static["y_scale"]) * f32(hw))
            args = [x]
            kw = {"x_zero_point": int(static["x_zero_point"]), "scale": float(scale),
                  "zero_point": int(static["zero_point"]), **lo_hi}
        else:  # mul_float
            args = [self.operand(a["x"], node.name), self.operand(a["g"], node.name)]
            r = (f32(static["x_scale"]) * f32(static["g_scale"])) / f32(static["y_scale"])
            kw = {"x_zero_point": int(static["x_zero_point"]), "g_zero_point": int(static["g_zero_point"]),
                  "r": float(r), "zero_point": int(static["zero_point"]), **lo_hi}
        return self.emit_group(f.__name__, (node,), _QDQ_KERNELS[f], args, kw)

    def _conv_static(self, static: dict[str, Any], node: fx.Node) -> dict[str, Any]:
        out = dict(static)
        for k in ("stride", "padding", "dilation"):
            v = out[k]
            out[k] = (int(v), int(v)) if isinstance(v, int) else tuple(int(t) for t in v)
        if isinstance(static["padding"], str):
            raise LoweringError(f"node {node.name}", f"padding={static['padding']!r}", "use explicit integer padding")
        out["groups"] = int(out["groups"])
        out["pad_value"] = int(out["pad_value"])
        return out

    def _code_max(self, x: Any) -> int:
        """Largest code the producer of `x` can emit (its `hi` clamp, `qmax`, or table maximum); 255 if unknown.

        Strategies use it to pick a faster int8 dot product when sub-8-bit codes cannot saturate int16.
        """
        d = op_def(x.target) if isinstance(x, fx.Node) and x.op == "call_function" else None
        if d is None or d.kind != "integer":
            return 255
        if d.out_dtype == "same":  # flatten, max_pool2d: the producer's codes, rearranged
            return self._code_max(x.args[0] if x.args else x.kwargs.get(d.operands[0]))
        a = self.bind(x)
        if "hi" in d.params:  # requantize, rescale, add, mean, mul: their clamp
            return int(min(255, a["hi"]))
        if "qmax" in d.params:
            return int(min(255, a["qmax"]))
        if "table" in d.operands and isinstance(a["table"], fx.Node):
            return int(self.const_value(a["table"]).max())
        return 255

    def _mm_params(self, f: Callable, args: list[Any], static: dict[str, Any]) -> dict[str, Any]:
        xs, ws = _shape(args[0]), _shape(args[1])
        if f is R.conv2d:
            oh, ow = K.conv_out_hw(xs[2:], ws[2:], static["stride"], static["padding"], static["dilation"])
            return {"x_shape": xs, "w_shape": ws, "out_shape": (xs[0], ws[0], oh, ow)}
        return {"x_shape": xs, "w_shape": ws, "out_shape": (xs[0], ws[0])}

    def _static_int(self, v: Any, node: fx.Node) -> int:
        """A static integer parameter (a Python number, a 0-d tensor or a `get_attr` constant)."""
        if isinstance(v, fx.Node):
            if v.op != "get_attr":
                raise LoweringError(f"node {node.name}", "a static parameter is computed at run time",
                                    "pass it as a constant")
            v = self.const_value(v)
        return int(np.asarray(_as_static(v) if not isinstance(v, np.ndarray) else v).reshape(-1)[0])

    def _post(self, rq: fx.Node, chain: tuple[fx.Node, ...]) -> tuple[tuple[EpilogueStep, ...], list[Any]]:
        """The epilogue steps of `chain` (ops after `rq`) and their tensor operands (tables, skip tensors)."""
        steps: list[EpilogueStep] = []
        operands: list[Any] = []
        prev = rq
        for n in chain:
            a = self.bind(n)
            if n.target is R.lut:
                table = self.const_value(a["table"]).reshape(-1).astype(np.uint8)
                steps.append(EpilogueStep("lut", (int(table.size),)))
                operands.append(_Shaped(table.shape, "uint8") if self.dry else self.relax.const(table, "uint8"))
            elif n.target is R.rescale:
                steps.append(EpilogueStep("rescale", tuple(self._static_int(a[k], n) for k in
                                                           ("multiplier", "offset", "shift", "lo", "hi"))))
            else:  # add: the conv's code is `a` or `b`, the other operand the skip tensor
                mine, other = ("a", "b") if a["a"] is prev else ("b", "a")
                steps.append(EpilogueStep("add", tuple(self._static_int(a[k], n) for k in (
                    f"multiplier_{mine}", f"multiplier_{other}", "offset", "shift", "lo", "hi"))))
                operands.append(self.operand(a[other], n.name))
            prev = n
        return tuple(steps), operands

    def fused_requant(self, rq: fx.Node, mm: fx.Node, a: dict[str, Any], static_rq: dict[str, Any],
                      chain: tuple[fx.Node, ...] = ()) -> Any:
        f = mm.target
        am = self.bind(mm)
        static = {k: _as_static(v) for k, v in am.items() if k not in _op(mm).operands}
        x = self.operand(am["x"], mm.name)
        w = self.operand(am["w"], mm.name)
        o = _shape(w)[0]
        bias = self.operand(am["bias"], mm.name, "int32", o)
        mult = self.operand(a["multiplier"], rq.name, "int32", o)
        shift = self.operand(a["shift"], rq.name, "int32", o)
        args = [x, w, bias, mult, shift, self.offset_operand(a, rq.name, o)]
        if f is R.conv2d:
            static = self._conv_static(static, mm)
        static.update(lo=int(static_rq["lo"]), hi=int(static_rq["hi"]))
        params = {**static, **self._mm_params(f, args, static), "x_max": self._code_max(am["x"])}
        op = "conv2d_requant" if f is R.conv2d else "linear_requant"
        fn = K.conv2d_requant if f is R.conv2d else K.linear_requant
        if chain:
            post, post_operands = self._post(rq, chain)
            args += post_operands
            params["post"] = post
            fn = functools.partial(K.conv2d_requant, post=post)  # emit_te passes only TVM-typed keywords
        return self.emit_group(op, (mm, rq, *chain), fn, args, static, params)

    def float_op(self, node: fx.Node) -> Any:
        handler = _FLOAT_HANDLERS.get(node.target)
        if handler is not None:
            return handler(self, node, _op(node).bind(node.args, node.kwargs, f"node {node.name}"))
        if node.target in _FLOAT_UNARY:
            p = _op(node).bind(node.args, node.kwargs, f"node {node.name}")
            kind = _FLOAT_UNARY[node.target]
            return self.emit_group(f"float_{kind}", (node,), K.float_unary, [self.float_operand(p["input"], node)],
                                   {"kind": kind})
        raise LoweringError(f"node {node.name}", f"float op {op_name(node.target)} cannot be lowered",
                            "use an op listed in docs/integer_semantics.md 'Float islands'")

    def _float_conv2d(self, node: fx.Node, p: dict[str, Any]) -> Any:
        x, w = self.float_operand(p["input"], node), self.float_operand(p["weight"], node)
        b = p["bias"]
        static = {"stride": p["stride"], "padding": p["padding"], "dilation": p["dilation"],
                  "groups": int(p["groups"])}
        if isinstance(static["padding"], str):
            raise LoweringError(f"node {node.name}", f"padding={static['padding']!r}", "use integer padding")
        targs = [x, w] + ([self.float_operand(b, node)] if b is not None else [])
        fn = K.float_conv2d if b is not None else (lambda x, w, **s: K.float_conv2d(x, w, None, **s))
        return self.emit_group("float_conv2d", (node,), fn, targs, static)

    def _float_linear(self, node: fx.Node, p: dict[str, Any]) -> Any:
        x, w = self.float_operand(p["input"], node), self.float_operand(p["weight"], node)
        b = p["bias"]
        if b is None:
            return self.emit_group("float_linear", (node,), lambda x, w: K.float_linear(x, w, None), [x, w], {})
        return self.emit_group("float_linear", (node,), K.float_linear, [x, w, self.float_operand(b, node)], {})

    def _float_mean(self, node: fx.Node, p: dict[str, Any]) -> Any:
        dim = tuple(sorted(int(d) % 4 for d in (p["dim"] or ())))
        if dim != (2, 3) or not p["keepdim"]:
            raise LoweringError(f"node {node.name}", f"torch.mean(dim={p['dim']}, keepdim={p['keepdim']})",
                                "only the global average pool mean(x, dim=(2, 3), keepdim=True) is supported")
        return self.emit_group("float_mean", (node,), K.float_mean, [self.float_operand(p["input"], node)], {})

    def _float_binary(self, node: fx.Node, p: dict[str, Any]) -> Any:
        from tvm import topi

        a, b = p["a"], p["b"]
        ta = self.float_operand(a, node) if isinstance(a, fx.Node) else float(a)
        tb = self.float_operand(b, node) if isinstance(b, fx.Node) else float(b)
        tensors = [t for t in (ta, tb) if not isinstance(t, float)]
        add = node.target is operator.add
        fn_top = topi.add if add else topi.multiply
        name = "float_add" if add else "float_mul"
        if len(tensors) == 2:
            return self.emit_group(name, (node,), fn_top, [ta, tb], {})
        if isinstance(ta, float):
            return self.emit_group(name, (node,), lambda t: fn_top(ta, t), [tb], {})
        return self.emit_group(name, (node,), lambda t: fn_top(t, tb), [ta], {})

    def _float_flatten(self, node: fx.Node, p: dict[str, Any]) -> Any:
        x = self.float_operand(p["input"], node)
        shp = _shape(x)
        s, e = int(p["start_dim"]) % len(shp), int(p["end_dim"]) % len(shp)
        new = shp[:s] + (int(np.prod(shp[s:e + 1], dtype=np.int64)),) + shp[e + 1:]
        if self.dry:
            return _Shaped(new, _dtype(x))
        return self.bb.emit(self.relax.op.reshape(x, new))

    def float_operand(self, a: Any, node: fx.Node) -> Any:
        e = self.operand(a, node.name, "float64") if isinstance(a, fx.Node) and a.op == "get_attr" else \
            self.operand(a, node.name)
        if _dtype(e) == "float32":  # the graph input entering an island: torch promotes f32 (op) f64 to f64
            if self.dry:
                return _Shaped(_shape(e), "float64")
            return self.bb.emit(self.relax.op.astype(e, "float64"))
        if _dtype(e) != "float64":
            raise LoweringError(f"node {node.name}", f"float-island operand has dtype {_dtype(e)}",
                                "float islands compute in float64: dequantize into them first")
        return e

    # -- driver ------------------------------------------------------------------------------------
    def _find_fused(self, nodes: list[fx.Node]) -> None:
        """conv2d/linear whose only user is requantize: fuse (the OpCall groups of strategy.py)."""
        for n in nodes:
            if n.op == "call_function" and n.target in (R.conv2d, R.linear) and len(n.users) == 1:
                (u,) = n.users
                if u.op == "call_function" and u.target is R.requantize and (u.args[:1] == (n,) or
                                                                               u.kwargs.get("acc") is n):
                    self.fused.add(n)
                    if n.target is R.conv2d:
                        self._find_chain(u)

    def _epilogue_next(self, cur: fx.Node) -> fx.Node | None:
        """The op that can run in the epilogue after `cur`: `cur`'s only user, an op of `FUSED_EPILOGUE_OPS`
        reading `cur` elementwise (a residual add's other operand of the same shape is its skip tensor)."""
        if len(cur.users) != 1:
            return None
        (u,) = cur.users
        if u.op != "call_function" or u.target not in FUSED_EPILOGUE_OPS:
            return None
        a = self.bind(u)
        if u.target is R.lut:
            return u if a["x"] is cur and isinstance(a["table"], fx.Node) and a["table"].op == "get_attr" else None
        if u.target is R.rescale:
            return u if a["x"] is cur else None
        other = a["b"] if a["a"] is cur else a["a"] if a["b"] is cur else None
        if not isinstance(other, fx.Node) or other is cur or other.op == "get_attr":
            return None
        return u if self._node_shape(cur) == self._node_shape(other) else None

    def _node_shape(self, node: fx.Node) -> tuple[int, ...]:
        """A node's static shape from its `tensor_meta`; a graph built without shapes is shape-propagated once
        with the reference executor on zeros of the input shape (an analysis: it only writes `node.meta`)."""
        if node.meta.get("tensor_meta") is None:
            from torch.fx.passes.shape_prop import ShapeProp

            with torch.no_grad():
                ShapeProp(self.ig).propagate(torch.zeros(self.input_shape, dtype=getattr(torch, self.input_dtype)))
        return tuple(int(d) for d in node.meta["tensor_meta"].shape)

    def _island_step(self, cur: fx.Node) -> fx.Node | None:
        """`cur`'s only user when it is a float op of one tensor input (`cur`; weights are constants) that
        `kernels.float_island` computes, or the quantize that ends the island."""
        if len(cur.users) != 1:
            return None
        (u,) = cur.users
        if u.op != "call_function":
            return None
        if u.target is R.quantize:
            return u if self.bind(u)["x"] is cur else None
        if u.target in _FLOAT_UNARY:
            return u if _op(u).bind(u.args, u.kwargs, u.name)["input"] is cur else None
        if u.target in (F.conv2d, F.linear, torch.mean):
            p = _op(u).bind(u.args, u.kwargs, u.name)
            consts = [p[k] for k in ("weight", "bias") if k in p and p[k] is not None]
            if p["input"] is cur and all(isinstance(c, fx.Node) and c.op == "get_attr" for c in consts) \
                    and not isinstance(p.get("padding"), str) \
                    and len(self._node_shape(cur)) == (2 if u.target is F.linear else 4):
                return u
        return None

    def _find_islands(self, nodes: list[fx.Node]) -> None:
        """`dequantize -> float ops -> quantize` chains (then the gate multiply of the codes the island read,
        when that is the quantize's only user) become one kernel: `self.islands[last] = chain`."""
        if not FUSE_FLOAT_ISLANDS:
            return
        for n in nodes:
            if n.op != "call_function" or n.target is not R.dequantize or n in self.deferred:
                continue
            chain = [n]
            while (nxt := self._island_step(chain[-1])) is not None:
                chain.append(nxt)
                if nxt.target is R.quantize:
                    break
            if chain[-1].target is not R.quantize or len(chain) < 3:
                continue
            q, src = chain[-1], self.bind(n)["q"]
            if len(q.users) == 1:
                (u,) = q.users
                if u.op == "call_function" and u.target is R.mul:
                    a = self.bind(u)
                    if a["g"] is q and a["x"] is src and len(self._node_shape(q)) == 4:
                        chain.append(u)
            self.islands[chain[-1]] = tuple(chain)
            self.deferred.update(chain[:-1])

    def _node_static(self, node: fx.Node) -> dict[str, Any]:
        """An integer op's static parameters as plain Python (constants fetched)."""
        a = self.bind(node)
        out = {}
        for k, v in a.items():
            if k in _op(node).operands:
                continue
            v = _as_static(v)
            if isinstance(v, fx.Node):
                v = _as_static(torch.from_numpy(self.const_value(v)))
            out[k] = v
        return out

    def float_island(self, chain: tuple[fx.Node, ...]) -> Any:
        """Emit the island `chain` as one `kernels.float_island` kernel (its stages unscheduled: each is tiny,
        and inlining one into the next could contract a float multiply and add into one rounding)."""
        first = chain[0]
        args = [self.operand(self.bind(first)["q"], first.name)]
        steps: list[tuple[str, tuple]] = []
        for n in chain:
            if n.target is R.dequantize:
                st = self._node_static(n)
                steps.append(("dequantize", (float(st["scale"]), float(st["zero_point"]))))
            elif n.target is R.quantize:
                st = self._node_static(n)
                steps.append(("quantize", (float(st["inv_scale"]), float(st["offset"]), int(st["qmax"]))))
            elif n.target is R.mul:
                st = self._node_static(n)
                steps.append(("mul", tuple(int(st[k]) for k in ("multiplier", "offset_g", "offset", "shift", "lo",
                                                                 "hi", "offset_x"))))
            elif n.target in _FLOAT_UNARY:
                steps.append(("float_unary", (_FLOAT_UNARY[n.target],)))
            else:
                p = _op(n).bind(n.args, n.kwargs, f"node {n.name}")
                if n.target is torch.mean:
                    dim = tuple(sorted(int(d) % 4 for d in (p["dim"] or ())))
                    if dim != (2, 3) or not p["keepdim"]:
                        raise LoweringError(f"node {n.name}", f"torch.mean(dim={p['dim']}, keepdim={p['keepdim']})",
                                            "only the global average pool mean(x, dim=(2, 3), keepdim=True) is "
                                            "supported")
                    steps.append(("float_mean", ()))
                    continue
                has_bias = p["bias"] is not None
                if n.target is F.conv2d and self._gemv_conv(n, p):
                    args.append(self._gemv_weight(p["weight"]))
                    if has_bias:
                        args.append(self.float_operand(p["bias"], n))
                    steps.append(("float_gemv", (has_bias,)))
                    continue
                args.append(self.float_operand(p["weight"], n))
                if has_bias:
                    args.append(self.float_operand(p["bias"], n))
                if n.target is F.conv2d:
                    steps.append(("float_conv2d", (has_bias, *(_as_static(p[k]) for k in
                                                               ("stride", "padding", "dilation")), int(p["groups"]))))
                else:
                    steps.append(("float_linear", (has_bias,)))
        kinds = tuple(k if k != "float_unary" else f"float_{kw[0]}" for k, kw in steps)
        fn = functools.partial(K.float_island, steps=tuple(steps))  # emit_te passes only TVM-typed keywords
        out = self.emit_group("float_island", chain, fn, args, {}, None, schedule=False,
                              described={"island": kinds})
        if not self.dry and "float_gemv" in kinds:
            mod = self.bb.get()
            for gname in self.kernels[-1].primfuncs:
                gv = mod.get_global_var(gname)
                self.bb.update_func(gv, K.schedule_float_island(mod[gv]))
        return out

    def _gemv_conv(self, n: fx.Node, p: dict[str, Any]) -> bool:
        """A 1x1, groups=1, unpadded, stride-1 float conv of a `[1, C, 1, 1]` input (squeeze-excite's reduce
        and expand convs after the global pool): `kernels.float_gemv`."""
        w = p["weight"]
        if not (isinstance(w, fx.Node) and w.op == "get_attr"):
            return False
        shape = tuple(self.const_value(w).shape)
        pad, st, dil = (_as_static(p[k]) for k in ("padding", "stride", "dilation"))

        def ones(v: Any, k: int) -> bool:  # an int or a tuple of ints, all equal to k ("same"/"valid": no)
            return not isinstance(v, str) and all(int(u) == k for u in ((v,) if isinstance(v, int) else v))

        return (len(shape) == 4 and shape[2:] == (1, 1) and int(p["groups"]) == 1
                and self._node_shape(p["input"]) == (1, shape[1], 1, 1)
                and ones(pad, 0) and ones(st, 1) and ones(dil, 1))

    def _gemv_weight(self, w: fx.Node) -> Any:
        """The weights of a `float_gemv` conv as `[C, O]`: float32 when every value is a float32 number (the
        kernel widens them exactly; half the bytes), float64 otherwise."""
        v = self.const_value(w).astype(np.float64)
        wt = np.ascontiguousarray(v.reshape(v.shape[0], -1).T)
        w32 = wt.astype(np.float32)
        if np.array_equal(w32.astype(np.float64), wt):
            wt = w32
        if self.dry:
            return _Shaped(wt.shape, str(wt.dtype))
        return self.relax.const(wt, str(wt.dtype))

    def _find_chain(self, rq: fx.Node) -> None:
        chain: list[fx.Node] = []
        cur = rq
        # a residual add of two conv outputs (ResNet's downsample branch) is the next op of both convs: the first
        # chain takes it and the other conv's code stays a value it reads as its skip tensor
        while (nxt := self._epilogue_next(cur)) is not None and nxt not in self.claimed:
            chain.append(nxt)
            cur = nxt
        if chain:
            self.chains[chain[-1]] = (rq, tuple(chain))
            self.claimed.update(chain)
            self.deferred.update([rq, *chain[:-1]])

    def _walk(self, nodes: list[fx.Node]) -> None:
        for n in nodes:
            if n.op != "call_function" or n in self.fused or n in self.deferred:
                continue
            if n in self.islands:
                self.env[n] = self.float_island(self.islands[n])
                continue
            if n in self.chains:
                rq, chain = self.chains[n]
                a = self.bind(rq)
                static = {k: _as_static(v) for k, v in a.items() if k not in _op(rq).operands}
                self.env[n] = self.fused_requant(rq, a["acc"], a, static, chain)
                continue
            if is_integer_op(n.target):
                self.env[n] = self.integer_op(n)
            else:
                self.env[n] = self.float_op(n)

    def _placeholders(self, nodes: list[fx.Node]) -> list[fx.Node]:
        placeholders = [n for n in nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise LoweringError("input", f"the graph has {len(placeholders)} inputs", "lower a single-input graph")
        return placeholders

    def plan(self) -> list[KernelRecord]:
        """Dry run: the kernels `run` would emit, without building any TVM expression."""
        nodes = list(self.ig.graph.nodes)
        placeholders = self._placeholders(nodes)
        self._find_fused(nodes)
        self._find_islands(nodes)
        self.env[placeholders[0]] = _Shaped(self.input_shape, self.input_dtype)
        self._walk(nodes)
        return self.kernels

    def run(self) -> EmitResult:
        relax = self.relax
        nodes = list(self.ig.graph.nodes)
        placeholders = self._placeholders(nodes)
        self._find_fused(nodes)
        self._find_islands(nodes)
        x = relax.Var(placeholders[0].name, relax.TensorType(self.input_shape, self.input_dtype))
        out_node = next(n for n in nodes if n.op == "output")
        result = out_node.args[0]
        if not isinstance(result, fx.Node) or result.op != "call_function":
            raise LoweringError("output", f"the graph returns {result!r}",
                                "return the result of one op (tuples are not supported)")
        with self.bb.function("main", [x]):
            with self.bb.dataflow():
                self.env[placeholders[0]] = x
                self._walk(nodes)
                out = self.bb.emit_output(self.env[result])
            self.bb.emit_func_output(out)
        mod = self.bb.finalize()
        return EmitResult(mod, self.input_shape, self.input_dtype, _shape(out), _dtype(out), self.kernels)


#: float-island op (other than the activations of `_FLOAT_UNARY`) -> its emitter method
_FLOAT_HANDLERS: dict[Callable, Callable[[_Emitter, fx.Node, dict[str, Any]], Any]] = {
    F.conv2d: _Emitter._float_conv2d,
    F.linear: _Emitter._float_linear,
    torch.mean: _Emitter._float_mean,
    operator.add: _Emitter._float_binary,
    operator.mul: _Emitter._float_binary,
    torch.flatten: _Emitter._float_flatten,
}


def handled_ops() -> frozenset[Callable]:
    """The ops of `qcompile.ops.table.OPS` this emitter lowers (a test checks that it is all of them)."""
    return (frozenset(_INT_KERNELS) | frozenset(_QDQ_KERNELS) | {R.flatten} | frozenset(_FLOAT_UNARY)
            | frozenset(_FLOAT_HANDLERS))


def emit_relax(ig: IntegerGraph, target: Any, input_shape: tuple[int, ...] | None = None,
               input_dtype: str = "float32", use_strategies: bool = True,
               call_log: list | None = None) -> EmitResult:
    """Emit the Relax module of `ig` for `target` (a `tvm.target.Target`); `main(x: input) -> output`.

    With `call_log`, every OpCall offered to the strategies is appended as `(call, weight ndarray or None)`
    (what tuning needs to tune each kernel before the final emission).
    """
    shape = graph_input_shape(ig, input_shape)
    em = _Emitter(ig, target, shape, input_dtype, use_strategies)
    em.call_log = call_log
    return em.run()


def plan_kernels(ig: IntegerGraph, target: Any, input_shape: tuple[int, ...] | None = None,
                 input_dtype: str = "float32", use_strategies: bool = True) -> list[KernelRecord]:
    """The kernels `emit_relax` would emit for `ig` on `target`, in order, without TVM expressions or builds.

    The same `_Emitter` walk (fusion, OpCall parameters, `select_strategy`, `kernel_workload`) in dry mode:
    shapes come from each node's `tensor_meta`. Weight-dependent choices (the AVX2 u8s8/i16 mode) are described
    from the graph's constant weights, as `emit_relax` describes them. `primfuncs` are empty.
    """
    shape = graph_input_shape(ig, input_shape)
    em = _Emitter(ig, target, shape, input_dtype, use_strategies, dry=True)
    return em.plan()
