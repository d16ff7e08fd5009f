"""Target resolution: `"x86"` (this host, features detected), `"arm_cpu"` (aarch64, cross-compiled),
or a TVM target dict. Returns a `TargetSpec` saying how to build, export and run for that target.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcompile.errors import LoweringError

log = logging.getLogger(__name__)

__all__ = ["TargetSpec", "resolve_target", "host_x86_target", "ARM_CPU_TARGET", "CROSS_CXX", "KNOWN_TARGETS"]

KNOWN_TARGETS = ("x86", "arm_cpu")

#: aarch64 with NEON and the int8 dot-product extension (Cortex-A55/A76 and later).
ARM_CPU_TARGET: dict[str, Any] = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]}

#: cross compiler used to link aarch64 libraries (Debian g++-aarch64-linux-gnu); override with QCOMPILE_AARCH64_CXX
CROSS_CXX = os.environ.get("QCOMPILE_AARCH64_CXX", "aarch64-linux-gnu-g++")

# /proc/cpuinfo flag -> LLVM feature, for the features the int8 kernels care about
_X86_FEATURES = {
    "avx2": "+avx2",
    "fma": "+fma",
    "avx512f": "+avx512f",
    "avx512bw": "+avx512bw",
    "avx512vl": "+avx512vl",
    "avx512dq": "+avx512dq",
    "avx512_vnni": "+avx512vnni",
    "avx_vnni": "+avxvnni",
}


@dataclass(frozen=True)
class TargetSpec:
    """How to build for one target.

    name: "x86", "arm_cpu" or "custom"; tvm_target: the dict given to `tvm.target.Target`;
    arch: "x86_64" or "aarch64"; cross_cxx: compiler for `export_library` (None = TVM's default);
    native: whether libraries built for it run in this process.
    """

    name: str
    tvm_target: dict
    arch: str
    cross_cxx: str | None
    native: bool

    def target(self) -> Any:
        import tvm

        return tvm.target.Target(dict(self.tvm_target))


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def host_x86_target(num_threads: int | None = None) -> dict[str, Any]:
    """A target dict for this x86-64 host: `mcpu` from LLVM's host detection, features from cpuinfo."""
    from tvm.target import codegen

    cpu = str(codegen.llvm_get_system_cpu()) or "x86-64"
    flags = _cpu_flags()
    mattr = sorted(v for k, v in _X86_FEATURES.items() if k in flags)
    cores = num_threads or os.cpu_count() or 1
    tgt: dict[str, Any] = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": cpu, "num-cores": int(cores)}
    if mattr:
        tgt["mattr"] = mattr
    return tgt


def resolve_target(target: str | dict, num_threads: int | None = None) -> TargetSpec:
    """Turn the user's target into a TargetSpec; `LoweringError` for unknown targets or missing tools."""
    host_arch = platform.machine()
    if isinstance(target, str):
        if target == "x86":
            if host_arch not in ("x86_64", "AMD64"):
                raise LoweringError(
                    "target='x86'", f"this host is {host_arch}, not x86-64", "pass a TVM target dict instead"
                )
            return TargetSpec("x86", host_x86_target(num_threads), "x86_64", None, True)
        if target == "arm_cpu":
            tgt = dict(ARM_CPU_TARGET)
            if num_threads:
                tgt["num-cores"] = int(num_threads)
            native = host_arch == "aarch64"
            cxx = None if native else CROSS_CXX
            if cxx is not None and shutil.which(cxx) is None:
                raise LoweringError(
                    "target='arm_cpu'",
                    f"cross compiler {cxx!r} not found on PATH",
                    "install it (Debian: apt-get install g++-aarch64-linux-gnu) or set QCOMPILE_AARCH64_CXX",
                )
            return TargetSpec("arm_cpu", tgt, "aarch64", cxx, native)
        raise LoweringError(
            f"target={target!r}", "unknown target", f"use one of {list(KNOWN_TARGETS)} or a TVM target dict"
        )
    if isinstance(target, dict):
        import tvm

        try:
            parsed = tvm.target.Target(dict(target))
        except Exception as e:  # TVM reports unknown kinds/attributes as various error types
            raise LoweringError(f"target={target!r}", f"TVM rejects it ({e})", "fix the target dict") from e
        if str(parsed.kind.name) != "llvm":
            raise LoweringError(
                f"target={target!r}", f"kind {parsed.kind.name!r} is not supported", "use kind 'llvm' (CPU)"
            )
        triple = str(target.get("mtriple", "")) or ("aarch64" if host_arch == "aarch64" else "x86_64")
        if triple.startswith(("aarch64", "arm64")):
            arch = "aarch64"
        elif triple.startswith(("x86_64", "amd64")):
            arch = "x86_64"
        else:
            raise LoweringError(f"target.mtriple={triple!r}", "qcompile builds only for x86-64 and aarch64",
                                "use an mtriple starting with x86_64 or aarch64, or 'x86' / 'arm_cpu'")
        native = arch == ("aarch64" if host_arch == "aarch64" else "x86_64")
        cxx = None if native else (CROSS_CXX if arch == "aarch64" else None)
        if not native and arch != "aarch64":
            raise LoweringError(f"target={target!r}", f"cannot cross-build for {triple}", "use x86 or aarch64")
        if cxx is not None and shutil.which(cxx) is None:
            raise LoweringError(
                f"target={target!r}",
                f"cross compiler {cxx!r} not found on PATH",
                "install it (Debian: apt-get install g++-aarch64-linux-gnu) or set QCOMPILE_AARCH64_CXX",
            )
        tgt = dict(target)
        if num_threads and "num-cores" not in tgt:
            tgt["num-cores"] = int(num_threads)
        return TargetSpec("custom", tgt, arch, cxx, native)
    raise LoweringError(
        f"target={target!r}", f"type {type(target).__name__} is not a target", "pass 'x86', 'arm_cpu' or a dict"
    )
