"""Absorb the reshape views between kernels into the kernels' own parameter shapes.

Kernels read the layout they were written for (a GEMM reads `[C, H*W]`, a flat element-wise kernel `[N]`) while
the tensors between kernels are NCHW (docs/integer_semantics.md), so the emitter wraps kernel calls in Relax
reshapes. A reshape is a view (same bytes, row-major order), but the Relax VM still executes it per call: one
`vm.builtin.reshape` (a new tensor object) and one `kill_object` for each of the ~220 views of the demo subnet.

`AbsorbReshapeViews` removes them: a `call_tir` argument that is a chain of reshapes of a tensor `t` is replaced
by `t` itself, and the callee's parameter buffer is re-declared with `t`'s shape while its body keeps indexing
the old buffer, re-declared over the same data pointer (`DeclBuffer`). Both buffers are compact and row-major,
so every access reads the same byte as before: bit-exact by construction. A parameter is only retyped when
every call of that PrimFunc passes the same shape there; otherwise its views stay.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["absorb_reshape_views", "AbsorbReshapeViews"]


def _static_shape(ty: Any) -> tuple[int, ...] | None:
    from tvm import relax, tirx

    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    dims = getattr(ty.shape, "values", None)
    if dims is None or not all(isinstance(d, tirx.IntImm) for d in dims):
        return None
    return tuple(int(d) for d in dims)


def _compact(buf: Any) -> bool:
    """A buffer a plain row-major view can stand in for: no strides, no element offset."""
    from tvm import tirx

    return len(buf.strides) == 0 and isinstance(buf.elem_offset, tirx.IntImm) and int(buf.elem_offset) == 0


def _retype_params(func: Any, new_shapes: dict[int, tuple[int, ...]]) -> Any:
    """`func` with parameter `i` declared as `new_shapes[i]`; the body's old buffer is declared over the new
    parameter's data pointer (`DeclBuffer`), so its accesses are unchanged."""
    from tvm import s_tir, tirx

    params = list(func.params)
    decls = []
    for i, shape in new_shapes.items():
        old = params[i]
        new = tirx.decl_buffer(shape, old.dtype, old.name + "_view")
        params[i] = new
        decls.append(tirx.DeclBuffer(old, data=tirx.buffer.buffer_data(new)))
    body = func.body
    if isinstance(body, s_tir.SBlockRealize):
        # inside the root block, where the blocks that use the buffer live
        blk = body.block
        new_block = s_tir.SBlock(
            blk.iter_vars,
            blk.reads,
            blk.writes,
            blk.name_hint,
            tirx.SeqStmt([*decls, blk.body]),
            blk.init,
            blk.alloc_buffers,
            blk.match_buffers,
            blk.annotations,
        )
        body = s_tir.SBlockRealize(body.iter_values, body.predicate, new_block)
    else:
        body = tirx.SeqStmt([*decls, body])
    return tirx.PrimFunc(params, body, func.ret_type, func.attrs)


def _call_vars(e: Any, out: list) -> None:
    """The relax Vars `e` reads (through tuples)."""
    from tvm import relax

    if isinstance(e, relax.Var):
        out.append(e)
    elif isinstance(e, relax.Tuple):
        for f in e.fields:
            _call_vars(f, out)
    elif isinstance(e, relax.Call):
        for a in e.args:
            _call_vars(a, out)


def _bindings(mod: Any) -> list:
    from tvm import relax

    return [
        b
        for func in mod.functions.values()
        if isinstance(func, relax.Function)
        for block in getattr(func.body, "blocks", [])
        for b in block.bindings
    ]


def _retype_plan(mod: Any, wanted: dict[tuple[str, int], set]) -> dict[str, dict[int, tuple[int, ...]]]:
    """Parameters to retype: one static shape over all calls of the PrimFunc, different from the declared one."""
    from tvm import tirx

    plan: dict[str, dict[int, tuple[int, ...]]] = {}
    for (name, i), shapes in wanted.items():
        if len(shapes) != 1 or None in shapes:
            continue
        func = mod[name]
        if not isinstance(func, tirx.PrimFunc) or i >= len(func.params):
            continue
        buf = func.params[i]
        (shape,) = shapes
        if not tirx.is_buffer_var(buf) or not _compact(buf) or tuple(int(d) for d in buf.shape) == shape:
            continue
        if int(np.prod(shape, dtype=np.int64)) != int(np.prod([int(d) for d in buf.shape], dtype=np.int64)):
            continue
        plan.setdefault(name, {})[i] = shape
    return plan


def _symbol(func: Any, name: str) -> str:
    attrs = func.attrs
    return str(attrs["global_symbol"]) if attrs is not None and "global_symbol" in attrs else name


def _apply(mod: Any, plan: dict[str, dict[int, tuple[int, ...]]], mutator: Any) -> Any:
    """Retype the planned kernels and rewrite their calls with `mutator(module, new GlobalVars)`.

    The kernels are added back under their own names as new GlobalVars: a call is type-checked against the
    signature its GlobalVar carries, which the old ones keep."""
    import tvm
    from tvm import relax

    keep = {gv: f for gv, f in mod.functions.items() if gv.name_hint not in plan}
    bb = relax.BlockBuilder(tvm.IRModule(keep, attrs=mod.attrs))
    # the symbol AttachGlobalSymbol would give it anyway: without it, add_func would merge kernels that became
    # structurally equal (two LUTs of one table and shape) and drop a name from the kernel table
    gvs = {
        name: bb.add_func(_retype_params(mod[name], p).with_attr("global_symbol", _symbol(mod[name], name)), name)
        for name, p in plan.items()
    }
    out = bb.get()
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            out.update_func(gv, mutator(out, gvs).visit_expr(func))
    return out


