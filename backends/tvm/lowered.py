"""`lower_integer_graph` (IntegerGraph -> compiled TVM library) and the `Lowered` object.

A `Lowered` runs the compiled Relax VM library: natively for x86 (and aarch64 hosts), under
`qemu-aarch64` through the C++ runner for arm_cpu on an x86 host (`qemu.py`), or on a real board
through TVM RPC (`benchmark(remote="host:port")`, `run_remote`). `export(dir)` writes, atomically,
`lib.so` (the library; weights are Relax constants inside it), `program/` (the IntegerGraph it was
compiled from: its weights as safetensors, so the library can be rebuilt and checked against the
reference) and `metadata.json` (target, shapes, kernels, config, policy, versions). Where the program is a
straight line of static-shaped kernel calls, `main` makes one call, to a native driver that calls every
kernel (`driver.py`, `meta["driver"]`).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qcompile.backends.tvm.driver import aligned_empty, huge_empty, huge_pages
from qcompile.backends.tvm.emitter import emit_relax
from qcompile.backends.tvm.pipeline import Pipeline, build_pass, default_pipeline
from qcompile.backends.tvm.targets import TargetSpec, resolve_target
from qcompile.backends.tvm.threads import ensure_thread_default
from qcompile.backends.tvm.tvm_log import quiet_scope_warnings
from qcompile.config import SubnetConfig
from qcompile.errors import CheckpointError, ConfigError, LoweringError
from qcompile.ops.graph import IntegerGraph
from qcompile.ops.meta import program_meta

if TYPE_CHECKING:
    from qcompile.backends.tvm.profile import NetworkProfile

log = logging.getLogger(__name__)

__all__ = ["Lowered", "BenchmarkResult", "lower_integer_graph", "emitted_kernels", "load", "FORMAT_VERSION"]

FORMAT_VERSION = 1
LIB_NAME = "lib.so"
#: byte alignment TVM requires of a tensor imported through DLPack (kAllocAlignment)
_ALIGN = 64
#: input buffers a dynamic-batch library keeps bound, one per recent batch size
_BOUND_SHAPES = 4
#: inputs up to this many values take the one-dot finiteness test of `Lowered._ready_input` (OpenBLAS threads
#: a longer dot)
_DOT_CHECK_MAX = 8192
#: `Lowered.__call__` calls the native driver directly and returns a copy of its output buffer up to this many
#: bytes (a 64 KiB copy: 1.5 us on Zen 4, less than the ~3 us `main` adds to the driver by its allocations
#: and `np.from_dlpack`; a larger output keeps `main` and its fresh output tensor)
_COPY_OUT_MAX = 1 << 16
_copyto = np.copyto  # a module global: one lookup less per call than `np.copyto`
#: `Lowered.__call__` hands the driver the caller's own input array (no copy into the bound buffer) from this many
#: bytes on, where the driver takes unaligned inputs (`driver.DRIVER_INPUT_ALIGN_ATTR`): the DLPack import of the
#: caller's array and the packed API's checks of that fresh tensor cost ~1 us, a copy 0.7 us at 12 KiB (the
#: break-even, measured on the demo subnet), 0.95 at 32 KiB, 14.5 at MobileNetV2 224's 602 KB (Zen 4);
#: docs/peers.md, "session 16, engineer C"
ZERO_COPY_MIN_BYTES = 1 << 15


@dataclass(frozen=True)
class BenchmarkResult:
    """Latency statistics (ms) of `main` and a per-kernel table (one dict per PrimFunc, ms)."""

    mean_ms: float
    median_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    repeat: int
    where: str  # "local", "qemu (emulated, not device latency)", or "rpc host:port"
    kernels: tuple[dict, ...]

    def table(self) -> str:
        """The per-kernel table as text, slowest first."""
        rows = sorted(self.kernels, key=lambda r: -r["mean_ms"])
        total = sum(r["mean_ms"] for r in rows) or 1.0
        lines = [f"{'kernel':<48} {'op':<16} {'mean ms':>9} {'share':>6}"]
        for r in rows:
            lines.append(f"{r['name']:<48} {r['op']:<16} {r['mean_ms']:>9.4f} {100 * r['mean_ms'] / total:>5.1f}%")
        return "\n".join(lines)


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("qcompile", "apache-tvm", "apache-tvm-ffi", "numpy", "torch"):
        try:
            out[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _stats(ms: list[float]) -> dict[str, float]:
    return {
        "mean_ms": statistics.fmean(ms),
        "median_ms": statistics.median(ms),
        "std_ms": statistics.pstdev(ms) if len(ms) > 1 else 0.0,
        "min_ms": min(ms),
        "max_ms": max(ms),
    }


def _kernel_signatures(mod: Any) -> dict[str, list[tuple[list[int | str], str]]]:
    """PrimFunc name -> [(shape, dtype)] of its buffer parameters (for per-kernel timing); the symbolic batch of
    a `batch="dynamic"` library stays its name (`batch.BATCH_VAR`), filled in with the batch when timed."""
    from tvm import tirx

    from qcompile.backends.tvm.batch import BATCH_VAR
    from qcompile.backends.tvm.driver import DRIVER_NAME

    sigs = {}
    for gv, f in mod.functions.items():
        # the driver (and its input checks) runs the whole program, not a kernel of it
        if isinstance(f, tirx.PrimFunc) and not gv.name_hint.startswith(DRIVER_NAME):
            params = []
            for p in f.params:  # TVM 0.27: buffer parameters are Vars typed as buffers
                shape = getattr(p, "shape", None)
                if shape is None:
                    break
                try:
                    params.append(([s.name if isinstance(s, tirx.Var) and s.name == BATCH_VAR else int(s)
                                    for s in shape], str(p.dtype)))
                except TypeError:  # another symbolic shape: not timed on its own
                    break
            else:
                sigs[gv.name_hint] = params
    return sigs


def _random_arg(shape: list[int], dtype: str, rng: np.random.Generator, batch: int = 1) -> np.ndarray:
    shape = [batch if isinstance(d, str) else d for d in shape]  # the symbolic batch of a dynamic library
    if dtype.startswith("float"):
        return rng.standard_normal(shape).astype(dtype)
    # small non-negative integers keep shifts and table indices in range
    return rng.integers(1, 8, size=shape).astype(dtype)


#: the shift every channel gets in `kernel_timing_args`' requantize operands where the program's own are not given:
#: >= 32, the int32 tail of `requant_expr` that kernels branching per channel (x86 depthwise, `DW_SHIFT_BRANCH`)
#: take for most channels
TIMING_SHIFT = 36

#: a kernel's requantize operands as it takes them: (int64 bias term, int32 multiplier, int32 shift) per channel
RequantOperands = tuple[np.ndarray, np.ndarray, np.ndarray]


def kernel_timing_args(sig: list, rng: np.random.Generator, batch: int = 1,
                       requant: RequantOperands | None = None) -> list[np.ndarray]:
    """Arguments to time one kernel of signature `sig` ([(shape, dtype)]) alone: `_random_arg`'s small integers,
    except a requantize triple (an int64 vector followed by two int32 vectors of its length: bias term, multiplier,
    shift). `requant` (`program_requant_operands`: the network's own bias terms, multipliers and shifts) fills the
    first triple of its length, so a kernel whose epilogue depends on the shifts (the x86 depthwise kernels branch
    per channel below 32, `DW_SHIFT_BRANCH`; `preshift_operands` where it applies) runs what the network runs;
    without it every triple gets multipliers 2^30 and shifts `TIMING_SHIFT` (the int32 tail most channels take)."""
    args = [_random_arg(s, d, rng, batch) for s, d in sig]
    for i in range(len(sig) - 2):
        (s0, d0), (s1, d1), (s2, d2) = sig[i:i + 3]
        if (d0, d1, d2) == ("int64", "int32", "int32") and len(s0) == 1 and s0 == s1 == s2:
            if requant is not None and all(len(a) == s0[0] for a in requant):
                for j, (a, dt) in enumerate(zip(requant, (d0, d1, d2), strict=True)):
                    args[i + j] = np.asarray(a).astype(dt)
                requant = None  # the kernel's own triple; any later one (a fused step's) keeps the defaults
                continue
            args[i + 1] = np.full(args[i + 1].shape, 1 << 30, np.int32)
            args[i + 2] = np.full(args[i + 2].shape, TIMING_SHIFT, np.int32)
    return args


def program_requant_operands(meta: dict, program: IntegerGraph | None) -> dict[str, RequantOperands]:
    """PrimFunc name -> the requantize operands the network gives it: `requant.bias_term(bias, M, s, offset)`, `M`
    and `s` of the kernel's `requantize` node (x86 `strategy._bias_arg`'s bias term). A PrimFunc that several layers
    share (same workload) gets the operands of the first layer that calls it, the one `meta["kernels"]` lists it
    under. Empty without a program (a library lowered without one); kernels without a `requantize` node (or whose
    accumulator has no constant bias) are left out: `kernel_timing_args` gives them its defaults."""
    from qcompile.backends.tvm.schedules.requant import bias_term
    from qcompile.ops.graph import _fetch_attr

    if program is None:
        return {}
    nodes = {n.name: n for n in program.graph.nodes}

    def const(a: Any) -> np.ndarray | None:
        if getattr(a, "op", None) != "get_attr":
            return None
        return _fetch_attr(program, a.target).detach().cpu().numpy()

    out: dict[str, RequantOperands] = {}
    for k in meta.get("kernels", []):
        names = [f for f in k.get("primfuncs", []) if f not in out]
        rq = [nodes[n] for n in k.get("nodes", []) if n in nodes and getattr(nodes[n].target, "__name__", "")
              == "requantize"]
        if not names or len(rq) != 1 or not rq[0].args or getattr(rq[0].args[0], "op", None) != "call_function":
            continue
        acc = rq[0].args[0]
        mult, shift = (const(a) for a in rq[0].args[1:3])
        bias = const(acc.args[2]) if len(acc.args) > 2 else None
        off_node = rq[0].kwargs.get("offset")
        offset = const(off_node) if off_node is not None else None
        if mult is None or shift is None or bias is None or (off_node is not None and offset is None):
            continue
        ops = (bias_term(bias, mult, shift, offset).astype(np.int64), mult.astype(np.int32), shift.astype(np.int32))
        for f in names:
            out[f] = ops
    return out


def load_library(path: str | os.PathLike) -> Any:
    """`tvm.runtime.load_module(path)` without TVM's "Scope Loaded:" debug lines (`tvm_log.py`)."""
    import tvm

    with quiet_scope_warnings():
        return tvm.runtime.load_module(str(path))


