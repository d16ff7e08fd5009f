"""Per-target lowering pipeline in phases, like TVM's `relax/backend/<target>/pipeline.py`.

`Pipeline` holds four phase functions, each `target -> list[tvm.transform.Pass]`:
legalize (high-level Relax ops -> TIR), layout (data/weight layout rewrites; empty by default),
schedule (schedules naive PrimFuncs), finalize (memory planning and VM lowering). Swap a phase with
`dataclasses.replace(default_pipeline(), schedule=my_schedule_passes)`.

The default schedule only touches PrimFuncs the emitter marked `qcompile.schedule = "default"`
(its naive kernels): pad stages are inlined into their consumer, the outer spatial loops are fused
and parallelised where the kernel's work pays for a parallel region (`schedules/parallel.py`), and the
innermost spatial loop of element-wise stages is vectorised. Kernels a
`Strategy` emitted keep their own schedules. No FuseOps: each op/group stays its own named
PrimFunc so the per-kernel benchmark table maps back to graph nodes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qcompile.backends.tvm.emitter import SCHEDULE_ATTR
from qcompile.backends.tvm.schedules.parallel import parallel_if_worth

log = logging.getLogger(__name__)

__all__ = ["Pipeline", "default_pipeline", "default_schedule_passes", "schedule_primfunc", "build_pass"]

PhaseFn = Callable[[Any], list]


def legalize_passes(target: Any) -> list:
    """High-level Relax ops (reshape) to TIR, and constant folding."""
    from tvm import relax

    return [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant()]


def layout_passes(target: Any) -> list:
    """No layout rewrite by default: kernels read NCHW / [N, K] as the contract stores them."""
    return []


def default_schedule_passes(target: Any) -> list:
    """Schedule every PrimFunc marked `qcompile.schedule = "default"` with `schedule_primfunc`."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="qcompile.DefaultSchedule")
    def _schedule(mod: Any, _ctx: Any) -> Any:
        from tvm import tirx

        updates = {}
        for gv, func in mod.functions.items():
            if not isinstance(func, tirx.PrimFunc) or func.attrs is None:
                continue
            if str(func.attrs.get(SCHEDULE_ATTR, "")) != "default":
                continue
            updates[gv] = schedule_primfunc(func, gv.name_hint).with_attr(SCHEDULE_ATTR, "done")
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return [_schedule]


def finalize_passes(target: Any, absorb_views: bool = True, batch_loop: int | str | None = None,
                    native_driver: bool = True, direct_calls: bool = True) -> list:
    """Dataflow lowering and VM finalisation (TVM's cpu_generic passes, static memory planning included),
    with the reshape views between kernels absorbed into the kernels' parameter shapes (`views`), dropping the
    PrimFuncs no call uses any more (legalized reshapes that became views), which would otherwise be compiled
    and exported. `absorb_views=False` keeps the views (for before/after measurements). `batch_loop="dynamic"`
    then gives `main` and every batch-1 kernel a symbolic batch, `batch_loop=N` N images (`batch.DynamicBatch`),
    still in dataflow form. `native_driver` (without a batch loop) moves the kernel calls of `main` into one
    TIR function on a planned arena (`driver.NativeDriver`); `False` keeps one VM instruction per kernel.
    `direct_calls=False` has the driver call each kernel through its packed API instead of its body
    (`driver.direct_body`)."""
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from qcompile.backends.tvm.views import AbsorbReshapeViews

    rewrite_reshape, *to_vm = cpu.dataflow_lower_passes(target)
    # views become plain VM reshapes here; absorb those between kernels into the kernels' parameter shapes
    # and drop the dead ones while still in dataflow form (DCE only removes pure dataflow bindings)
    absorb = [rewrite_reshape, AbsorbReshapeViews(), relax.transform.DeadCodeElimination()] if absorb_views \
        else [rewrite_reshape]
    if batch_loop is not None:
        from qcompile.backends.tvm.batch import DynamicBatch

        absorb = absorb + [DynamicBatch(None if batch_loop == "dynamic" else int(batch_loop))]
    elif native_driver:
        from qcompile.backends.tvm.driver import NativeDriver, PrivateDirectBodies

        absorb = absorb + [NativeDriver(direct_calls)]
        # after `AttachGlobalSymbol` (the last of TVM's finalize passes): the driver's direct calls stay direct
        return absorb + to_vm + [relax.transform.DeadCodeElimination()] + cpu.finalize_passes(target) \
            + [PrivateDirectBodies()]
    return absorb + to_vm + [relax.transform.DeadCodeElimination()] + cpu.finalize_passes(target)