def _absorb_outputs(mod: Any) -> Any:
    """A kernel whose output is only ever read through reshapes to one shape writes that shape directly."""
    import tvm
    from tvm import relax

    reshape_op = tvm.ir.Op.get("relax.reshape")
    call_tir_op = tvm.ir.Op.get("relax.call_tir")
    bindings = _bindings(mod)
    reads: dict[Any, list] = {}  # var -> the values that read it (None: the function's result)
    for b in bindings:
        vs: list = []
        _call_vars(b.value, vs)
        for v in vs:
            reads.setdefault(v, []).append(b.value)
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            vs = []
            _call_vars(func.body.body, vs)
            for v in vs:
                reads.setdefault(v, []).append(None)
    wanted: dict[tuple[str, int], set] = {}
    for b in bindings:
        v = b.value
        if not (isinstance(v, relax.Call) and v.op == call_tir_op):
            continue
        users = reads.get(b.var, [])
        shapes = {_static_shape(u.ty) if isinstance(u, relax.Call) and u.op == reshape_op else None for u in users}
        i = len(v.args[1].fields)  # the output parameter follows the inputs
        wanted.setdefault((v.args[0].name_hint, i), set()).update(shapes if users else {None})
    plan = _retype_plan(mod, wanted)

    @relax.expr_functor.mutator
    class _Retype(relax.PyExprMutator):
        def __init__(self, mod: Any, gvs: dict) -> None:
            super().__init__(mod)
            self.gvs = gvs

        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if call.op != call_tir_op or call.args[0].name_hint not in plan:
                return call
            i = len(call.args[1].fields)
            if i not in plan[call.args[0].name_hint]:
                return call
            name = call.args[0].name_hint
            ty = relax.TensorType(plan[name][i], call.ty_args[0].dtype)
            return relax.Call(call.op, [self.gvs[name], *call.args[1:]], call.attrs, [ty])

    return _apply(mod, plan, _Retype) if plan else mod


def _absorb_inputs(mod: Any) -> Any:
    """A kernel argument that is a chain of reshapes of `t` becomes `t`, the parameter retyped to its shape."""
    import tvm
    from tvm import relax, tirx

    reshape_op = tvm.ir.Op.get("relax.reshape")
    call_tir_op = tvm.ir.Op.get("relax.call_tir")
    root: dict[Any, Any] = {}
    wanted: dict[tuple[str, int], set] = {}
    for b in _bindings(mod):
        v = b.value
        if not isinstance(v, relax.Call):
            continue
        if v.op == reshape_op and isinstance(v.args[0], relax.Var) and _static_shape(v.args[0].ty) is not None:
            root[b.var] = root.get(v.args[0], v.args[0])
        elif v.op == call_tir_op:
            for i, a in enumerate(v.args[1].fields):
                src = root.get(a, a) if isinstance(a, relax.Var) else a
                wanted.setdefault((v.args[0].name_hint, i), set()).add(_static_shape(src.ty))
    plan = _retype_plan(mod, wanted)
    # arguments whose root already has the declared shape: substituted, the kernel unchanged
    same = {
        (name, i)
        for (name, i), shapes in wanted.items()
        if len(shapes) == 1
        and None not in shapes
        and isinstance(mod[name], tirx.PrimFunc)
        and i < len(mod[name].params)
        and tuple(int(d) for d in mod[name].params[i].shape) == next(iter(shapes))
    }

    @relax.expr_functor.mutator
    class _Substitute(relax.PyExprMutator):
        def __init__(self, mod: Any, gvs: dict) -> None:
            super().__init__(mod)
            self.gvs = gvs

        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if call.op != call_tir_op:
                return call
            name = call.args[0].name_hint
            params = plan.get(name, {})
            subst = [i in params or (name, i) in same for i in range(len(call.args[1].fields))]
            if not any(subst):
                return call
            fields = [
                self.visit_expr(root.get(a, a)) if s and isinstance(a, relax.Var) else a
                for s, a in zip(subst, call.args[1].fields)
            ]
            return relax.Call(
                call.op,
                [self.gvs.get(name, call.args[0]), relax.Tuple(fields), *call.args[2:]],
                call.attrs,
                call.ty_args,
            )

    return _apply(mod, plan, _Substitute) if plan or same else mod


def absorb_reshape_views(mod: Any) -> Any:
    """The module with the reshape views between kernels absorbed into the kernels (see the module docstring).

    Expects Relax reshapes as `relax.reshape` calls inside dataflow blocks (after `RewriteDataflowReshape`);
    the views left without readers are for `DeadCodeElimination` to drop.
    """
    return _absorb_inputs(_absorb_outputs(mod))


def AbsorbReshapeViews() -> Any:  # noqa: N802 (a TVM pass constructor, named like TVM's)
    """`absorb_reshape_views` as a module pass."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="qcompile.AbsorbReshapeViews")
    def _pass(mod: Any, _ctx: Any) -> Any:
        return absorb_reshape_views(mod)

    return _pass
