"""`lower_integer_graph` (IntegerGraph -> compiled TVM library) and the `Lowered` object.

A `Lowered` runs the compiled Relax VM library: natively for x86 (and aarch64 hosts), under
`qemu-aarch64` through the C++ runner for arm_cpu on an x86 host (`qemu.py`), or on a real board
through TVM RPC (`benchmark(remote="host:port")`, `run_remote`). `export(dir)` writes, atomically,
`lib.so` (the library; weights are Relax constants inside it), `program/` (the IntegerGraph it was
compiled from: its weights as safetensors, so the library can be rebuilt and checked against the
reference) and `metadata.json` (target, shapes, kernels, config, policy, versions).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from qcompile.backends.tvm.emitter import emit_relax
from qcompile.backends.tvm.pipeline import Pipeline, build_pass, default_pipeline
from qcompile.backends.tvm.targets import TargetSpec, resolve_target
from qcompile.backends.tvm.threads import ensure_thread_default
from qcompile.config import SubnetConfig
from qcompile.errors import CheckpointError, ConfigError, LoweringError
from qcompile.ops.graph import IntegerGraph
from qcompile.ops.meta import program_meta

log = logging.getLogger(__name__)

__all__ = ["Lowered", "BenchmarkResult", "lower_integer_graph", "load", "FORMAT_VERSION"]

FORMAT_VERSION = 1
LIB_NAME = "lib.so"


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


def _kernel_signatures(mod: Any) -> dict[str, list[tuple[list[int], str]]]:
    """PrimFunc name -> [(shape, dtype)] of its buffer parameters (for per-kernel timing)."""
    from tvm import tirx

    sigs = {}
    for gv, f in mod.functions.items():
        if isinstance(f, tirx.PrimFunc):
            params = []
            for p in f.params:  # TVM 0.27: buffer parameters are Vars typed as buffers
                shape = getattr(p, "shape", None)
                if shape is None:
                    break
                try:
                    params.append(([int(s) for s in shape], str(p.dtype)))
                except TypeError:  # symbolic shape: not timed on its own
                    break
            else:
                sigs[gv.name_hint] = params
    return sigs


def _random_arg(shape: list[int], dtype: str, rng: np.random.Generator) -> np.ndarray:
    if dtype.startswith("float"):
        return rng.standard_normal(shape).astype(dtype)
    # small non-negative integers keep shifts and table indices in range
    return rng.integers(1, 8, size=shape).astype(dtype)


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

    # -- properties ----------------------------------------------------------------------------------
    @property
    def target(self) -> str:
        return self.spec.name

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["input"]["shape"])

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
        return (f"Lowered(target={self.spec.name!r}, input={self.input_dtype}{list(self.input_shape)}, "
                f"output={self.meta['output']['dtype']}{self.meta['output']['shape']}, "
                f"kernels={len(self.meta['kernels'])})")

    # -- running -----------------------------------------------------------------------------------
    def _check_input(self, x: Any) -> np.ndarray:
        arr = np.ascontiguousarray(np.asarray(x, dtype=self.input_dtype))
        if arr.shape != self.input_shape:
            raise ConfigError("input shape", tuple(arr.shape), self.input_shape, "the library is static-shaped")
        return arr

    def _native_vm(self) -> Any:
        import tvm
        from tvm import relax

        if self._vm is None:
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
        """Run the library on `x` (numpy in, numpy out; output dtype as the graph's last op)."""
        arr = self._check_input(x)
        if self.spec.native:
            import tvm

            return self._native_vm()["main"](tvm.runtime.tensor(arr)).numpy()
        from qcompile.backends.tvm.qemu import run_aarch64

        out, _ = run_aarch64(self.library_path(), arr, repeat=1, num_threads=self.num_threads)
        return out

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
        self._exec.export_library(str(path), **kw)

    # -- persistence --------------------------------------------------------------------------------
    def export(self, path: str | os.PathLike) -> Path:
        """Write lib.so, program/ and metadata.json into `path`, atomically (temp dir then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        try:
            self._export_library(tmp / LIB_NAME)
            if self.program is not None:
                self.program.save(tmp / "program")
            (tmp / "metadata.json").write_text(json.dumps(self.meta, indent=1))
            old = None
            if path.exists():
                old = path.with_name(f".{path.name}.old.{os.getpid()}")
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("exported %s to %s", self, path)
        return path

    # -- benchmarking -------------------------------------------------------------------------------
    def benchmark(self, repeat: int = 50, *, number: int = 1, remote: str | None = None, kernels: bool = True,
                  seed: int = 0) -> BenchmarkResult:
        """Latency of `main` (ms) over `repeat` runs and, if `kernels`, a per-PrimFunc table.

        Local native targets time in-process with `time_evaluator`; `remote="host:port"` uploads
        the library to a TVM RPC server (a real board) and times there; an arm_cpu library without
        `remote` is timed under qemu (emulated: only useful to check it runs, not for latency).
        """
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(self.input_shape).astype(self.input_dtype)
        if remote is not None:
            from qcompile.backends.tvm.rpc import remote_session

            with remote_session(remote) as sess:
                return self._benchmark_module(sess, x, repeat, number, kernels, rng, where=f"rpc {remote}")
        if self.spec.native:
            return self._benchmark_module(None, x, repeat, number, kernels, rng, where="local")
        from qcompile.backends.tvm.qemu import run_aarch64

        _, ms = run_aarch64(self.library_path(), x, repeat=max(repeat, 2), num_threads=self.num_threads)
        return BenchmarkResult(**_stats(ms), repeat=len(ms), where="qemu (emulated, not device latency)",
                               kernels=())

    def _benchmark_module(self, sess: Any, x: np.ndarray, repeat: int, number: int, kernels: bool,
                          rng: np.random.Generator, where: str) -> BenchmarkResult:
        import tvm
        from tvm import relax

        if sess is None:
            dev = tvm.cpu()
            lib = self._exec if self._lib_path is None else tvm.runtime.load_module(str(self._lib_path))
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
            for name, sig in self.meta["signatures"].items():
                found = _find_function_module(mod_for_kernels, name) if sess is None else None
                candidates = [found] if found is not None else [mod_for_kernels, *_imports(mod_for_kernels)]
                args = [tvm.runtime.tensor(_random_arg(s, d, rng), dev) for s, d in sig]
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
) -> Lowered:
    """Compile an IntegerGraph with TVM (Relax + TIR) for `target` ("x86", "arm_cpu" or a target dict).

    Bit-exact with the reference executor (docs/integer_semantics.md). `tune=True` first tunes every
    kernel into the persistent tuning database (`qcompile.backends.tvm.tuning`), reused afterwards by
    every lowering of any subnet; `trials` caps the schedules timed per kernel (default: all candidates,
    most promising first, the untuned default always among them).
    """
    if trials is not None and int(trials) < 1:
        raise ConfigError("trials", trials, "a positive number of schedules to time per kernel, or None for all")
    from tvm import relax

    spec = resolve_target(target, num_threads)
    tgt = spec.target()
    t0 = time.perf_counter()
    if tune:
        # Tune every kernel the strategies will emit (records land in the tuning database, shared by all
        # subnets of any space), then emit again: the strategies read the database.
        from qcompile.backends.tvm import tuning

        calls: list = []
        emit_relax(ig, tgt, input_shape, input_dtype, use_strategies=use_strategies, call_log=calls)
        for call, w in calls:
            tuning.tune_opcall(call, w, trials=trials)
        log.info("tuned %d kernel calls for %s", len(calls), spec.name)
    em = emit_relax(ig, tgt, input_shape, input_dtype, use_strategies=use_strategies)
    mod = em.mod
    pipe = pipeline or default_pipeline(tgt)
    with tgt:
        lowered_mod = build_pass(pipe, tgt)(mod)
    try:
        ex = relax.build(lowered_mod, tgt, relax_pipeline=None)
    except Exception as e:
        raise LoweringError(f"target={spec.name}", f"TVM build failed: {e}", "report the graph and target") from e
    pm = program_meta(ig).to_dict()
    meta = {
        "format": FORMAT_VERSION,
        "target": {"name": spec.name, "tvm": spec.tvm_target, "arch": spec.arch, "cross_cxx": spec.cross_cxx},
        "input": {"shape": list(em.input_shape), "dtype": em.input_dtype},
        "output": {"shape": list(em.output_shape), "dtype": em.output_dtype},
        "kernels": [{"op": k.op, "nodes": list(k.nodes), "primfuncs": list(k.primfuncs), "strategy": k.strategy,
                     "workload": k.workload} for k in em.kernels],
        "signatures": _kernel_signatures(lowered_mod),
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


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=repr))


def load(path: str | os.PathLike) -> Lowered:
    """Load an exported library directory; `CheckpointError` if it is missing or not ours."""
    import tvm

    path = Path(path)
    mpath, lpath = path / "metadata.json", path / LIB_NAME
    if not mpath.exists() or not lpath.exists():
        raise CheckpointError(f"{path}: no exported library here (expected metadata.json and {LIB_NAME})")
    try:
        meta = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{mpath}: corrupt ({e})") from e
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{mpath}: format {meta.get('format')!r}, expected {FORMAT_VERSION}")
    t = meta["target"]
    import platform

    native = (platform.machine() in ("aarch64", "arm64")) == (t["arch"] == "aarch64")
    spec = TargetSpec(t["name"], t["tvm"], t["arch"], t.get("cross_cxx"), native)
    program = IntegerGraph.load(path / "program") if (path / "program").exists() else None
    ex = tvm.runtime.load_module(str(lpath)) if native else None
    return Lowered(lpath, ex, spec, meta, program, meta.get("num_threads"))
