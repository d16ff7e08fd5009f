"""Run aarch64 libraries under `qemu-aarch64`: the aarch64 TVM runtime and a small C++ runner.

The aarch64 runtime (`libtvm_runtime.so`, `libtvm_ffi.so`) comes from the registry's
manylinux_2_28_aarch64 wheels of the *installed* apache-tvm / apache-tvm-ffi versions, fetched once
with `pip download` into the cache directory (`$QCOMPILE_CACHE`, default `~/.cache/qcompile`). The
runner (`runner/runner.cc`) is cross-compiled against the tvm-ffi headers on first use and cached
by a hash of its source and the versions. Inputs and outputs travel through raw `.bin` files plus
dtype/shape arguments; the runner prints the output dtype, shape and timings as one JSON line.

`QemuRpcServer` runs the same runtime as a TVM RPC server (`runner/rpc_server.cc`: TVM's handshake, then the
runtime's `rpc.ServerLoop`) under qemu on 127.0.0.1: an emulated board for the RPC paths (tuning, benchmark).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
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

__all__ = [
    "EMULATED_QUERY",
    "QemuRpcServer",
    "cache_dir",
    "ensure_aarch64_runtime",
    "ensure_rpc_server",
    "ensure_runner",
    "run_aarch64",
    "qemu_available",
]

#: global function of qcompile's aarch64 RPC server (`runner/rpc_server.cc`) started with `--emulated`: returns
#: what emulates it. A real board's server lacks it (`rpc.remote_emulation`).
EMULATED_QUERY = "qcompile.rpc.server.emulated"

RUNNER_SRC = Path(__file__).with_name("runner") / "runner.cc"
RPC_SERVER_SRC = Path(__file__).with_name("runner") / "rpc_server.cc"
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


def _require_emulator(what: str) -> None:
    """LoweringError naming `what` unless qemu-aarch64 and the aarch64 sysroot are both present."""
    if shutil.which(QEMU) is None:
        raise LoweringError(what, f"{QEMU!r} not found", "install qemu-user (Debian: qemu-user)")
    if not SYSROOT.is_dir():
        raise LoweringError(what, f"aarch64 sysroot {SYSROOT} missing",
                            "install g++-aarch64-linux-gnu or set QCOMPILE_AARCH64_SYSROOT")


def _ffi_includes() -> list[str]:
    import tvm_ffi

    inc = Path(tvm_ffi.__file__).parent / "include"
    return [str(inc)]


def ensure_runner() -> Path:
    """The cross-compiled runner binary (built on first use, cached by source and version hash)."""
    return _cross_build(RUNNER_SRC, "runner-aarch64", "arm_cpu runner")


def ensure_rpc_server() -> Path:
    """The cross-compiled aarch64 TVM RPC server (`runner/rpc_server.cc`; built on first use, cached like the
    runner)."""
    return _cross_build(RPC_SERVER_SRC, "rpc-server-aarch64", "arm_cpu RPC server")


def _cross_build(src_path: Path, stem: str, what: str) -> Path:
    """Cross-compile one C++ source against the tvm-ffi headers and the aarch64 runtime, cached by a hash of the
    source and the TVM versions."""
    if shutil.which(CROSS_CXX) is None:
        raise LoweringError(what, f"cross compiler {CROSS_CXX!r} not found",
                            "install g++-aarch64-linux-gnu or set QCOMPILE_AARCH64_CXX")
    rt = ensure_aarch64_runtime()
    src = src_path.read_bytes()
    key = hashlib.sha256(src + repr(_versions()).encode()).hexdigest()[:16]
    exe = cache_dir() / f"{stem}-{key}"
    if exe.exists():
        return exe
    tmp = exe.with_name(exe.name + f".{os.getpid()}.tmp")
    cmd = [CROSS_CXX, "-O2", "-std=c++17", str(src_path), "-o", str(tmp)]
    cmd += [f"-I{d}" for d in _ffi_includes()]
    cmd += [f"-L{rt}", "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi", f"-Wl,-rpath,{rt}", "-ldl", "-lpthread"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise LoweringError(what, f"cross compilation failed: {r.stderr.strip()[-800:]}",
                            f"check {CROSS_CXX} and the tvm-ffi headers")
    os.replace(tmp, exe)
    return exe


class QemuRpcServer:
    """An aarch64 TVM RPC server under `qemu-aarch64` on this machine: an *emulated* board for the RPC code paths
    (upload, load, `time_evaluator`, tuning). Its timings are emulation, never ARM latency: the server answers
    `EMULATED_QUERY` with a description, and the tuner tags what it times there as emulated.

        with QemuRpcServer() as srv:
            qc.lower(sub, target="arm_cpu", tune=True, remote=srv.address)
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, start_timeout: float = 60.0):
        _require_emulator("arm_cpu RPC server")
        exe = ensure_rpc_server()
        self.host = host
        self.workdir = tempfile.mkdtemp(prefix="qcompile-rpc-")  # the server's uploads; removed by close()
        self.log_path = Path(self.workdir) / "server.log"  # the server's stderr (sessions that ended abnormally)
        # own process group: the server forks one child per session, and close() ends them together
        with open(self.log_path, "w") as err_file:
            self.proc = subprocess.Popen([QEMU, "-L", str(SYSROOT), str(exe), host, str(int(port)),
                                          self.workdir, "--emulated"],
                                         stdout=subprocess.PIPE, stderr=err_file, text=True,
                                         start_new_session=True)
        line = _readline_with_timeout(self.proc, start_timeout)
        if not line.startswith("listening "):
            err = self.log_path.read_text(errors="replace")
            self.close()
            raise LoweringError("arm_cpu RPC server", f"did not start under qemu (said {line!r}; {err.strip()[-400:]})",
                                "check qemu-aarch64 and the aarch64 runtime")
        self.port = int(line.split()[1])
        self.address = f"{host}:{self.port}"
        log.info("aarch64 RPC server under qemu at %s (emulated: timings are not ARM latency)", self.address)

    def close(self) -> None:
        """Stop the server and its session processes."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> QemuRpcServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _readline_with_timeout(proc: subprocess.Popen, timeout: float) -> str:
    """The first stdout line of `proc`, or '' after `timeout` seconds or at its exit."""
    import selectors

    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        return proc.stdout.readline().strip() if sel.select(timeout) else ""
    finally:
        sel.close()


def run_aarch64(
    lib_path: str | os.PathLike,
    x: np.ndarray,
    repeat: int = 1,
    num_threads: int | None = None,
    timeout: float = 600.0,
) -> tuple[np.ndarray, list[float]]:
    """Run `main(x)` of an aarch64 Relax library under qemu; returns (output, per-run ms if repeat > 1)."""
    _require_emulator("arm_cpu execution")
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
