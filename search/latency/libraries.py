"""Lowered libraries saved to disk and timed later, in another process: the heavy and the quiet half of a table.

Lowering a subnet (TVM pipeline + LLVM) takes seconds to minutes of CPU and tolerates a loaded machine; timing
it does not. So a table's networks can be lowered ahead (`save_for_timing`: the Relax VM library as `export`
writes it, without the IntegerGraph; locally, unlike through RPC, the loaded library's kernel module answers
`time_evaluator` for each PrimFunc, so no second kernels-only library is written: that export would cost as
much LLVM code generation again, 20 s per demo subnet under load) and timed in a short quiet
window (`SavedTimer`: `load`, then the same `network_samples` / `primfunc_samples` as `LatencyTable.build`).

Libraries do not depend on the thread count (the x86 target's `num-cores` changes no emitted kernel: the
libraries lowered for 1 and 2 threads are byte-identical), so one library is timed at every thread count.
They do depend on the emitter and the passes that make the integer graph: `emitter_key` hashes those sources
with the TVM version and the host target, and a directory prepared under another key is refused.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["emitter_key", "save_for_timing", "saved", "schedule_env", "SavedTimer"]

#: sources whose change can change a lowered library (graph construction, integer passes, emitter, schedules)
_KEY_SOURCES = ("backends/tvm", "passes", "qcompile/ops", "qcompile/nn", "qcompile/quant", "qcompile/spaces",
                "qcompile/fx", "qcompile/config.py")


def package_version(pkg: str) -> str:
    """The installed version of `pkg`, or "unknown"."""
    from importlib import metadata

    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "unknown"


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def schedule_env() -> tuple[tuple[str, str], ...]:
    """The set ones of the environment variables that the schedules read when they emit a kernel (the parallel
    rule's thresholds, the opt-in one-region GEMM), as sorted (name, value) pairs."""
    from qcompile.backends.tvm.schedules.parallel import ENV_MIN_US, ENV_MIN_WORK
    from qcompile.backends.tvm.schedules.x86.gemm import ENV_PACK_IN_TILES

    return tuple(sorted((n, os.environ[n]) for n in (ENV_MIN_US, ENV_MIN_WORK, ENV_PACK_IN_TILES) if n in os.environ))


def emitter_key(target: Any = "x86") -> dict:
    """Identity of the libraries this tree lowers: sha1 over the sources in `_KEY_SOURCES`, the TVM version, the
    target dict (host mcpu and features) and the schedule variables that are set (`schedule_env`: a library
    lowered with `QCOMPILE_GEMM_PACK_IN_TILES=1` is another library; unset ones leave the key as it was); the git
    commit is recorded for reference, not compared.

    Cached per target name and process (hashing the sources and `git rev-parse` take ~5 ms, and `machine_keys`
    asks on every call; the sources do not change under a running process): a test that edits them calls
    `emitter_key.cache_clear()`. A target dict is not cached. Returns a fresh dict each call."""
    env = schedule_env()
    if isinstance(target, str):
        return copy.deepcopy(_emitter_key_cached(target, _repo_root(), env))
    return _emitter_key(target, _repo_root(), env)


@functools.cache
def _emitter_key_cached(target: str, root: Path, env: tuple[tuple[str, str], ...]) -> dict:
    return _emitter_key(target, root, env)


emitter_key.cache_clear = _emitter_key_cached.cache_clear  # type: ignore[attr-defined]


def _emitter_key(target: Any, root: Path, env: tuple[tuple[str, str], ...] = ()) -> dict:
    from qcompile.backends.tvm.targets import resolve_target

    h = hashlib.sha1()
    for src in _KEY_SOURCES:
        p = root / src
        files = sorted(p.rglob("*.py")) if p.is_dir() else [p] if p.exists() else []
        for f in files:
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    tgt = dict(resolve_target(target, None).tvm_target)
    tgt.pop("num-cores", None)  # no effect on the emitted kernels (module docstring)
    h.update(json.dumps(tgt, sort_keys=True).encode())
    tvm = package_version("apache-tvm")
    h.update(tvm.encode())
    if env:  # hashed only when set, so the key of a default lowering is unchanged
        h.update(json.dumps(env).encode())
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"key": h.hexdigest()[:16], "tvm": tvm, "target": tgt, "env": dict(env), "commit": commit}


def saved(path: str | os.PathLike) -> bool:
    """Whether `path` holds a complete library written by `save_for_timing`."""
    from qcompile.backends.tvm.lowered import LIB_NAME

    path = Path(path)
    return (path / "metadata.json").is_file() and (path / LIB_NAME).is_file()


def save_for_timing(low: Any, path: str | os.PathLike) -> Path:
    """Write `low`'s library and metadata (`Lowered.export`, IntegerGraph left out) into directory `path`,
    atomically: a half-written directory never appears under `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    program, low.program = low.program, None  # the timing needs the library only (and mbv2@224 graphs are MBs)
    try:
        low.export(tmp)
    finally:
        low.program = program
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


class SavedTimer:
    """Times a library written by `save_for_timing` at `num_threads` (the timer interface of `remote.py`)."""

    where = "local"

    def __init__(self, path: str | os.PathLike, num_threads: int) -> None:
        import tvm

        from qcompile.backends.tvm.lowered import load

        self.path = Path(path)
        self.low = load(self.path)
        self.low.num_threads = int(num_threads)
        self.dev = tvm.cpu()
        self.vm = self.low._native_vm()  # noqa: SLF001 - the library's VM, thread pool configured

    def function(self, name: str) -> Any:
        """The module of the loaded library that defines PrimFunc `name`, or None."""
        from qcompile.backends.tvm.lowered import _find_function_module

        return _find_function_module(self.low._exec, name)  # noqa: SLF001