class Lowered:
    """A compiled integer program: `low(x)`, `export(dir)`, `load(dir)`, `benchmark(repeat)`."""

    def __init__(self, lib_path: Path | None, executable: Any, spec: TargetSpec, meta: dict,
                 program: IntegerGraph | None, num_threads: int | None = None,
                 workdir: tempfile.TemporaryDirectory | None = None) -> None:
        self._lib_path = lib_path
        self._exec = executable  # relax VMExecutable or runtime Module (native only)
        self.spec = spec
        self.meta = meta
        self.program = program
        self.num_threads = num_threads
        self._workdir = workdir  # keeps a temp lib alive as long as this object
        self._vm: Any = None
        self._main: Any = None  # the VM's "main", looked up once
        self._in_array: np.ndarray | None = None  # 64-byte aligned input buffer ...
        self._in_tensor: Any = None  # ... and the TVM tensor that shares its memory
        self._bound: dict[tuple[int, ...], tuple[np.ndarray, Any]] = {}  # input shape -> the two above
        self._probes: dict[np.dtype, np.ndarray] = {}  # dtype -> the finiteness probe of `_ready_input`
        # the native driver called directly (`_bind_driver`): its function, its arguments (input, blob, output,
        # arena tensors) and the output buffer they share memory with; None runs the VM's `main`
        self._driver: Any = None
        self._driver_args: tuple = ()
        self._out_array: np.ndarray | None = None
        # (shape, dtype, strides) of the input the driver takes without a check from Python (it checks finiteness
        # itself), then the bound input array, the driver bound to its arguments, the output array and the
        # zero-copy call (DLPack import, driver, blob, output, arena; None: copy into the bound array); None where
        # it does not
        self._ready: tuple | None = None

    # -- properties ----------------------------------------------------------------------------------
    @property
    def target(self) -> str:
        return self.spec.name

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["input"]["shape"])

    @property
    def dynamic_batch(self) -> bool:
        """Whether the library takes any batch size (`lower_integer_graph(..., batch="dynamic")`); `input_shape`
        and the output shape in `meta` are then those of one image."""
        return self.meta.get("batch") == "dynamic"

    def _shape_text(self, shape: list[int] | tuple[int, ...]) -> str:
        return str(["n", *shape[1:]] if self.dynamic_batch else list(shape)).replace("'", "")

    @property
    def input_dtype(self) -> str:
        return self.meta["input"]["dtype"]

    @property
    def kernels(self) -> list[dict]:
        return list(self.meta["kernels"])

    @property
    def config(self) -> SubnetConfig | None:
        """The SubnetConfig the library was built from (metadata.json `config`); None for a hand-built graph."""
        cfg = self.meta.get("config")
        return None if cfg is None else SubnetConfig.from_dict(cfg)

    def __repr__(self) -> str:
        return (f"Lowered(target={self.spec.name!r}, input={self.input_dtype}{self._shape_text(self.input_shape)}, "
                f"output={self.meta['output']['dtype']}{self._shape_text(self.meta['output']['shape'])}, "
                f"kernels={len(self.meta['kernels'])})")

    # -- running -----------------------------------------------------------------------------------
    def _check_input(self, x: Any) -> np.ndarray:
        """`x` as a contiguous array of the input dtype and shape; ConfigError for anything else, NaN/inf included
        (the integer kernels would quantize NaN to an arbitrary code and disagree with the reference)."""
        if x is None or isinstance(x, (str, bytes, dict)):
            raise ConfigError("input", type(x).__name__, f"a {self.input_dtype} array of shape {self.input_shape}")
        try:
            src = np.asarray(x)
            if src.dtype.kind not in "biuf":
                raise TypeError(f"dtype {src.dtype}")
            arr = np.ascontiguousarray(src.astype(self.input_dtype, copy=False))
        except (TypeError, ValueError, OverflowError) as e:
            raise ConfigError("input", type(x).__name__, f"a numeric array of shape {self.input_shape}",
                              str(e).splitlines()[0] if str(e) else "") from e
        if self.dynamic_batch:
            if arr.ndim != len(self.input_shape) or arr.shape[1:] != self.input_shape[1:] or arr.shape[0] < 1:
                raise ConfigError("input shape", tuple(arr.shape), f"(N, {', '.join(map(str, self.input_shape[1:]))})"
                                  " for any batch N >= 1")
        elif arr.shape != self.input_shape:
            raise ConfigError("input shape", tuple(arr.shape), self.input_shape,
                              "the library is static-shaped: lower with batch='dynamic' for any batch size")
        if arr.dtype.kind == "f" and not bool(np.isfinite(arr).all()):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise ConfigError("input", f"{bad} non-finite value(s) (NaN or inf)", "finite numbers",
                              "replace or drop them before calling")
        if src.dtype.kind == "f" and np.dtype(self.input_dtype).kind != "f" and not np.isfinite(src).all():
            raise ConfigError("input", "non-finite values (NaN or inf)", "finite numbers")
        return arr

    def _native_vm(self) -> Any:
        import tvm
        from tvm import relax

        if self._vm is None:
            _allow_amx(self.spec)
            pool = ensure_thread_default(self.num_threads)
            if self.num_threads and int(self.num_threads) != pool:
                # a different count than the pool was made with: resize it, but keep this thread's CPU set
                # (config_threadpool pins the caller to one core, and later threads would inherit that)
                aff = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
                tvm.get_global_func("runtime.config_threadpool")(1, int(self.num_threads))
                if aff is not None:
                    os.sched_setaffinity(0, aff)
            self._vm = relax.VirtualMachine(self._exec, tvm.cpu())
        return self._vm

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run the library on `x` (numpy in, numpy out; output dtype as the graph's last op).

        Not thread-safe (neither is TVM's VM): one input, output and arena buffer per `Lowered`. The returned
        array is the caller's: later calls do not change it (a copy of the driver's output buffer, or the VM's
        fresh output tensor without a copy). `x` is never written; a writeable C-contiguous array of the input's
        shape and dtype from `ZERO_COPY_MIN_BYTES` on is read where it lies, without a copy.
        """
        # any Python work between two calls costs the next one more than its own time in cold caches
        # (docs/benchmarks_demo.md, "Per-call overhead"), so the common call is short
        ready = self._ready
        if ready is not None and type(x) is np.ndarray and x.shape == ready[0] and x.dtype is ready[1] \
                and x.strides == ready[2]:
            # a C-contiguous array of the bound input's shape and dtype: copied as it is, or above
            # `ZERO_COPY_MIN_BYTES` handed to the driver where it lies (writeable: numpy exports no read-only
            # array through DLPack; element-aligned, all the driver assumes); the driver checks finiteness itself
            # (in the input's quantize, `driver.quantize_checks_input`, else a `finite_check` call before any
            # kernel), fails the call on NaN/inf and never writes its input. One tuple read, the driver bound to
            # its arguments: 0.5 us less per call than attribute lookups and `*args` (docs/benchmarks_demo.md,
            # "Per-call overhead, session 15")
            zc = ready[6]
            try:
                if zc is not None and (flags := x.flags).writeable and flags.aligned:
                    zc[1](zc[0](x), zc[2], zc[3], zc[4])
                else:
                    _copyto(ready[3], x)
                    ready[4]()
            except Exception:
                self._check_input(x)  # the driver refused a NaN/inf: the ConfigError says so
                raise
            return ready[5].copy()
        bound = self._in_array
        if bound is not None and self._ready_input(x, bound):
            # an array the bound buffer takes as it is, with finite values (the cheapest test from Python)
            np.copyto(bound, x)
            if self._driver is not None:
                self._driver(*self._driver_args)
                return self._out_array.copy()
            return np.from_dlpack(self._main(self._in_tensor))
        arr = self._check_input(x)
        if self.spec.native:
            if self._main is None or self._in_array.shape != arr.shape:
                self._bind_native(arr.shape)
            # per call: one small copy into the bound input, no TVM allocation (docs/benchmarks.md,
            # "Per-call overhead")
            np.copyto(self._in_array, arr)
            if self._driver is not None:
                self._driver(*self._driver_args)
                return self._out_array.copy()
            return np.from_dlpack(self._main(self._in_tensor))
        from qcompile.backends.tvm.qemu import run_aarch64

        out, _ = run_aarch64(self.library_path(), arr, repeat=1, num_threads=self.num_threads)
        return out

    def _ready_input(self, x: Any, bound: np.ndarray) -> bool:
        """Whether `x` is a C-contiguous ndarray of the bound input buffer's shape and dtype with finite values
        (then `_check_input` would pass it unchanged). Finite: `x . p` with `p` a constant power of two small
        enough that no finite input overflows the sum, one BLAS pass, is NaN or inf exactly when a value is. Above
        `_DOT_CHECK_MAX` values OpenBLAS would run the dot on its own threads, beside TVM's: `isfinite` there."""
        if type(x) is not np.ndarray or x.shape != bound.shape or x.dtype != bound.dtype \
                or not x.flags.c_contiguous:
            return False
        if x.dtype.kind != "f":
            return True
        if x.size > _DOT_CHECK_MAX or x.dtype.itemsize < 4:
            return bool(np.isfinite(x).all())
        probe = self._probes.get(x.dtype)
        if probe is None or probe.size != x.size:
            # |x| * 2**-(maxexp/2) <= 2**(maxexp/2), summed over <= 8192 values: far from the largest float
            probe = np.full(x.size, 2.0 ** -(np.finfo(x.dtype).maxexp // 2), x.dtype)
            self._probes[x.dtype] = probe
        return math.isfinite(float(x.reshape(-1).dot(probe)))

    def _bind_native(self, shape: tuple[int, ...] | None = None) -> None:
        """Look up `main` once and bind a 64-byte aligned input buffer (TVM's DLPack import requires the
        alignment) to a TVM tensor sharing its memory, so a call copies `x` once and allocates nothing. A
        dynamic-batch library keeps one such buffer for each of the last `_BOUND_SHAPES` batch sizes it was called
        with."""
        import tvm

        shape = tuple(self.input_shape if shape is None else shape)
        if shape not in self._bound:
            if len(self._bound) >= _BOUND_SHAPES:  # the oldest batch size's buffer goes (a dict keeps insertion order)
                self._bound.pop(next(iter(self._bound)))
            arr = aligned_empty(shape, np.dtype(self.input_dtype))
            self._bound[shape] = (arr, tvm.runtime.from_dlpack(arr))
        self._in_array, self._in_tensor = self._bound[shape]
        if self._main is None:
            main = self._native_vm()["main"]
            self._bind_driver()  # first: a bad `QCOMPILE_HUGE_PAGES` leaves nothing half bound
            self._main = main

    def _bind_driver(self) -> None:
        """Call the native driver (`driver.py`) directly, out of the VM: `main` would allocate an output and an
        arena tensor per call and return through the VM (about 3 us of the demo subnet's ~100 us, plus 0.3 us
        for `np.from_dlpack`: docs/benchmarks_demo.md, "The driver called directly"). Here the arguments are
        made once: the bound input, the constant blob (the library's `qc_driver_blob`, the VM's constant
        itself), an output buffer whose copy each call returns, and one arena. Libraries without a driver,
        with an output above `_COPY_OUT_MAX` bytes (where a copy would cost more than the VM's allocation)
        or built before `qc_driver_blob` existed keep calling `main`."""
        from qcompile.backends.tvm.driver import DRIVER_BLOB_NAME, DRIVER_NAME

        info = self.meta.get("driver")
        out_shape, out_dtype = tuple(self.meta["output"]["shape"]), np.dtype(self.meta["output"]["dtype"])
        if info is None or self.dynamic_batch or math.prod(out_shape) * out_dtype.itemsize > _COPY_OUT_MAX:
            return
        vm = self._native_vm()
        lib = next((m for m in vm.module.imports if m.implements_function(DRIVER_NAME)), None)
        if lib is None or not vm.module.implements_function(DRIVER_BLOB_NAME):
            log.debug("%s: no directly callable driver (built before %s), main runs it", self, DRIVER_BLOB_NAME)
            return
        import tvm

        blob = vm[DRIVER_BLOB_NAME]()
        out = aligned_empty(out_shape, out_dtype)
        if huge_pages():
            # the blob's bytes copied once onto huge pages, and the arena there too (`driver.huge_empty`); the
            # kernels read the same bytes at the same offsets, so outputs are unchanged
            host = blob.numpy().view(np.uint8).reshape(-1)
            arena = huge_empty(int(info["arena_bytes"]))
            blob_arr = huge_empty(host.size)
            blob_arr[:] = host
            blob = tvm.runtime.from_dlpack(blob_arr)
        else:
            arena = aligned_empty((int(info["arena_bytes"]),), np.dtype(np.uint8))
        self._out_array = out
        # the tensors share the arrays' memory and keep them alive (DLPack)
        self._driver_args = (self._in_tensor, blob, tvm.runtime.from_dlpack(out), tvm.runtime.from_dlpack(arena))
        self._driver = lib.get_function(DRIVER_NAME)
        if 0 in info.get("finite_checked", ()) or np.dtype(self.input_dtype).kind != "f":
            bound = self._in_array
            zero_copy = None
            if int(info.get("input_align", _ALIGN)) <= bound.dtype.itemsize and bound.nbytes >= ZERO_COPY_MIN_BYTES:
                import tvm_ffi  # TVM's own `from_dlpack` requires 64-byte alignment

                zero_copy = (tvm_ffi.from_dlpack, self._driver, *self._driver_args[1:])
            self._ready = (bound.shape, bound.dtype, bound.strides, bound,
                           functools.partial(self._driver, *self._driver_args), out, zero_copy)

    def library_path(self) -> Path:
        """Path of the shared library (written to a temp dir on first use for in-memory builds)."""
        if self._lib_path is None:
            self._workdir = tempfile.TemporaryDirectory(prefix="qcompile-lib-")
            path = Path(self._workdir.name) / LIB_NAME
            self._export_library(path)
            self._lib_path = path
        return self._lib_path

    def _export_library(self, path: Path) -> None:
        if self._lib_path is not None:
            shutil.copyfile(self._lib_path, path)
            return
        kw = {"cc": self.spec.cross_cxx} if self.spec.cross_cxx else {}
        with quiet_scope_warnings():  # TVM's debug lines, one per constant once the VM has run (tvm_log.py)
            self._exec.export_library(str(path), **kw)

    # -- persistence --------------------------------------------------------------------------------
    def export(self, path: str | os.PathLike) -> Path:
        """Write lib.so, program/ and metadata.json into `path` as a whole: into a fresh directory beside it,
        swapped in at the end (a failure or Ctrl-C leaves what was there). `path` must be new, an empty
        directory or a lowered directory; anything else is refused with `CheckpointError`."""
        from qcompile.utils.io import check_out, staged_dir

        path = check_out(Path(path), "lowered")
        with staged_dir(path) as tmp:
            lib = tmp / LIB_NAME
            try:
                self._export_library(lib)
            except OSError:
                raise
            except Exception as e:  # TVM/compiler failures (a full disk shows as "Compilation error")
                raise LoweringError(str(path), f"writing {LIB_NAME} failed: {_first_line(e)}",
                                    "check free disk space and that the directory is writable") from e
            if self.program is not None:
                self.program.save(tmp / "program")
            meta = dict(self.meta, format=FORMAT_VERSION, library=_library_record(lib))
            (tmp / "metadata.json").write_text(json.dumps(meta, indent=1))
            for f in (lib, tmp / "metadata.json"):
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        log.info("exported %s to %s", self, path)
        return path

    # -- benchmarking -------------------------------------------------------------------------------
    def benchmark(self, repeat: int = 50, *, number: int = 1, remote: str | None = None, kernels: bool = True,
                  seed: int = 0, batch: int | None = None) -> BenchmarkResult:
        """Latency of `main` (ms) over `repeat` runs and, if `kernels`, a per-PrimFunc table.

        Local native targets time in-process with `time_evaluator`; `remote="host:port"` uploads the library to a
        TVM RPC server (a real board) and times there (`where` says so when that server is an emulator,
        `rpc.remote_emulation`); an arm_cpu library without `remote` is timed under qemu (emulated: only useful to
        check it runs, not for latency). `batch`: the images per call of a `batch="dynamic"` library (default 1; the
        per-kernel table is timed at it too); a static library takes only its own batch. Times are per call, not per
        image.
        """
        shape = self._batch_shape(batch)
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(shape).astype(self.input_dtype)
        if remote is not None:
            from qcompile.backends.tvm.rpc import remote_emulation, remote_session

            with remote_session(remote) as sess:
                emulated = remote_emulation(sess)
                where = f"rpc {remote}" + (f" ({emulated}: emulated, not device latency)" if emulated else "")
                return self._benchmark_module(sess, x, repeat, number, kernels, rng, where=where)
        if self.spec.native:
            return self._benchmark_module(None, x, repeat, number, kernels, rng, where="local")
        from qcompile.backends.tvm.qemu import run_aarch64

        _, ms = run_aarch64(self.library_path(), x, repeat=max(repeat, 2), num_threads=self.num_threads)
        return BenchmarkResult(**_stats(ms), repeat=len(ms), where="qemu (emulated, not device latency)",
                               kernels=())

    def profile(self, x: np.ndarray | None = None, repeat: int = 50, *, isolated: bool = True) -> NetworkProfile:
        """Every native-driver call's time inside the network against the kernel alone (`profile.profile_network`:
        a `NetworkProfile` whose `rows` follow the driver's calls; `.table()` prints them)."""
        from qcompile.backends.tvm.profile import profile_network

        return profile_network(self, x, repeat, isolated=isolated)

    def _batch_shape(self, batch: int | None) -> tuple[int, ...]:
        """The input shape of a call with `batch` images (None: the library's own batch, 1 when dynamic)."""
        if batch is None:
            return self.input_shape
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ConfigError("batch", batch, "a positive number of images per call")
        if not self.dynamic_batch and int(batch) != self.input_shape[0]:
            raise ConfigError("batch", batch, f"{self.input_shape[0]} (the library is static-shaped: lower with "
                              "batch='dynamic' for any batch size)")
        return (int(batch), *self.input_shape[1:])

    def _benchmark_module(self, sess: Any, x: np.ndarray, repeat: int, number: int, kernels: bool,
                          rng: np.random.Generator, where: str) -> BenchmarkResult:
        import tvm
        from tvm import relax

        if sess is None:
            _allow_amx(self.spec)
            dev = tvm.cpu()
            lib = self._exec if self._lib_path is None else load_library(self._lib_path)
            vm = self._native_vm() if self._lib_path is None else relax.VirtualMachine(lib, dev)
            mod_for_kernels = lib.mod if hasattr(lib, "mod") else lib
        else:
            sess.upload(str(self.library_path()), LIB_NAME)
            lib = sess.load_module(LIB_NAME)
            dev = sess.cpu()
            vm = relax.VirtualMachine(lib, dev)
            mod_for_kernels = lib
        xin = tvm.runtime.tensor(x, dev)
        ev = vm.time_evaluator("main", dev, number=number, repeat=repeat)
        ms = [float(t) * 1e3 for t in ev(xin).results]
        rows = []
        if kernels:
            by_func = {f: k for k in self.meta["kernels"] for f in k["primfuncs"]}
            requant = program_requant_operands(self.meta, self.program)  # the network's own shifts
            for name, sig in self.meta["signatures"].items():
                found = _find_function_module(mod_for_kernels, name) if sess is None else None
                candidates = [found] if found is not None else [mod_for_kernels, *_imports(mod_for_kernels)]
                args = [tvm.runtime.tensor(a, dev)
                        for a in kernel_timing_args(sig, rng, len(x), requant.get(name))]
                kms = None
                for cand in candidates:
                    try:  # an RPC module only answers for the module that defines the symbol
                        kev = cand.time_evaluator(name, dev, number=max(number, 1), repeat=max(min(repeat, 20), 1))
                        kms = [float(t) * 1e3 for t in kev(*args).results]
                        break
                    except Exception as e:  # noqa: BLE001 - try the next module
                        log.debug("kernel %s not in %s (%s)", name, cand, e)
                if kms is None:
                    continue
                rec = by_func.get(name, {"op": "other", "nodes": [], "strategy": "tvm"})
                rows.append({"name": name, "op": rec["op"], "nodes": list(rec["nodes"]),
                             "strategy": rec["strategy"], **_stats(kms)})
        return BenchmarkResult(**_stats(ms), repeat=len(ms), where=where, kernels=tuple(rows))

    def run_remote(self, x: np.ndarray, remote: str) -> np.ndarray:
        """Run `main(x)` on a TVM RPC server (a real board) and return the output."""
        import tvm
        from tvm import relax

        from qcompile.backends.tvm.rpc import remote_session

        arr = self._check_input(x)
        with remote_session(remote) as sess:
            sess.upload(str(self.library_path()), LIB_NAME)
            dev = sess.cpu()
            vm = relax.VirtualMachine(sess.load_module(LIB_NAME), dev)
            return vm["main"](tvm.runtime.tensor(arr, dev)).numpy()


def _allow_amx(spec: TargetSpec) -> None:
    """Before a native library runs: if its target has AMX-INT8, ask Linux for the tile data (once per process;
    an AMX kernel without it dies with SIGILL). The strategy builds AMX kernels only where this succeeds."""
    if spec.native and spec.arch == "x86_64":
        from qcompile.backends.tvm.intrin.amx import enable_amx, has_amx

        if has_amx(spec.target()) and not enable_amx():
            log.warning("target %s has AMX-INT8 but Linux refused this process the tile data", spec.tvm_target)


def _imports(mod: Any) -> list:
    try:
        return list(mod.imports)
    except Exception:  # RPC modules may not list their imports
        return []


def _find_function_module(mod: Any, name: str) -> Any:
    """The module (the library or one of its imports) that defines `name`."""
    stack, seen = [mod], 0
    while stack and seen < 64:
        m = stack.pop()
        seen += 1
        try:
            if m.implements_function(name) if hasattr(m, "implements_function") else m.get_function(name):
                return m
        except Exception:  # get_function raises on a missing name in some module kinds
            pass
        stack.extend(list(m.imports))
    return None


def lower_integer_graph(
    ig: IntegerGraph,
    target: str | dict = "x86",
    *,
    tune: bool = False,
    trials: int | None = None,
    num_threads: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    input_dtype: str = "float32",
    pipeline: Pipeline | None = None,
    use_strategies: bool = True,
    batch: int | str | None = None,
    remote: str | None = None,
) -> Lowered:
    """Compile an IntegerGraph with TVM (Relax + TIR) for `target` ("x86", "arm_cpu" or a target dict).

    Bit-exact with the reference executor (docs/integer_semantics.md). `tune=True` first tunes every
    kernel into the persistent tuning database (`qcompile.backends.tvm.tuning`), reused afterwards by
    every lowering of any subnet; `trials` caps the schedules timed per kernel (default: all candidates,
    most promising first, the untuned default always among them). x86 kernels are timed on this host; for a
    target this host cannot run (`arm_cpu`), `remote="host:port"` names the TVM RPC server on the device that
    times them (`schedules.arm.tune`; records timed under qemu are tagged emulated, docs/latency.md).

    `batch`: None emits every kernel for the input shape (`input_shape`, else the graph's); `"dynamic"` builds
    one library for any batch size: the batch-1 kernels, each run once per image in an outer loop over a
    symbolic batch `n` (`batch.DynamicBatch`); an int `N` builds the same loop for exactly `N` images (static
    shapes; the conv strategies schedule batch 1 only, so `input_shape=(N, ...)` leaves convs naive). Both
    raise `LoweringError` when the graph does not treat images independently.
    """
    if trials is not None and int(trials) < 1:
        raise ConfigError("trials", trials, "a positive number of schedules to time per kernel, or None for all")
    from tvm import relax

    from qcompile.backends.tvm.driver import tir_pipeline

    spec = resolve_target(target, num_threads)
    tgt = spec.target()
    _check_tune_remote(spec, tune, remote)
    t0 = time.perf_counter()
    dynamic = batch == "dynamic"
    if batch is not None:
        input_shape, pipeline = _batch_setup(ig, batch, input_shape, input_dtype, pipeline)
    if tune:
        # Tune every kernel the strategies will emit (records land in the tuning database, shared by all
        # subnets of any space), then emit again: the strategies read the database.
        from qcompile.backends.tvm.schedules import tune_opcall

        calls: list = []
        emit_relax(ig, tgt, input_shape, input_dtype, use_strategies=use_strategies, call_log=calls)
        for call, w in calls:
            tune_opcall(call, w, trials=trials, remote=remote)
        log.info("tuned %d kernel calls for %s", len(calls), spec.name)
    em = emit_relax(ig, tgt, input_shape, input_dtype, use_strategies=use_strategies)
    mod = em.mod
    pipe = pipeline or default_pipeline(tgt)
    with tgt:
        lowered_mod = build_pass(pipe, tgt)(mod)
    try:
        # TVM's TIR pipeline, plus the device scope of the native driver's direct kernel calls
        ex = relax.build(lowered_mod, tgt, relax_pipeline=None, tir_pipeline=tir_pipeline())
    except Exception as e:
        raise LoweringError(f"target={spec.name}", f"TVM build failed: {e}", "report the graph and target") from e
    pm = program_meta(ig).to_dict()
    meta = {
        **({"batch": "dynamic"} if dynamic else {}),
        "format": FORMAT_VERSION,
        "target": {"name": spec.name, "tvm": spec.tvm_target, "arch": spec.arch, "cross_cxx": spec.cross_cxx},
        "input": {"shape": _batched(em.input_shape, batch), "dtype": em.input_dtype},
        "output": {"shape": _batched(em.output_shape, batch), "dtype": em.output_dtype},
        "kernels": _kernel_entries(em.kernels),
        "signatures": _kernel_signatures(lowered_mod),
        "driver": _driver_record(lowered_mod),
        "config": pm["config"],
        "policy": pm["policy"],
        "program_meta": _jsonable(ig.program_meta),
        "num_threads": num_threads,
        "tuned": bool(tune),
        "versions": _versions(),
        "build_seconds": round(time.perf_counter() - t0, 3),
    }
    log.info("lowered %d kernels for %s in %.1f s", len(em.kernels), spec.name, meta["build_seconds"])
    return Lowered(None, ex, spec, meta, ig, num_threads)


def _check_tune_remote(spec: TargetSpec, tune: bool, remote: str | None) -> None:
    """ConfigError unless `remote` fits: needed to tune for a target this host cannot run (its kernels are timed
    on the device), used only with `tune=True`, and only for aarch64 (x86 kernels are tuned on this host)."""
    from qcompile.backends.tvm.rpc import parse_remote

    if remote is not None:
        parse_remote(remote)  # ConfigError for anything but "host:port"
        if not tune:
            raise ConfigError("remote", remote, "None when tune=False",
                              "the remote only times candidate kernels while tuning; time a lowered library with "
                              "Lowered.benchmark(remote=...)")
        if spec.arch != "aarch64":
            raise ConfigError("remote", remote, f"None for target {spec.name!r} ({spec.arch})",
                              "x86 kernels are tuned on this host; tuning through RPC covers aarch64 targets")
    elif tune and not spec.native:
        raise ConfigError("remote", None, "'host:port' of a TVM RPC server on the target device",
                          f"tune=True for target {spec.name!r} ({spec.arch}) times every candidate kernel on the "
                          "device, which this host is not; start `python -m tvm.exec.rpc_server --port 9090` on "
                          "the board, or qemu.QemuRpcServer for an emulated one")


def _driver_record(mod: Any) -> dict | None:
    """`meta["driver"]`: the kernel symbols `main`'s native driver calls, in order (`driver.NativeDriver`; the VM's
    instrument hook sees only the driver), and its arena; None when the VM calls the kernels itself."""
    from qcompile.backends.tvm.driver import driver_info

    return driver_info(mod)


def _batched(shape: tuple[int, ...], batch: int | str | None) -> list[int]:
    """A shape of the emitted program as `main` takes or returns it: with `batch=N` the batch-1 shape's leading 1
    becomes N; otherwise (no batch, or "dynamic": the shape of one image) as emitted."""
    if isinstance(batch, str) or batch is None or int(batch) == 1:
        return list(shape)
    return [int(batch), *shape[1:]]


def _batch_setup(ig: IntegerGraph, batch: int | str, input_shape: tuple[int, ...] | None, input_dtype: str,
                 pipeline: Pipeline | None) -> tuple[tuple[int, ...], Pipeline | None]:
    """The input shape and pipeline of `lower_integer_graph(..., batch=...)` (see there)."""
    import dataclasses
    import functools
    import inspect

    from qcompile.backends.tvm.batch import check_batch_independent
    from qcompile.backends.tvm.emitter import graph_input_shape

    dynamic = batch == "dynamic"
    if not dynamic and (isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1):
        raise ConfigError("batch", batch, "a positive number of images per call, 'dynamic' (any batch size) or None")
    shape = (1, *graph_input_shape(ig, input_shape)[1:])
    if batch == 1:
        return shape, pipeline
    check_batch_independent(ig, shape, input_dtype)
    pipe = pipeline or default_pipeline()
    if "batch_loop" not in inspect.signature(pipe.finalize).parameters:
        raise LoweringError("pipeline.finalize", f"{getattr(pipe.finalize, '__name__', pipe.finalize)} takes no "
                            "batch_loop argument", f"batch={batch!r} needs a finalize phase like "
                            "pipeline.finalize_passes (a batch_loop keyword that appends batch.DynamicBatch)")
    loop = "dynamic" if dynamic else int(batch)
    return shape, dataclasses.replace(pipe, finalize=functools.partial(pipe.finalize, batch_loop=loop))


def _kernel_entries(kernels: list) -> list[dict]:
    """`Lowered.meta["kernels"]`: one entry per emitted kernel (`KernelRecord`), in program order."""
    return [{"op": k.op, "nodes": list(k.nodes), "primfuncs": list(k.primfuncs), "strategy": k.strategy,
             "workload": k.workload} for k in kernels]


def emitted_kernels(ig: IntegerGraph, target: str | dict = "x86", *, num_threads: int | None = None,
                    input_shape: tuple[int, ...] | None = None, input_dtype: str = "float32",
                    use_strategies: bool = True) -> list[dict]:
    """The `meta["kernels"]` list `lower_integer_graph(ig, target)` (untuned) writes, without compiling.

    Runs the real emission (`emit_relax`: strategies emit and schedule their PrimFuncs with the actual
    weights, naive kernels through `emit_te`) and stops once the Relax IRModule is assembled, before the
    TVM pass pipeline and `relax.build` (seconds to minutes per network). Used to check, cheaply,
    that the dry `plan_kernels` walk behind `qcompile.search.kernel_workloads` names the emitted kernels.
    """
    spec = resolve_target(target, num_threads)
    em = emit_relax(ig, spec.target(), input_shape, input_dtype, use_strategies=use_strategies)
    return _kernel_entries(em.kernels)


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


#: ELF e_machine values of the architectures qcompile builds for
ELF_MACHINES = {62: "x86_64", 183: "aarch64"}


def elf_info(path: Path, data: bytes) -> dict:
    """Machine and extent of an ELF shared library; CheckpointError when `data` is not a complete 64-bit ELF."""
    import struct

    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise CheckpointError(f"{path}: not a shared library (no ELF header; {len(data)} bytes) "
                              "(the lowered directory is corrupt: lower the subnet again)")
    if data[4] != 2 or data[5] != 1:
        raise CheckpointError(f"{path}: not a 64-bit little-endian ELF library (lower the subnet again)")
    (e_type, e_machine) = struct.unpack_from("<HH", data, 16)
    e_phoff, e_shoff = struct.unpack_from("<QQ", data, 32)
    e_phentsize, e_phnum, e_shentsize, e_shnum = struct.unpack_from("<HHHH", data, 54)
    if e_type != 3:  # ET_DYN
        raise CheckpointError(f"{path}: ELF type {e_type} is not a shared library (lower the subnet again)")
    end = max(e_phoff + e_phnum * e_phentsize, e_shoff + e_shnum * e_shentsize)
    for i in range(min(e_phnum, 64)):
        off = e_phoff + i * e_phentsize
        if off + 56 > len(data):
            break
        _p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack_from("<IIQQQQ", data, off)
        end = max(end, p_offset + p_filesz)
    if end > len(data):
        raise CheckpointError(f"{path}: truncated ({len(data)} bytes, its headers need {end}) "
                              "(the lowered directory is corrupt: lower the subnet again)")
    return {"machine": ELF_MACHINES.get(e_machine, f"e_machine {e_machine}"), "size": len(data)}


def _library_record(lib: Path) -> dict:
    import hashlib

    data = lib.read_bytes()
    info = elf_info(lib, data)
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "machine": info["machine"]}


def verify_library(lpath: Path, meta: dict, mpath: Path) -> None:
    """Check lib.so before it is loaded (a truncated library would crash the process with SIGBUS):
    ELF header and extent, machine against the target's arch, size and sha256 against metadata.json."""
    import hashlib

    try:
        data = lpath.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{lpath}: cannot be read: {e.strerror or e} (check the file)") from e
    info = elf_info(lpath, data)
    arch = meta["target"]["arch"]
    if info["machine"] != arch:
        raise CheckpointError(f"{lpath}: library for {info['machine']}, but {mpath.name} says {arch} "
                              "(the directory mixes files of two lowerings: lower the subnet again)")
    rec = meta.get("library")
    if rec is not None:
        if rec["size"] != len(data):
            raise CheckpointError(f"{lpath}: {len(data)} bytes, {mpath.name} recorded {rec['size']} "
                                  "(truncated or replaced: lower the subnet again)")
        if hashlib.sha256(data).hexdigest() != rec["sha256"]:
            raise CheckpointError(f"{lpath}: sha256 does not match the one in {mpath.name} "
                                  "(corrupt or replaced: lower the subnet again)")


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=repr))


