"""A symbolic batch dimension for a library built at batch 1 (`lower_integer_graph(..., batch="dynamic")`).

The emitter and every strategy build and schedule their kernels for one image. `DynamicBatch` then gives the
Relax `main` a symbolic batch `n` (`R.Tensor(("n", c, h, w))`) and each kernel an outer serial loop over the
`n` images around its unchanged batch-1 body: every tensor that depends on the input (a "batched" tensor) is
`n` images of its batch-1 shape stored one after the other, and inside the loop the kernel's old parameter
buffer is re-declared (`DeclBuffer`) over the address of image `b` of the new, `n`-image parameter. Every access
of the body, by index or through the raw pointer (the tensorized VNNI / AMX / AVX2 GEMMs read their operands
through pointers), reads the byte it read at batch 1 in image `b`: bit-exact by construction, for every kernel
family, the tensorized ones included, and N stays the outermost loop of every kernel. A fixed batch
(`lower_integer_graph(..., batch=8)`) is the same loop with a constant extent: the strategies schedule batch-1
convolutions only (`schedules.conv`), so this is also how a static batch-N library gets their kernels.

The loop is serial: a kernel's own parallel region (`schedules/parallel.py`) runs inside it, once per image, and
TVM's CPU codegen does not nest parallel regions. Weights and other constants are shared by all images.

This is only equal to running the graph on a batch when the graph treats images independently; a graph whose
value at batch 2 does not have the batch as its leading dimension (a flatten over dim 0, a reduction over the
batch) is refused before any emission (`check_batch_independent`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from qcompile.errors import LoweringError
from qcompile.ops.graph import IntegerGraph

log = logging.getLogger(__name__)

__all__ = ["DynamicBatch", "dynamic_batch", "check_batch_independent", "BATCH_VAR"]

#: name of the symbolic batch dimension in `main`'s signature and in every kernel
BATCH_VAR = "n"


def check_batch_independent(ig: IntegerGraph, input_shape: tuple[int, ...], input_dtype: str = "float32") -> None:
    """`LoweringError` naming the first node whose value, with the reference executor on a batch of 2 images,
    does not have the batch as its leading dimension and otherwise its batch-1 shape; such a node mixes images
    (or drops the batch axis), so running its batch-1 kernel once per image would be wrong. An analysis: the
    nodes' `tensor_meta` is left as it was."""
    from torch.fx.passes.shape_prop import ShapeProp

    one = (1, *(int(d) for d in input_shape[1:]))
    dtype = getattr(torch, input_dtype)
    saved = {node: node.meta.get("tensor_meta") for node in ig.graph.nodes}
    shapes: dict[str, list[tuple[int, ...]]] = {}
    try:
        with torch.no_grad():
            for batch in (1, 2):
                ShapeProp(ig).propagate(torch.zeros((batch, *one[1:]), dtype=dtype))
                for node in ig.graph.nodes:
                    tm = node.meta.get("tensor_meta")
                    if node.op in ("placeholder", "call_function") and hasattr(tm, "shape"):
                        shapes.setdefault(node.name, []).append(tuple(int(d) for d in tm.shape))
    finally:
        for node, tm in saved.items():
            if tm is None:
                node.meta.pop("tensor_meta", None)
            else:
                node.meta["tensor_meta"] = tm
    for node in ig.graph.nodes:
        got = shapes.get(node.name)
        if got is None or len(got) != 2:
            continue
        s1, s2 = got
        if s1[:1] != (1,) or s2[:1] != (2,) or s1[1:] != s2[1:]:
            raise LoweringError(
                f"node {node.name}",
                f"batch='dynamic': its value has shape {s1} at batch 1 but {s2} at batch 2, so the batch is not "
                "its leading dimension (the op drops the batch axis or mixes images)",
                "lower with a static batch (batch=N or input_shape=(N, C, H, W)), or keep dim 0 the batch")


def _dyn_shape(shape: tuple[int, ...], n: Any) -> list[Any]:
    """The `n`-image shape of a batched tensor whose batch-1 shape is `shape` (same bytes per image)."""
    from tvm import tirx

    rest = shape[1:] if shape and shape[0] == 1 else shape
    return [n, *(tirx.IntImm("int64", int(d)) for d in rest)]


