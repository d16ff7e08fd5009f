"""One native function that runs every kernel of `main`: the Relax VM out of the per-kernel loop.

Per kernel, the Relax VM executes an `alloc_tensor` (a new tensor object on a statically planned storage), a
packed call through the interpreter and a register kill: about 0.2-0.3 us each, ~30 us per call of the demo
subnet's 104 kernels (docs/benchmarks_demo.md, "Per-call overhead"). `NativeDriver` replaces the kernel calls
of `main` by one TIR PrimFunc, `qc_driver`, compiled into the same library, which calls the kernels in program
order as direct C calls of each kernel's body with its data pointers (`direct_body`: no DLTensor, no packed-API
argument checks, no lookup, no tensor object, no interpreter; `direct_calls=False`: through the kernel's packed
API, `tvm_call_cpacked`, a DLTensor per argument built on the stack) on

- one arena for every intermediate tensor, its offsets planned at compile time (liveness intervals, the largest
  first, 64-byte aligned; each tensor on bytes its own kernel last read where that stays near first fit's offset,
  `QCOMPILE_ARENA_REUSE=affine`, the default: at 2 threads a kernel then writes lines already in its core's cache;
  `first`: plain first fit): the arena is the driver's second output, so the VM allocates it once per call from
  its static plan;
- one constant blob holding every weight, bias and table the kernels read (64-byte aligned offsets), one Relax
  constant instead of hundreds of arguments.

`main` becomes `R.call_tir(qc_driver, (x, blob), [out, arena])[0]`: `Lowered.__call__`, `benchmark`, `export` /
`load`, the qemu runner and RPC all run it unchanged. The kernels keep their own exported symbols (the per-kernel
table times them alone). Each kernel reads and writes exactly the bytes it did under the VM (the same compact
row-major buffers; a reshape is the same bytes under another shape), so the outputs are bit-exact by construction;
tests compare them with the reference executor.

Beside it, x86 libraries hold `qc_driver_profile` (`PROFILE_NAME`): the same calls with a cycle-counter stamp
before each and after the last, for `Lowered.profile` (`profile.py`); `main` never calls it.

The rewrite applies when `main` is a straight line of `call_tir` (one static-shaped tensor each), `reshape` and
variable bindings over static-shaped tensors, and returns a tensor a kernel wrote; anything else (a dynamic batch,
a tuple output, another Relax op) keeps the VM program, with the reason logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["DRIVER_NAME", "PROFILE_NAME", "DRIVER_CALLS_ATTR", "NativeDriver", "native_driver", "driver_info",
           "aligned_empty", "huge_empty", "huge_pages", "HUGE_PAGE"]

DRIVER_NAME = "qc_driver"
#: the driver's profiling twin in the same library: the same calls, plus a cycle-counter stamp before each call
#: and after the last, into one more int64 buffer (`profile.py`); `main` never calls it
PROFILE_NAME = "qc_driver_profile"
#: PrimFunc attribute of the driver: the kernel symbols it calls, in order (`driver_calls`)
DRIVER_CALLS_ATTR = "qcompile.driver_calls"
#: PrimFunc attribute of the driver: indices of main's float inputs it refuses NaN/inf in: by a `finite_check` call
#: before any kernel, or inside a kernel (`DRIVER_KERNEL_CHECKS_ATTR`)
DRIVER_CHECKS_ATTR = "qcompile.driver_finite_checked"
#: PrimFunc attribute of the driver: the byte alignment it needs of main's inputs. With direct calls, each kernel
#: body that reads an input is compiled without the 64-byte assumption for it (`UNALIGNED_ATTR`), so the driver
#: takes a caller's array where it lies (`Lowered.__call__`'s zero-copy input): the element size. `ALIGN` with
#: packed calls (each kernel's packed API marks its buffers 64-byte aligned)
DRIVER_INPUT_ALIGN_ATTR = "qcompile.driver_input_align"
#: PrimFunc attribute of the driver: indices of main's float inputs whose NaN/inf check a kernel does, not a
#: `finite_check` call (`quantize_checks_input`); a subset of `DRIVER_CHECKS_ATTR`
DRIVER_KERNEL_CHECKS_ATTR = "qcompile.driver_finite_in_kernel"
#: Environment variable: "0" keeps the driver's separate `finite_check` call before the input's quantize; unset, ""
#: or "1" (default) folds the check into that quantize (`kernels.quantize_checked`, `quantize_checks_input`;
#: MobileNetV2 224's front, docs/peers.md session 16)
ENV_FINITE_IN_QUANTIZE = "QCOMPILE_FINITE_IN_QUANTIZE"
#: Relax function of a driver library returning the constant blob (the driver's argument after main's inputs)
DRIVER_BLOB_NAME = "qc_driver_blob"
#: byte alignment of every arena and blob offset (TVM's kAllocAlignment: kernels assume it of their buffers)
ALIGN = 64


#: Environment variable: how the arena reuses freed bytes (`_first_fit`): "first" (the lowest offset) or "affine";
#: unset is `DEFAULT_ARENA_REUSE`. "affine" by default: at 2 threads it keeps depthwise outputs off cache lines a
#: pointwise GEMM just read from both cores (MobileNetV2 224 tuned, interleaved in one process, AMD EPYC Zen 4:
#: driver minimum 1515 -> 1454 us, sum of per-call minima 1451 -> 1418; neutral at 1 thread; docs/peers.md,
#: session 15)
ENV_ARENA_REUSE = "QCOMPILE_ARENA_REUSE"
DEFAULT_ARENA_REUSE = "affine"
ARENA_REUSE = ("first", "affine")


def arena_reuse() -> str:
    """The arena's reuse rule in force (`ENV_ARENA_REUSE`, else `DEFAULT_ARENA_REUSE`); `ConfigError` otherwise."""
    import os

    from qcompile.errors import ConfigError

    raw = os.environ.get(ENV_ARENA_REUSE, "")
    if raw == "":
        return DEFAULT_ARENA_REUSE
    if raw not in ARENA_REUSE:
        raise ConfigError(ENV_ARENA_REUSE, raw, f"one of {ARENA_REUSE}")
    return raw


