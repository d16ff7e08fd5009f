"""Run aarch64 libraries under `qemu-aarch64`: the aarch64 TVM runtime and a small C++ runner.

The aarch64 runtime (`libtvm_runtime.so`, `libtvm_ffi.so`) comes from the registry's
manylinux_2_28_aarch64 wheels of the *installed* apache-tvm / apache-tvm-ffi versions, fetched once
with `pip download` into the cache directory (`$QCOMPILE_CACHE`, default `~/.cache/qcompile`). The
runner (`runner/runner.cc`) is cross-compiled against the tvm-ffi headers on first use and cached
by a hash of its source and the versions. Inputs and outputs travel through raw `.bin` files plus
dtype/shape arguments; the runner prints the output dtype, shape and timings as one JSON line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np

from qcompile.backends.tvm.targets import CROSS_CXX
from qcompile.errors import LoweringError

log = logging.getLogger(__name__)

__all__ = ["cache_dir", "ensure_aarch64_runtime", "ensure_runner", "run_aarch64", "qemu_available"]

RUNNER_SRC = Path(__file__).with_name("runner") / "runner.cc"
SYSROOT = Path(os.environ.get("QCOMPILE_AARCH64_SYSROOT", "/usr/aarch64-linux-gnu"))
QEMU = os.environ.get("QCOMPILE_QEMU", "qemu-aarch64")
_RUNTIME_LIBS = ("libtvm_runtime.so", "libtvm_ffi.so")


def cache_dir() -> Path:
    """Root of qcompile's build caches (`$QCOMPILE_CACHE` or `~/.cache/qcompile`)."""
    return Path(os.environ.get("QCOMPILE_CACHE", Path.home() / ".cache" / "qcompile"))


def _versions() -> tuple[str, str]:
    return metadata.version("apache-tvm"), metadata.version("apache-tvm-ffi")


def qemu_available() -> bool:
    """Whether qemu-aarch64, the cross compiler and the sysroot are all present."""
    return shutil.which(QEMU) is not None and shutil.which(CROSS_CXX) is not None and SYSROOT.is_dir()


def ensure_aarch64_runtime() -> Path:
    """Directory holding the aarch64 `libtvm_runtime.so` and `libtvm_ffi.so` (downloaded once)."""
    tvm_v, ffi_v = _versions()
    dest = cache_dir() / f"aarch64-runtime-tvm{tvm_v}-ffi{ffi_v}"
    if all((dest / n).exists() for n in _RUNTIME_LIBS):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--platform", "manylinux_2_28_aarch64",
               "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}", "--only-binary=:all:",
               f"apache-tvm=={tvm_v}", f"apache-tvm-ffi=={ffi_v}", "-d", tmp, "-q"]
        log.info("fetching the aarch64 TVM runtime: %s", " ".join(cmd))
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            raise LoweringError("aarch64 runtime", f"pip download failed: {r.stderr.strip()[-400:]}",
                                f"download the aarch64 wheels of apache-tvm=={tvm_v} and apache-tvm-ffi=={ffi_v} "
                                f"and unzip {', '.join(_RUNTIME_LIBS)} into {dest}")
        for whl in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(whl) as z:
                for info in z.infolist():
                    name = Path(info.filename).name
                    if name in _RUNTIME_LIBS and not (dest / name).exists():
                        part = dest / f".{name}.part"
                        part.write_bytes(z.read(info))
                        os.replace(part, dest / name)
    missing = [n for n in _RUNTIME_LIBS if not (dest / n).exists()]
    if missing:
        raise LoweringError("aarch64 runtime", f"{missing} not found in the downloaded wheels",
                            "check the apache-tvm / apache-tvm-ffi aarch64 wheels")
    return dest


def _ffi_includes() -> list[str]:
    import tvm_ffi

    inc = Path(tvm_ffi.__file__).parent / "include"
    return [str(inc)]


def ensure_runner() -> Path:
    """The cross-compiled runner binary (built on first use, cached by source and version hash)."""
    if shutil.which(CROSS_CXX) is None:
        raise LoweringError("arm_cpu runner", f"cross compiler {CROSS_CXX!r} not found",
                            "install g++-aarch64-linux-gnu or set QCOMPILE_AARCH64_CXX")
    rt = ensure_aarch64_runtime()
    src = RUNNER_SRC.read_bytes()
    key = hashlib.sha256(src + repr(_versions()).encode()).hexdigest()[:16]
    exe = cache_dir() / f"runner-aarch64-{key}"
    if exe.exists():
        return exe
    tmp = exe.with_name(exe.name + f".{os.getpid()}.tmp")
    cmd = [CROSS_CXX, "-O2", "-std=c++17", str(RUNNER_SRC), "-o", str(tmp)]
    cmd += [f"-I{d}" for d in _ffi_includes()]
    cmd += [f"-L{rt}", "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi", f"-Wl,-rpath,{rt}", "-ldl", "-lpthread"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise LoweringError("arm_cpu runner", f"cross compilation failed: {r.stderr.strip()[-800:]}",
                            f"check {CROSS_CXX} and the tvm-ffi headers")
    os.replace(tmp, exe)
    return exe


def run_aarch64(
    lib_path: str | os.PathLike,
    x: np.ndarray,
    repeat: int = 1,
    num_threads: int | None = None,
    timeout: float = 600.0,
) -> tuple[np.ndarray, list[float]]:
    """Run `main(x)` of an aarch64 Relax library under qemu; returns (output, per-run ms if repeat > 1)."""
    if shutil.which(QEMU) is None:
        raise LoweringError("arm_cpu execution", f"{QEMU!r} not found", "install qemu-user (Debian: qemu-user)")
    if not SYSROOT.is_dir():
        raise LoweringError("arm_cpu execution", f"aarch64 sysroot {SYSROOT} missing",
                            "install g++-aarch64-linux-gnu or set QCOMPILE_AARCH64_SYSROOT")
    runner = ensure_runner()
    x = np.ascontiguousarray(x)
    with tempfile.TemporaryDirectory(prefix="qcompile-qemu-") as tmp:
        fin, fout = Path(tmp) / "in.bin", Path(tmp) / "out.bin"
        fin.write_bytes(x.tobytes())
        lib = str(Path(lib_path).resolve())  # the loader wants a path containing a slash
        cmd = [QEMU, "-L", str(SYSROOT), str(runner), lib, str(fin), str(x.dtype),
               ",".join(str(s) for s in x.shape), str(fout), str(int(repeat))]
        env = dict(os.environ)
        if num_threads:
            env["TVM_NUM_THREADS"] = str(int(num_threads))
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as e:
            raise LoweringError("arm_cpu execution", f"qemu run exceeded {timeout:.0f} s",
                                "use a smaller input or raise the timeout") from e
        if r.returncode != 0:
            raise LoweringError("arm_cpu execution", f"runner failed (rc {r.returncode}): {r.stderr.strip()[-800:]}",
                                "check that the library was built for aarch64")
        info = json.loads(r.stdout.strip().splitlines()[-1])
        out = np.frombuffer(fout.read_bytes(), dtype=np.dtype(info["dtype"])).reshape(info["shape"]).copy()
    return out, [float(v) for v in info["ms"]]