def _static(shape: Any) -> tuple[int, ...] | None:
    from tvm import tirx

    dims = getattr(shape, "values", shape)
    if dims is None or not all(isinstance(d, (tirx.IntImm, int)) for d in dims):
        return None
    return tuple(int(d) for d in dims)


def _batch_primfunc(func: Any, name: str, batched: dict[int, tuple[int, ...]], n: Any) -> Any:
    """`func` over `n` images: parameter `i` in `batched` (its batch-1 shape, as the Relax call passes it)
    becomes an `n`-image buffer, and the body runs once per image with the old buffer declared over image `b`."""
    from tvm import s_tir, tirx

    params = list(func.params)
    b = tirx.Var("b", "int64")
    decls = []
    for i, shape in sorted(batched.items()):
        old = params[i]
        if not tirx.is_buffer_var(old):
            raise LoweringError(f"kernel {name}", f"parameter {i} is not a buffer",
                                "batch='dynamic' needs kernels whose tensors are buffer parameters")
        if len(old.strides) != 0 or not isinstance(old.elem_offset, tirx.IntImm) or int(old.elem_offset) != 0:
            raise LoweringError(f"kernel {name}", f"parameter {old.name} is strided or offset",
                                "batch='dynamic' needs compact row-major tensors between kernels")
        old_shape = _static(old.shape)
        if old_shape is None or int(np.prod(old_shape, dtype=np.int64)) != int(np.prod(shape, dtype=np.int64)):
            raise LoweringError(f"kernel {name}", f"parameter {old.name} has shape {old_shape}, its argument {shape}",
                                "batch='dynamic' needs static per-image shapes of equal size")
        new = tirx.decl_buffer(_dyn_shape(shape, n), old.dtype, old.name)
        params[i] = new
        first = [b] + [tirx.IntImm("int64", 0)] * (len(new.shape) - 1)
        decls.append(tirx.DeclBuffer(old, data=tirx.address_of(tirx.BufferLoad(new, first))))
    body = func.body
    if isinstance(body, s_tir.SBlockRealize):
        # inside the root block: its scratch buffers (alloc_buffers) are allocated once for all images
        blk = body.block
        loop = tirx.For(b, tirx.IntImm("int64", 0), n, tirx.ForKind.SERIAL, tirx.SeqStmt([*decls, blk.body]))
        new_block = s_tir.SBlock(blk.iter_vars, blk.reads, blk.writes, blk.name_hint, loop, blk.init,
                                 blk.alloc_buffers, blk.match_buffers, blk.annotations)
        body = s_tir.SBlockRealize(body.iter_values, body.predicate, new_block)
    else:
        body = tirx.For(b, tirx.IntImm("int64", 0), n, tirx.ForKind.SERIAL, tirx.SeqStmt([*decls, body]))
    return tirx.PrimFunc(params, body, func.ret_type, func.attrs)