class _NotApplicable(Exception):
    """`main` is not a straight line of kernel calls over static shapes (the message says why)."""


@dataclass
class _Slot:
    """A tensor's bytes: a parameter of `main`, the output, an arena range or a constant."""

    kind: str  # "param", "out", "arena", "const"
    index: int = 0  # parameter index, or constant index
    nbytes: int = 0
    first: int = 0  # arena: the call that writes it ...
    last: int = 0  # ... and the last call that reads it
    offset: int = 0  # arena / blob byte offset
    writer: str = ""  # arena: the symbol of the kernel that writes it ...
    reader: str = ""  # ... and of the last kernel that reads it (`_first_fit(..., reuse="affine")`)


@dataclass
class _Plan:
    calls: list = field(default_factory=list)  # (symbol, [(slot, shape, dtype)])
    consts: list = field(default_factory=list)  # numpy arrays, by constant index
    arena_bytes: int = 0
    blob: np.ndarray | None = None


def _static(ty: Any, what: str) -> tuple[tuple[int, ...], str]:
    from tvm import relax, tirx

    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        raise _NotApplicable(f"{what} is not a tensor of known shape ({ty})")
    dims = getattr(ty.shape, "values", None)
    if dims is None or not all(isinstance(d, tirx.IntImm) for d in dims):
        raise _NotApplicable(f"{what} has a symbolic shape ({ty})")
    return tuple(int(d) for d in dims), str(ty.dtype)


def _nbytes(shape: tuple[int, ...], dtype: str) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _symbol(func: Any, name: str) -> str:
    attrs = func.attrs
    return str(attrs["global_symbol"]) if attrs is not None and "global_symbol" in attrs else name


def _affinity(s: _Slot, off: int, placed: list[_Slot]) -> tuple[int, int]:
    """For `s` at `off`: (bytes whose latest earlier tensor was last read by `s`'s writer, the latest call among
    those earlier tensors' last reads, -1 if none)."""
    end = off + s.nbytes
    earlier = sorted((p for p in placed if p.offset < end and off < p.offset + p.nbytes and p.last < s.first),
                     key=lambda p: -p.last)
    covered: list[tuple[int, int]] = []
    same = 0
    for p in earlier:  # the latest first: each byte counts for the tensor that held it last
        lo, hi = max(off, p.offset), min(end, p.offset + p.nbytes)
        new = hi - lo
        for clo, chi in covered:
            new -= max(0, min(hi, chi) - max(lo, clo))
        if p.reader == s.writer != "":
            same += max(new, 0)
        covered.append((lo, hi))
    return same, (earlier[0].last if earlier else -1)


def _first_fit(slots: list[_Slot], reuse: str = "first") -> int:
    """Arena offsets: the largest tensors first, each at an aligned offset that overlaps no placed tensor alive at
    the same time (both ends inclusive: a kernel's output never shares bytes with its inputs). Returns the arena
    size.

    `reuse="first"`: the lowest such offset. `reuse="affine"` (`ENV_ARENA_REUSE`): among the offsets that end
    within two tensor sizes of the lowest one (and not above the arena so far, unless the lowest does), the one
    with the most bytes whose latest earlier tensor was last read by the kernel that writes this one (the same
    threads touched those cache lines last, with the same partition: a depthwise conv then writes lines its own
    core holds, not lines a pointwise GEMM just read from both cores), then the one whose latest earlier tensor
    was freed most recently (warm lines), then the lowest. Per step: a later tensor may still end higher."""
    placed: list[_Slot] = []
    for s in sorted(slots, key=lambda s: (-s.nbytes, s.first)):
        busy = sorted((p.offset, p.offset + p.nbytes) for p in placed if p.first <= s.last and s.first <= p.last)
        off = 0
        for lo, hi in busy:
            if off + s.nbytes <= lo:
                break
            off = max(off, _align(hi))
        if reuse == "affine" and placed:
            limit = min(max(off + s.nbytes, max(p.offset + p.nbytes for p in placed)), off + 2 * _align(s.nbytes))
            best = None
            for cand in sorted({0, *(_align(p.offset + p.nbytes) for p in placed), *(p.offset for p in placed)}):
                end = cand + s.nbytes
                if end > limit or any(lo < end and cand < hi for lo, hi in busy):
                    continue
                score = (*_affinity(s, cand, placed), -cand)
                if best is None or score > best[0]:
                    best = (score, cand)
            if best is not None:
                off = best[1]
        s.offset = off
        placed.append(s)
    return max((_align(p.offset + p.nbytes) for p in placed), default=0)