def load(path: str | os.PathLike) -> Lowered:
    """Load an exported library directory; `CheckpointError` if it is missing or not ours."""
    from qcompile import schema

    path = Path(path)
    mpath, lpath = path / "metadata.json", path / LIB_NAME
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such lowered directory (make one with `qcompile lower SUBNET --out DIR`)")
    if not mpath.is_file() or not lpath.is_file():
        raise CheckpointError(f"{path}: no exported library here (expected metadata.json and {LIB_NAME})")
    try:
        meta = json.loads(mpath.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{mpath}: corrupt ({_first_line(e)}) (lower the subnet again)") from e
    schema.check(meta, schema.LOWERED, str(mpath), schema.LOWERED_FORMAT)
    for io_ in ("input", "output"):
        shape = meta[io_]["shape"]
        if not shape or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
            raise CheckpointError(f"{mpath}: {io_}.shape {shape!r:.60} is not a list of positive integers "
                                  "(lower the subnet again)")
    drv = meta.get("driver")
    if drv is not None:  # `Lowered.__call__` sizes the driver's arena from it and calls the driver directly
        arena = drv.get("arena_bytes")
        checked = drv.get("finite_checked", [])
        if not isinstance(arena, int) or isinstance(arena, bool) or arena <= 0 or not isinstance(checked, list):
            raise CheckpointError(f"{mpath}: driver {drv!r:.60} needs a positive integer arena_bytes and a list "
                                  "finite_checked (lower the subnet again)")
    t = meta["target"]
    if t["arch"] not in ELF_MACHINES.values():
        raise CheckpointError(f"{mpath}: target.arch {t['arch']!r} is not one of {sorted(ELF_MACHINES.values())}")
    verify_library(lpath, meta, mpath)
    import platform

    native = (platform.machine() in ("aarch64", "arm64")) == (t["arch"] == "aarch64")
    spec = TargetSpec(t["name"], t["tvm"], t["arch"], t.get("cross_cxx"), native)
    try:
        program = IntegerGraph.load(path / "program") if (path / "program").exists() else None
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt program/ directory, whatever the reader raised
        raise CheckpointError(f"{path / 'program'}: cannot be read ({_first_line(e)}) (lower the subnet again)") from e
    try:
        ex = load_library(lpath) if native else None
        if ex is not None:
            ex["vm_load_executable"]  # a Relax VM library, not some other shared object
    except Exception as e:  # noqa: BLE001 - the loader's errors are TVM's own types
        raise CheckpointError(f"{lpath}: cannot be loaded as a compiled model ({_first_line(e)}) "
                              "(lower the subnet again)") from e
    return Lowered(lpath, ex, spec, meta, program, meta.get("num_threads"))