def dynamic_batch(mod: Any, batch: int | None = None) -> Any:
    """`mod` (dataflow form, after the reshape views were absorbed) with a symbolic batch in `main` and every
    kernel (see the module docstring), or with `batch` images (the same loop, a constant extent). Expects `main`
    to be one dataflow block of `call_tir` and `reshape` bindings over tensors of the batch-1 program."""
    import tvm
    from tvm import relax, tirx

    call_tir_op = tvm.ir.Op.get("relax.call_tir")
    reshape_op = tvm.ir.Op.get("relax.reshape")
    main_gv = mod.get_global_var("main")
    main = mod[main_gv]
    if len(main.params) != 1:
        raise LoweringError("main", f"{len(main.params)} parameters", "batch='dynamic' lowers single-input graphs")
    blocks = list(main.body.blocks)
    n = tirx.Var(BATCH_VAR, "int64") if batch is None else tirx.IntImm("int64", int(batch))

    def batched_ty(ty: Any, where: str) -> Any:
        shape = _static(ty.shape) if isinstance(ty, relax.TensorType) and ty.shape is not None else None
        if shape is None:
            raise LoweringError(where, f"value of type {ty} has no static batch-1 shape",
                                "batch='dynamic' needs static per-image shapes")
        return relax.TensorType(_dyn_shape(shape, n), ty.dtype)

    # pass 1: which call_tir argument positions carry batched tensors, per kernel
    batched_vars = {main.params[0]}
    plans: dict[str, dict[int, tuple[int, ...]]] = {}
    for block in blocks:
        for bind in block.bindings:
            v = bind.value
            if not isinstance(bind, relax.VarBinding):
                raise LoweringError("main", f"binding {bind.var.name} is a match_cast",
                                    "batch='dynamic' rewrites plain bindings only")
            if isinstance(v, relax.Var):
                if v in batched_vars:
                    batched_vars.add(bind.var)
                continue
            if not isinstance(v, relax.Call) or v.op not in (call_tir_op, reshape_op):
                raise LoweringError(f"main binding {bind.var.name}", f"Relax op {getattr(v, 'op', v)}",
                                    "batch='dynamic' rewrites kernel calls (call_tir) and reshape views only")
            if v.op == reshape_op:
                if v.args[0] in batched_vars:
                    batched_vars.add(bind.var)
                continue
            name = v.args[0].name_hint
            if len(v.args) > 2:
                raise LoweringError(f"kernel {name}", "the call passes symbolic TIR variables",
                                    "batch='dynamic' rewrites calls of static batch-1 kernels only")
            args = list(v.args[1].fields)
            pos = {i: _static(a.ty.shape) for i, a in enumerate(args) if isinstance(a, relax.Var) and a in batched_vars}
            if not pos:
                continue
            pos[len(args)] = _static(v.ty_args[0].shape)  # the output parameter follows the inputs
            if None in pos.values():
                raise LoweringError(f"kernel {name}", "a tensor of the call has no static shape",
                                    "batch='dynamic' needs static per-image shapes")
            if plans.setdefault(name, pos) != pos:
                raise LoweringError(f"kernel {name}", "called with batched tensors at different positions",
                                    "batch='dynamic' needs one batched signature per kernel")
            batched_vars.add(bind.var)

    # the kernels over n images, added back under their own names and symbols
    keep = {gv: f for gv, f in mod.functions.items() if gv.name_hint not in plans and gv != main_gv}
    bb = relax.BlockBuilder(tvm.IRModule(keep, attrs=mod.attrs))
    gvs = {}
    for name, pos in plans.items():
        func = mod[name]
        if not isinstance(func, tirx.PrimFunc):
            raise LoweringError(f"kernel {name}", "not a TIR PrimFunc", "batch='dynamic' rewrites TIR kernels")
        sym = str(func.attrs["global_symbol"]) if func.attrs is not None and "global_symbol" in func.attrs else name
        gvs[name] = bb.add_func(_batch_primfunc(func, name, pos, n).with_attr("global_symbol", sym), name)

    # pass 2: main over n images
    x_old = main.params[0]
    x = relax.Var(x_old.name, batched_ty(x_old.ty, "input"))
    env: dict[Any, Any] = {x_old: x}
    with bb.function("main", [x], attrs=dict(main.attrs) if main.attrs is not None else None):
        with bb.dataflow():
            for block in blocks:
                for bind in block.bindings:
                    v = bind.value
                    if isinstance(v, relax.Var):
                        env[bind.var] = env.get(v, v)
                        continue
                    if v.op == reshape_op:
                        if v.args[0] in batched_vars:
                            shape = _static(v.ty.shape)
                            new_v = relax.op.reshape(env[v.args[0]], _dyn_shape(shape, n))
                        else:
                            new_v = v
                    else:
                        name = v.args[0].name_hint
                        args = [env.get(a, a) if isinstance(a, relax.Var) else a for a in v.args[1].fields]
                        if bind.var in batched_vars:
                            new_v = relax.call_tir(gvs[name], args, out_ty=batched_ty(v.ty_args[0], f"kernel {name}"))
                        else:
                            new_v = relax.call_tir(v.args[0], args, out_ty=v.ty_args[0])
                    is_out = not isinstance(bind.var, relax.DataflowVar)
                    env[bind.var] = bb.emit_output(new_v) if is_out else bb.emit(new_v)
        out = main.body.body
        bb.emit_func_output(env.get(out, out))
    return bb.get()


def DynamicBatch(batch: int | None = None) -> Any:  # noqa: N802 (a TVM pass constructor, named like TVM's)
    """`dynamic_batch` as a module pass (`batch`: None for a symbolic batch, else that many images)."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="qcompile.DynamicBatch")
    def _pass(mod: Any, _ctx: Any) -> Any:
        return dynamic_batch(mod, batch)

    return _pass