def _plan(mod: Any, main: Any) -> _Plan:
    """The kernel calls of `main` with the bytes each argument lives in; `_NotApplicable` if it is not a straight
    line of kernel calls."""
    import tvm
    from tvm import relax, tirx

    call_tir = tvm.ir.Op.get("relax.call_tir")
    reshape = tvm.ir.Op.get("relax.reshape")
    where: dict[Any, tuple[_Slot, tuple[int, ...], str]] = {}  # relax var -> (slot, shape, dtype)
    for i, p in enumerate(main.params):
        where[p] = (_Slot("param", i), *_static(p.ty, f"parameter {p.name}"))
    plan = _Plan()
    const_slot: dict[Any, _Slot] = {}
    arena: list[_Slot] = []
    body = main.body
    if not isinstance(body, relax.SeqExpr):
        raise _NotApplicable("main's body is not a sequence of bindings")
    for block in body.blocks:
        for b in block.bindings:
            if not isinstance(b, relax.VarBinding):
                raise _NotApplicable(f"{type(b).__name__} {b.var.name}")
            v = b.value
            if isinstance(v, relax.Var) and v in where:
                where[b.var] = where[v]
            elif isinstance(v, relax.Call) and v.op == reshape and isinstance(v.args[0], relax.Var) \
                    and v.args[0] in where:
                slot, shape, dtype = where[v.args[0]]
                new_shape, new_dtype = _static(b.var.ty, f"reshape {b.var.name}")
                if _nbytes(new_shape, new_dtype) != _nbytes(shape, dtype):
                    raise _NotApplicable(f"reshape {b.var.name} changes the size")
                where[b.var] = (slot, new_shape, new_dtype)
            elif isinstance(v, relax.Call) and v.op == call_tir and len(v.args) == 2:
                gv = v.args[0]
                func = mod[gv]
                if not isinstance(func, tirx.PrimFunc):
                    raise _NotApplicable(f"call_tir of {gv.name_hint}, not a PrimFunc")
                n = len(plan.calls)
                args = []
                for a in v.args[1].fields:
                    if isinstance(a, tvm.ir.Constant):
                        key = next((k for k in const_slot if k.same_as(a)), None)
                        if key is None:
                            const_slot[a] = _Slot("const", len(plan.consts))
                            plan.consts.append(a.value.numpy())
                            key = a
                        args.append((const_slot[key], *_static(a.ty, "a constant")))
                    elif isinstance(a, relax.Var) and a in where:
                        slot, shape, dtype = where[a]
                        slot.last = max(slot.last, n)
                        slot.reader = _symbol(func, gv.name_hint)
                        args.append((slot, shape, dtype))
                    else:
                        raise _NotApplicable(f"argument {a} of {gv.name_hint}")
                shape, dtype = _static(b.var.ty, f"output of {gv.name_hint}")
                out = _Slot("arena", nbytes=_nbytes(shape, dtype), first=n, last=n, writer=_symbol(func, gv.name_hint))
                arena.append(out)
                where[b.var] = (out, shape, dtype)
                if len(args) + 1 != len(func.params):
                    raise _NotApplicable(f"{gv.name_hint} takes {len(func.params)} buffers, called with "
                                         f"{len(args) + 1}")
                plan.calls.append((_symbol(func, gv.name_hint), gv, [*args, (out, shape, dtype)]))
            else:
                raise _NotApplicable(f"binding {b.var.name} = {type(v).__name__} {getattr(v, 'op', '')}")
    ret = body.body
    if not isinstance(ret, relax.Var) or ret not in where:
        raise _NotApplicable("main does not return one tensor variable")
    slot, _, _ = where[ret]
    if slot.kind != "arena":
        raise _NotApplicable("main returns a parameter or a constant, not a kernel's output")
    slot.kind = "out"  # the kernel writes the driver's output buffer directly
    if not plan.calls:
        raise _NotApplicable("main calls no kernel")
    plan.arena_bytes = max(_first_fit([s for s in arena if s.kind == "arena"], arena_reuse()), ALIGN)
    off, parts = 0, []
    for i, c in enumerate(plan.consts):
        nxt = _align(off)
        parts.append(np.zeros(nxt - off, np.uint8))
        next(s for s in const_slot.values() if s.index == i).offset = nxt
        raw = np.ascontiguousarray(c).view(np.uint8).reshape(-1)
        parts.append(raw)
        off = nxt + raw.size
    plan.blob = np.concatenate(parts + [np.zeros(_align(off) - off + ALIGN, np.uint8)])
    return plan


def finite_in_quantize() -> bool:
    """Whether `ENV_FINITE_IN_QUANTIZE` folds the input's finiteness check into its quantize (the default);
    `ConfigError` for a value other than "", "0" or "1"."""
    import os

    from qcompile.errors import ConfigError

    raw = os.environ.get(ENV_FINITE_IN_QUANTIZE, "")
    if raw not in ("", "0", "1"):
        raise ConfigError(ENV_FINITE_IN_QUANTIZE, raw, "'1' or unset (check in the quantize), '0' (a separate check)")
    return raw != "0"


def quantize_checks_input(kernels: dict, plan: _Plan, i: int, dtype: str) -> tuple[Any, Any] | None:
    """`(GlobalVar, PrimFunc)`: a kernel of `plan` that quantizes all of main's input `i` (its first buffer is the
    input, whole; its PrimFunc carries `emitter.QUANTIZE_ATTR`), rebuilt as `kernels.quantize_checked`, which
    fails on NaN or inf as `finite_check` does and computes the same codes: the driver then reads the input once
    (MobileNetV2 224: 8.4 us of serial check before a 602 KB quantize at 2 threads, session 15's profile). Its
    loop is parallel over the target's thread count where the default schedule would make the quantize parallel
    (`parallel.estimated_us`, kind "naive"). None where no kernel qualifies (the driver keeps its `finite_check`).

    The check may run in any kernel, not only before the first: a failed check fails the driver call, whose
    output is then never returned (`Lowered.__call__` raises the input check's ConfigError)."""
    import tvm

    from qcompile.backends.tvm.emitter import QUANTIZE_ATTR
    from qcompile.backends.tvm.kernels import quantize_checked
    from qcompile.backends.tvm.schedules.parallel import estimated_us, min_parallel_us
    from qcompile.backends.tvm.threads import target_threads

    for _, gv, args in plan.calls:
        f = kernels[gv]
        consts = (f.attrs or {}).get(QUANTIZE_ATTR)
        slot = args[0][0]
        if consts is None or slot.kind != "param" or slot.index != i or len(f.params) != 2:
            continue
        x, y = f.params
        shape, out_shape = [int(v) for v in x.shape], [int(v) for v in y.shape]
        n = int(np.prod(shape, dtype=np.int64))
        if str(x.dtype) != dtype or str(y.dtype) != "uint8" or int(np.prod(out_shape, dtype=np.int64)) != n:
            continue
        tgt = tvm.target.Target.current(allow_none=True)
        threads = (target_threads(tgt) if tgt is not None else None) or 1
        chunks = threads if estimated_us(n, "naive") >= min_parallel_us() else 1
        new = quantize_checked(shape, dtype, float(consts[0]), float(consts[1]), int(float(consts[2])), chunks,
                               out_shape=out_shape)
        if new is not None:
            return gv, new.with_attrs({**dict(f.attrs), "tirx.noalias": True})
    return None