@dataclass(frozen=True)
class Pipeline:
    """Phase functions of the Relax lowering; each maps a target to a list of passes."""

    legalize: PhaseFn = legalize_passes
    layout: PhaseFn = layout_passes
    schedule: PhaseFn = default_schedule_passes
    finalize: PhaseFn = finalize_passes

    def passes(self, target: Any) -> list:
        return self.legalize(target) + self.layout(target) + self.schedule(target) + self.finalize(target)


def default_pipeline(target: Any = None) -> Pipeline:
    """The pipeline for x86 and arm_cpu (same phases; per-target work lives in strategies)."""
    return Pipeline()


def build_pass(pipeline: Pipeline, target: Any) -> Any:
    """The pipeline as one module pass for `relax.build(..., relax_pipeline=...)`."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="qcompile.Pipeline")
    def _pipeline(mod: Any, _ctx: Any) -> Any:
        with target:
            return tvm.transform.Sequential(pipeline.passes(target))(mod)

    return _pipeline


# -- the default schedule ---------------------------------------------------------------------------

_VECTOR_LANES = (16, 8, 4)


def _is_reduction(sch: Any, block: Any) -> bool:
    return any(int(iv.iter_type) != 0 for iv in sch.get(block).iter_vars)


def _block_work(sch: Any, loops: list) -> int:
    """Inner iterations of the block under `loops` (the product of their extents); a symbolic extent (a
    dynamic dimension) counts as unbounded, so such kernels keep their parallel region."""
    work = 1
    for lp in loops:
        extent = sch.get(lp).extent
        if not isinstance(extent, int) and not hasattr(extent, "value"):
            return 1 << 62
        work *= int(extent)
    return work


def _schedule_block(sch: Any, block: Any) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    work = _block_work(sch, loops)
    if _is_reduction(sch, block):
        # loops come out spatial-first from TE; fuse the spatial prefix and parallelise it
        n_spatial = sum(1 for iv in sch.get(block).iter_vars if int(iv.iter_type) == 0)
        spatial = loops[:n_spatial]
        if len(spatial) > 1:
            outer = sch.fuse(*spatial[:-1]) if len(spatial) > 2 else spatial[0]
            parallel_if_worth(sch, outer, work, "naive_reduce")
        elif spatial:
            parallel_if_worth(sch, spatial[0], work, "naive_reduce")
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    extent = int(sch.get(fused).extent)
    lanes = next((v for v in _VECTOR_LANES if extent % v == 0 and extent >= 2 * v), None)
    if lanes is None:
        parallel_if_worth(sch, fused, work, "naive")
        return
    outer, inner = sch.split(fused, factors=[None, lanes])
    parallel_if_worth(sch, outer, work, "naive")
    sch.vectorize(inner)


def schedule_primfunc(func: Any, name: str = "") -> Any:
    """Default schedule of a naive kernel; returns `func` unchanged if a primitive fails."""
    from tvm import s_tir

    try:
        sch = s_tir.Schedule(func)
        root = sch.get_sblock("root")
        blocks = sch.get_child_blocks(root)
        # inline pure producers (padding, casts) so they do not materialise; keep the last block
        for b in blocks[:-1]:
            if not _is_reduction(sch, b):
                try:
                    sch.compute_inline(b)
                except Exception:  # not inlinable (e.g. consumed by two blocks): schedule on its own
                    log.debug("%s: cannot inline %s", name, sch.get(b).name_hint)
        for b in sch.get_child_blocks(sch.get_sblock("root")):
            _schedule_block(sch, b)
        return sch.mod["main"]
    except Exception as e:  # a naive kernel stays correct unscheduled; say so and go on
        log.warning("default schedule failed for %s (%s): left unscheduled", name, e)
        return func