def finite_check(n: int, dtype: str, name: str, chunks: int = 1, align: int = ALIGN) -> Any:
    """A PrimFunc that fails (TVM raises `RuntimeError`) when a value of its flat `dtype` buffer of `n` values is
    NaN or inf.

    On the integer bits (`reinterpret`), not with float compares, so fast-math flags cannot fold it away: the
    maximum of the sign-cleared bits against the all-ones exponent (IEEE 754), one vectorised pass (`vpmaxud` on
    znver4: 0.09 us for the demo's 3,072 floats, against about 1 us for the BLAS-dot test of
    `Lowered._ready_input` from Python). `dtype` is a key of `kernels.FINITE_BITS`. `chunks > 1`: a parallel loop over
    that many contiguous chunks, each with its own maximum (64 bytes apart: no shared cache line), tested together
    after the join. `align`: the byte alignment it may assume of `x` (its buffer's `data_alignment`, which the
    packed API marks on the pointer and LLVM turns into aligned vector loads)."""
    from tvm.script import tirx as T

    from qcompile.backends.tvm.kernels import FINITE_BITS

    udt, exp_mask = FINITE_BITS[dtype]
    abs_mask = (1 << (8 * np.dtype(dtype).itemsize - 1)) - 1
    if chunks <= 1:
        @T.prim_func
        def check(x: T.Buffer((n,), dtype, align=align)):
            acc = T.alloc_buffer((1,), udt, scope="local")
            acc[0] = T.Cast(udt, 0)
            for i in range(n):
                acc[0] = T.max(acc[0], T.bitwise_and(T.reinterpret(udt, x[i]), T.Cast(udt, abs_mask)))
            assert acc[0] < T.Cast(udt, exp_mask), "input: a non-finite value (NaN or inf)"

        return check.with_attr("global_symbol", name)
    step = -(-n // chunks)
    stride = max(1, 64 // np.dtype(udt).itemsize)

    @T.prim_func
    def check_chunks(x: T.Buffer((n,), dtype, align=align)):
        accs = T.alloc_buffer((chunks * stride,), udt)
        for c in T.parallel(chunks):
            acc = T.alloc_buffer((1,), udt, scope="local")
            acc[0] = T.Cast(udt, 0)
            for i in range(T.min(step, n - c * step)):
                acc[0] = T.max(acc[0], T.bitwise_and(T.reinterpret(udt, x[c * step + i]), T.Cast(udt, abs_mask)))
            accs[c * stride] = acc[0]
        top = T.alloc_buffer((1,), udt, scope="local")
        top[0] = T.Cast(udt, 0)
        for c in range(chunks):
            top[0] = T.max(top[0], accs[c * stride])
        assert top[0] < T.Cast(udt, exp_mask), "input: a non-finite value (NaN or inf)"

    return check_chunks.with_attr("global_symbol", name)


#: suffix of a kernel's `direct_body` (a private function: no exported symbol)
DIRECT_SUFFIX = "_direct"
#: PrimFunc attribute of a `direct_body`: `PrivateDirectBodies` keeps it without a global symbol
DIRECT_BODY_ATTR = "qcompile.direct_body"
#: PrimFunc attribute of a `direct_body`: the indices of its pointers that may be unaligned (a main input the
#: driver passes where the caller's array lies); `DirectBodyDevice` gives them no 64-byte alignment
UNALIGNED_ATTR = "qcompile.unaligned_params"


def direct_body(func: Any, unaligned: tuple[int, ...] = ()) -> Any:
    """Kernel `func`'s computation as a private PrimFunc of its buffers' data pointers, in parameter order: no
    packed API (TVM's `MakePackedAPI` only wraps functions with a global symbol), so a call is a plain C call.

    The packed API of an exported kernel reads each argument's type code and DLTensor and checks its ndim, dtype,
    shape, strides, offset and device before the body runs: about 30-40 ns per kernel call on Zen 4 with the
    DLTensors the driver builds for it (about 4 us of the demo subnet's 104 calls: docs/benchmarks_demo.md,
    "Per-call overhead, session 15"). The driver passes pointers into buffers it planned for exactly these static
    shapes and dtypes, 64-byte aligned (`ALIGN`), so the checks cannot fail there. Each buffer parameter is
    re-declared over its pointer (`DeclBuffer`, as `views._retype_params` does), so the body is unchanged.
    `unaligned`: the parameters (indices) the driver may pass unaligned: a main input, taken where the caller's
    array lies (`UNALIGNED_ATTR`)."""
    from tvm import ir, s_tir, tirx

    ptrs = [ir.Var(f"{p.name}_ptr", ir.PointerType(ir.PrimType(str(p.dtype)))) for p in func.params]
    decls = [tirx.DeclBuffer(p, data=q) for p, q in zip(func.params, ptrs)]
    body = func.body
    if isinstance(body, s_tir.SBlockRealize):  # inside the root block, where the blocks that use the buffers live
        blk = body.block
        body = s_tir.SBlockRealize(body.iter_values, body.predicate, s_tir.SBlock(
            blk.iter_vars, blk.reads, blk.writes, blk.name_hint, tirx.SeqStmt([*decls, blk.body]), blk.init,
            blk.alloc_buffers, blk.match_buffers, blk.annotations))
    else:
        body = tirx.SeqStmt([*decls, body])
    # `tirx.noalias` kept: the kernel is compiled as under its packed API (`DirectBodyDevice` keeps it out of
    # the driver, where TVM's per-buffer TBAA tags would be wrong)
    attrs = {k: v for k, v in (func.attrs or {}).items() if k != "global_symbol"} | {DIRECT_BODY_ATTR: True}
    if unaligned:
        attrs[UNALIGNED_ATTR] = sorted(int(i) for i in unaligned)
    # int32: 0, or -1 after a failed workspace allocation (TVM's error convention; `DirectBodyDevice` adds the
    # `return 0`, `direct_call` checks it)
    return tirx.PrimFunc(ptrs, body, ir.PrimType("int32"), ir.make_node("ir.DictAttrs", **attrs))


def direct_call(gv: Any, pointers: list) -> Any:
    """`gv(*pointers)` as a TIR statement: a direct call of a `direct_body`, whose error (a nonzero result: TVM's
    last error is set) the caller returns as its own."""
    from tvm import ir, tirx

    call = ir.Call(gv, pointers, ret_ty=ir.PrimType("int32"))
    return tirx.IfThenElse(tirx.NE(call, tirx.const(0, "int32")),
                           tirx.Evaluate(tirx.call_intrin("int32", "tirx.tvm_throw_last_error")), None)


def _through_direct_body(func: Any, gv_body: Any) -> Any:
    """Exported kernel `func` as its packed API around a call of its `direct_body`: one copy of the code, which
    the per-kernel table (`Lowered.benchmark`) still times through the kernel's own symbol."""
    from tvm import tirx

    call = direct_call(gv_body, [tirx.buffer.buffer_data(p) for p in func.params])
    return tirx.PrimFunc(list(func.params), call, func.ret_type, func.attrs)


def _driver_primfunc(plan: _Plan, params: list, out_ty: tuple, checks: dict[int, str] | None = None,
                     direct: dict | None = None, profile: bool = False, in_kernel: list[int] | None = None,
                     in_align: int = ALIGN) -> Any:
    """The TIR driver: parameters (main's inputs..., blob, out, arena), one call per kernel, after one
    `tvm_call_cpacked` per `checks` entry (parameter index -> symbol of its `finite_check`; `in_kernel`: the inputs a
    kernel checks instead, `quantize_checks_input`). A kernel in `direct`
    (its GlobalVar -> the GlobalVar of its `direct_body`) is called there with its data pointers
    (`direct_call`); any other through its packed API
    (`tvm_call_cpacked`).

    `profile`: the profiling twin (`PROFILE_NAME`): one more parameter, `stamps` (int64, one per call + 1), and
    `llvm.readcyclecounter` (`rdtsc` on x86: an invariant TSC on `constant_tsc nonstop_tsc` CPUs) stored before
    every call and after the last, so stamp i+1 - stamp i is call i's time inside the network (its input written
    by the previous kernel, its weights wherever the previous calls left them). `rdtsc` is not serialising: a
    stamp may run a few dozen cycles early or late, noise against kernels of microseconds.

    `in_align`: the byte alignment the driver assumes of main's inputs (`DRIVER_INPUT_ALIGN_ATTR`)."""
    from tvm import tirx

    ins = [tirx.decl_buffer(shape, dtype, f"in{i}", data_alignment=min(in_align, ALIGN))
           for i, (shape, dtype) in enumerate(params)]
    blob = tirx.decl_buffer((int(plan.blob.size),), "uint8", "blob")
    out = tirx.decl_buffer(out_ty[0], out_ty[1], "out")
    arena = tirx.decl_buffer((plan.arena_bytes,), "uint8", "arena")

    def pointer(slot: _Slot) -> Any:
        if slot.kind == "param":
            return ins[slot.index].data
        if slot.kind == "out":
            return out.data
        base = arena if slot.kind == "arena" else blob
        return tirx.address_of(tirx.BufferLoad(base, [tirx.IntImm("int32", slot.offset)]))

    n_calls = len(checks or {}) + len(plan.calls)
    stamps = tirx.decl_buffer((n_calls + 1,), "int64", "stamps") if profile else None
    stmts = []

    def stamp() -> None:
        if stamps is not None:
            stmts.append(_stamp(stamps, len(stmts) // 2))

    def call(symbol: str, *arrays: Any) -> None:
        stamp()
        stmts.append(tirx.Evaluate(tirx.call_cpacked(symbol, *arrays)))

    for i, symbol in (checks or {}).items():
        n = int(np.prod(params[i][0], dtype=np.int64))
        call(symbol, tirx.tvm_stack_make_array(ins[i].data, tirx.tvm_stack_make_shape(n), 0, 1,
                                               tirx.const(0, params[i][1]), 0))
    for symbol, gv, args in plan.calls:
        if gv in (direct or {}):
            stamp()
            stmts.append(direct_call(direct[gv], [pointer(slot) for slot, _, _ in args]))
            continue
        call(symbol, *[
            tirx.tvm_stack_make_array(pointer(slot), tirx.tvm_stack_make_shape(*shape) if shape else 0, 0,
                                      len(shape), tirx.const(0, dtype), 0)
            for slot, shape, dtype in args
        ])
    if stamps is not None:
        stmts.append(_stamp(stamps, n_calls))
    bufs = [*ins, blob, out, arena] + ([stamps] if stamps is not None else [])
    func = tirx.PrimFunc(bufs, tirx.SeqStmt(stmts) if len(stmts) > 1 else stmts[0])
    return func.with_attrs({"global_symbol": PROFILE_NAME if profile else DRIVER_NAME,
                            DRIVER_CALLS_ATTR: [s for s, _, _ in plan.calls],
                            DRIVER_CHECKS_ATTR: sorted([*(checks or {}), *(in_kernel or ())]),
                            DRIVER_KERNEL_CHECKS_ATTR: list(in_kernel or ()),
                            DRIVER_INPUT_ALIGN_ATTR: int(in_align)})


def _stamp(stamps: Any, i: int) -> Any:
    """`stamps[i] = llvm.readcyclecounter()` (x86: `rdtsc`)."""
    from tvm import tirx

    return tirx.BufferStore(stamps, tirx.call_llvm_intrin("int64", "llvm.readcyclecounter"),
                            [tirx.IntImm("int32", i)])


def _x86_target() -> bool:
    """Whether the target in scope is x86-64, where `llvm.readcyclecounter` is `rdtsc` (user mode; on AArch64 it
    reads PMCCNTR_EL0, which traps unless the kernel allows it, so no ARM library gets the profiling twin)."""
    import tvm

    tgt = tvm.target.Target.current(allow_none=True)
    if tgt is None or tgt.kind.name != "llvm":
        return False
    triple = str(tgt.attrs.get("mtriple", "") or "")
    if triple:
        return triple.startswith(("x86_64", "amd64"))
    import platform

    return platform.machine().lower() in ("x86_64", "amd64")


def _add_kernels(out: Any, kernels: dict, direct_calls: bool, unaligned: dict | None = None) -> dict:
    """Add the driver's kernels (GlobalVar -> PrimFunc with its exported symbol) to module `out`; with
    `direct_calls`, each as its `direct_body` (`unaligned`: GlobalVar -> the indices of its parameters that may
    be unaligned) plus the exported packed API around a call of it. Returns {kernel GlobalVar: its direct body's
    GlobalVar} (empty without `direct_calls`)."""
    import tvm

    direct = {}
    for gv, f in kernels.items():
        if direct_calls:
            gv_body = tvm.ir.GlobalVar(f"{f.attrs['global_symbol']}{DIRECT_SUFFIX}")
            out[gv_body] = direct_body(f, tuple((unaligned or {}).get(gv, ())))
            f = _through_direct_body(f, gv_body)
            direct[gv] = gv_body
        out[gv] = f
    return direct


def native_driver(mod: Any, direct_calls: bool = True, profile: bool = True, fold_checks: bool | None = None) -> Any:
    """`mod` with `main`'s kernel calls moved into one TIR driver (see the module docstring); `mod` unchanged
    when `main` is not a straight line of kernel calls over static shapes. Expects dataflow form, after
    `AbsorbReshapeViews`. The driver calls each kernel's `direct_body` (docs/benchmarks_demo.md, "Per-call
    overhead, session 15"); `direct_calls=False` through its packed API (`tvm_call_cpacked`), the figure before.
    `profile`: also compile the driver's profiling twin (`PROFILE_NAME`, for `Lowered.profile`; x86 only); the
    driver `main` calls is the same either way. `fold_checks`: an input's NaN/inf check in the kernel that
    quantizes it (`quantize_checks_input`) where one does, instead of a `finite_check` call; None reads
    `ENV_FINITE_IN_QUANTIZE` (default on)."""
    import tvm
    from tvm import relax

    from qcompile.backends.tvm.kernels import FINITE_BITS

    main = mod["main"]
    try:
        plan = _plan(mod, main)
    except _NotApplicable as e:
        log.info("native driver not used, the Relax VM runs the kernels: %s", e)
        return mod
    params = [_static(p.ty, p.name) for p in main.params]
    out_ty = _static(main.body.body.ty, "the result")
    checks = {i: f"{DRIVER_NAME}_finite{i}" for i, (_, dtype) in enumerate(params) if dtype in FINITE_BITS}
    # the kernels are now called by symbol only: an exported symbol keeps each one (and its per-kernel timing)
    # through dead-code elimination
    kernels = {gv: mod[gv].with_attr("global_symbol", sym) for sym, gv, _ in plan.calls}
    out = tvm.IRModule({gv: f for gv, f in mod.functions.items() if gv not in kernels and gv.name_hint != "main"},
                       attrs=mod.attrs)
    in_kernel = []
    fold = finite_in_quantize() if fold_checks is None else fold_checks
    for i in list(checks) if fold else ():
        found = quantize_checks_input(kernels, plan, i, params[i][1])
        if found is not None:
            kernels[found[0]] = found[1]
            in_kernel.append(i)
            del checks[i]
    unaligned: dict = {}
    for _, gv, args in plan.calls:
        unaligned.setdefault(gv, set()).update(j for j, (slot, _, _) in enumerate(args) if slot.kind == "param")
    in_align = min((np.dtype(d).itemsize for _, d in params), default=ALIGN) if direct_calls else ALIGN
    direct = _add_kernels(out, kernels, direct_calls, unaligned)
    for i, symbol in checks.items():
        out[tvm.ir.GlobalVar(symbol)] = finite_check(int(np.prod(params[i][0], dtype=np.int64)), params[i][1], symbol,
                                                     align=in_align)
    driver = _driver_primfunc(plan, params, out_ty, checks, direct, in_kernel=in_kernel, in_align=in_align)
    if profile and _x86_target():  # compiled and exported beside the driver (its global symbol keeps it through DCE)
        out[tvm.ir.GlobalVar(PROFILE_NAME)] = _driver_primfunc(plan, params, out_ty, checks, direct, profile=True,
                                                               in_kernel=in_kernel, in_align=in_align)
    bb = relax.BlockBuilder(out)
    gv_driver = bb.add_func(driver, DRIVER_NAME)
    new_params = [relax.Var(p.name, p.ty) for p in main.params]
    blob = relax.const(plan.blob)
    with bb.function("main", new_params, attrs=dict(main.attrs or {}), private=False):
        with bb.dataflow():
            res = bb.emit(relax.call_tir(gv_driver, [*new_params, blob], [
                relax.TensorType(out_ty[0], out_ty[1]), relax.TensorType((plan.arena_bytes,), "uint8")]))
            y = bb.emit_output(relax.TupleGetItem(res, 0))
        bb.emit_func_output(y)
    # the blob as a VM function's result (the constant itself, no copy): `Lowered.__call__` calls the driver
    # directly with it, out of the VM
    with bb.function(DRIVER_BLOB_NAME, [], private=False):
        bb.emit_func_output(blob)
    log.info("native driver: %d kernel calls, arena %d bytes, %d constants in a %d-byte blob", len(plan.calls),
             plan.arena_bytes, len(plan.consts), plan.blob.size)
    return bb.get()


def driver_info(mod: Any) -> dict | None:
    """The driver of a lowered module: {"calls": kernel symbols in call order, "arena_bytes", "blob_bytes",
    "finite_checked" (main's inputs the driver refuses NaN/inf in), "finite_in_kernel" (those of them a kernel
    checks, not a `finite_check` call), "profile" (whether its profiling twin is compiled beside it), "input_align"
    (the byte alignment it needs of main's inputs, `DRIVER_INPUT_ALIGN_ATTR`)}; None without a driver."""
    names = {gv.name_hint for gv in mod.functions}
    for gv, f in mod.functions.items():
        if gv.name_hint == DRIVER_NAME and f.attrs is not None and DRIVER_CALLS_ATTR in f.attrs:
            params = list(f.params)
            checked = f.attrs.get(DRIVER_CHECKS_ATTR, [])
            in_kernel = f.attrs.get(DRIVER_KERNEL_CHECKS_ATTR, [])
            return {"calls": [str(s) for s in f.attrs[DRIVER_CALLS_ATTR]],
                    "arena_bytes": int(params[-1].shape[0]), "blob_bytes": int(params[-3].shape[0]),
                    "finite_checked": [int(i) for i in checked], "finite_in_kernel": [int(i) for i in in_kernel],
                    "profile": PROFILE_NAME in names,
                    "input_align": int(f.attrs.get(DRIVER_INPUT_ALIGN_ATTR, ALIGN))}
    return None


#: the TIR pipeline `lower_integer_graph` builds with (`relax.build(..., tir_pipeline=...)`, `tir_pipeline()`)
TIR_PIPELINE = "qcompile.driver"


def tir_pipeline() -> str:
    """The name of TVM's default TIR pipeline followed by `DirectBodyDevice`, registered with TVM on first use
    (`tvm.tirx.compilation_pipeline.register_tir_pipeline`)."""
    import tvm
    from tvm.tirx import compilation_pipeline as cp

    if TIR_PIPELINE not in cp.PIPELINE_MAP:
        def factory(**kwargs: Any) -> tuple:
            pipe, finalize_host, finalize_device = cp.get_tir_pipeline("default", **kwargs)
            return tvm.transform.Sequential([pipe, DirectBodyDevice()]), finalize_host, finalize_device

        cp.register_tir_pipeline(TIR_PIPELINE, factory)
    return TIR_PIPELINE


def DirectBodyDevice() -> Any:  # noqa: N802 (a TVM pass constructor, named like TVM's)
    """Each `direct_body` in the scopes `MakePackedAPI` gives an exported kernel's body, after the TIR pipeline
    has hoisted the body's allocations to its top:

    - the device scope (CPU, device 0: the driver's buffers are host memory): `LowerTVMBuiltin` turns a scratch
      buffer above 1 KiB into a workspace allocation on that device;
    - the compute scope: TVM's CPU codegen (`CodeGenCPU::CreateComputeScope`) emits the body as its own `noinline`
      LLVM function with `noalias` pointer parameters, as it does an exported kernel's `<name>_compute_`. Without
      it LLVM inlines the bodies into the driver, where the TBAA type TVM gives each buffer variable
      (`CodeGenLLVM::AddAliasInfo`, one per buffer with `tirx.noalias`) tells it that a kernel's load from arena
      bytes cannot see the previous kernel's store to them: GVN then reused a rescale's loads across the lut
      between two calls of it (`test_tvm_lower_x86.py::test_absorbed_views_keep_every_kernel_name`, 254 of 256
      values wrong);
    - each pointer's 64-byte alignment (`storage_alignment`, what the packed API asserts of its buffers and the
      driver's plan guarantees), which the compute scope's parameters carry as `align 64`; not for the pointers
      in `UNALIGNED_ATTR` (a main input, the caller's array), which LLVM then loads with the element's
      alignment (`CodeGenLLVM::GetAlignment` without storage info)."""
    import tvm
    from tvm import ir, tirx

    @tvm.transform.module_pass(opt_level=0, name="qcompile.DirectBodyDevice")
    def _pass(mod: Any, _ctx: Any) -> Any:
        ctx = ir.StringImm("default")
        out = mod
        for gv, f in mod.functions.items():
            if isinstance(f, tirx.PrimFunc) and f.attrs is not None and DIRECT_BODY_ATTR in f.attrs:
                # the return after the scope: an allocation's free ends its scope (in it, it would never run)
                body = tirx.AttrStmt(tirx.const(0, "int32"), "compute_scope",
                                     ir.StringImm(f"{gv.name_hint}_compute_"), f.body)
                body = tirx.AttrStmt(ctx, "device_id", tirx.const(0, "int32"),
                                     tirx.AttrStmt(ctx, "device_type", tirx.const(1, "int32"), body))
                loose = {int(i) for i in f.attrs.get(UNALIGNED_ATTR, [])}
                for j, p in enumerate(f.params):
                    if j not in loose:
                        body = tirx.AttrStmt(p, "storage_alignment", tirx.const(ALIGN, "int32"), body)
                body = tirx.SeqStmt([body, tirx.Return(tirx.const(0, "int32"))])
                if out is mod:
                    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
                out[gv] = tirx.PrimFunc(list(f.params), body, f.ret_type, f.attrs)
        return out

    return _pass


def PrivateDirectBodies() -> Any:  # noqa: N802 (a TVM pass constructor, named like TVM's)
    """Drop the global symbol Relax's `AttachGlobalSymbol` gives every PrimFunc from the `direct_body` functions,
    after it: without one, TVM's `MakePackedAPI` leaves a function's parameters as they are (plain pointers, a
    direct call) and the library exports no symbol for it."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="qcompile.PrivateDirectBodies")
    def _pass(mod: Any, _ctx: Any) -> Any:
        out = mod
        for gv, f in mod.functions.items():
            if f.attrs is not None and DIRECT_BODY_ATTR in f.attrs and "global_symbol" in f.attrs:
                if out is mod:
                    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
                out[gv] = f.without_attr("global_symbol")
        return out

    return _pass


def NativeDriver(direct_calls: bool = True, profile: bool = True) -> Any:  # noqa: N802 (a TVM pass constructor, named like TVM's)
    """`native_driver` as a module pass."""
    import tvm

    fold = finite_in_quantize()  # read here: a bad value is a ConfigError before any pass runs

    @tvm.transform.module_pass(opt_level=0, name="qcompile.NativeDriver")
    def _pass(mod: Any, _ctx: Any) -> Any:
        return native_driver(mod, direct_calls, profile, fold_checks=fold)

    return _pass


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data is `ALIGN`-byte aligned: the driver's arena, output and
    input buffers (TVM's DLPack import and the kernels' buffers require it)."""
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(n + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + n].view(dtype).reshape(shape)


#: Environment variable: "1" puts the driver's constant blob (a copy of the library's, +blob bytes of memory) and
#: arena on transparent huge pages when `Lowered` binds the driver (`huge_empty`); "0", unset or "" (the default)
#: keeps the library's constant and a plain `aligned_empty` arena (4 KiB pages). Off by default: on the Zen 3 host
#: (AVX2, 2 vCPUs, load 9-13) two interleaved 1-thread runs of MobileNetV2 gave sums of in-network call minima
#: 9409 -> 9322 us and 9192 -> 9290 us, no effect beyond the noise (docs/peers.md, session 17, engineer D)
ENV_HUGE_PAGES = "QCOMPILE_HUGE_PAGES"
#: x86-64's transparent huge page (2 MiB): `huge_empty`'s alignment and size granule
HUGE_PAGE = 2 << 20


def huge_pages() -> bool:
    """Whether `Lowered` binds the driver's blob and arena on huge pages (`ENV_HUGE_PAGES`, off unless "1");
    `ConfigError` for a value other than "", "0" or "1"."""
    import os

    from qcompile.errors import ConfigError

    raw = os.environ.get(ENV_HUGE_PAGES, "")
    if raw not in ("", "0", "1"):
        raise ConfigError(ENV_HUGE_PAGES, raw, '"1" (huge pages), "0" or unset (4 KiB pages, the default)')
    return raw == "1"


def huge_empty(nbytes: int) -> np.ndarray:
    """A zeroed uint8 array of `nbytes` at the start of an anonymous mapping aligned to `HUGE_PAGE` and rounded up
    to whole huge pages, advised `MADV_HUGEPAGE` before its first touch: with transparent huge pages in `madvise`
    (or `always`) mode the kernel backs it with 2 MiB pages, so the driver's 7 MB MobileNetV2 blob takes 4 TLB
    entries instead of ~1750 (madvise(2), Documentation/admin-guide/mm/transhuge.rst). Where the kernel has no
    `MADV_HUGEPAGE` (not Linux) or refuses it, the mapping stays on small pages, which every kernel reads the
    same: only the speed differs. The array keeps its mapping alive (numpy holds the buffer)."""
    import mmap

    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or nbytes < 0:
        from qcompile.errors import ConfigError

        raise ConfigError("nbytes", nbytes, "a non-negative byte count")
    size = max(-(-int(nbytes) // HUGE_PAGE), 1) * HUGE_PAGE
    m = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    raw = np.frombuffer(m, np.uint8)
    start = -raw.ctypes.data % HUGE_PAGE
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        try:
            m.madvise(advice, start, size)
        except OSError as e:  # THP compiled out of the kernel: 4 KiB pages, same bytes
            log.debug("madvise(MADV_HUGEPAGE) refused (%s): the blob and arena stay on 4 KiB pages", e)
    out = raw[start:start + int(nbytes)]
    out.fill(0)  # first touch after the advice: the faults allocate huge pages
    return out
