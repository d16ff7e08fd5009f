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

__all__ = [
    "TargetSpec",
    "resolve_target",
    "host_x86_target",
    "ARM_CPU_TARGET",
    "CROSS_CXX",
    "KNOWN_TARGETS",
    "KERNEL_FAMILIES",
    "host_cpu_features",
    "host_kernel_families",
    "runs_on_host",
    "family_target",
]

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


# ---- which kernel families this host can execute -------------------------------------------------------
# Code built for another CPU's mcpu may use instructions this one lacks and die with SIGILL (znver5 code
# emits AVX512-VP2INTERSECT, which no Intel Xeon has). Tests and benchmarks therefore build per kernel
# family and execute only where every instruction-set feature of the target is in /proc/cpuinfo.

#: x86 kernel families of the int8 schedules -> the LLVM features they need (intrin/x86.py).
KERNEL_FAMILIES: dict[str, tuple[str, ...]] = {
    "avx2": ("avx2", "fma"),  # vpmaddubsw / vpmaddwd, 8 int32 lanes
    "avx512": ("avx512f", "avx512bw", "avx512vl"),  # vpmaddwd zmm, 16 lanes
    "avx-vnni": ("avxvnni",),  # VEX vpdpbusd ymm
    "avx512-vnni": ("avx512f", "avx512bw", "avx512vl", "avx512vnni"),  # EVEX vpdpbusd / vpdpwssd
    "amx-int8": ("amx-tile", "amx-int8"),  # tdpbsud tiles (schedules/x86/amx.py), large GEMM convs
}

# features a family target must not enable beyond its own (so "avx2" kernels stay 256-bit)
_FAMILY_OFF = {
    "avx2": ("-avx512f", "-avxvnni", "-amx-tile"),
    "avx512": ("-avx512vnni", "-avxvnni", "-amx-tile"),
    "avx-vnni": ("-avx512f", "-amx-tile"),
    "avx512-vnni": ("-amx-tile",),
    "amx-int8": (),
}
# generic x86-64 ISA levels (psABI), used to *build* a family the host lacks; never executed there
_FAMILY_LEVEL = {"avx2": "x86-64-v3", "avx-vnni": "x86-64-v3"}

# LLVM feature names that are instruction-set extensions (others, e.g. tuning flags, do not matter)
_ISA_PREFIXES = ("avx", "amx", "fma", "f16c", "bmi", "sse", "ssse3", "gfni", "vaes", "vpclmulqdq", "sha")


def _llvm_feature_name(flag: str) -> str:
    """A /proc/cpuinfo flag under its LLVM name (avx512_vnni -> avx512vnni, amx_int8 -> amx-int8)."""
    special = {"pni": "sse3", "bmi1": "bmi", "sse4_1": "sse4.1", "sse4_2": "sse4.2", "sha_ni": "sha"}
    if flag in special:
        return special[flag]
    if flag.startswith("amx_"):
        return flag.replace("_", "-")
    return flag.replace("_", "")


def host_cpu_features() -> frozenset[str]:
    """The instruction-set features this CPU reports (/proc/cpuinfo), under LLVM's names."""
    return frozenset(_llvm_feature_name(f) for f in _cpu_flags())


def host_kernel_families() -> tuple[str, ...]:
    """The kernel families of `KERNEL_FAMILIES` this host can execute, in table order."""
    host = host_cpu_features()
    return tuple(name for name, need in KERNEL_FAMILIES.items() if set(need) <= host)


def runs_on_host(target: Any) -> bool:
    """Whether code built for `target` (a tvm Target or dict) can execute on this CPU.

    True when the target is x86-64, this host is x86-64, and every instruction-set feature LLVM enables
    for the target (its mcpu's plus mattr) appears in /proc/cpuinfo.
    """
    import tvm

    from qcompile.backends.tvm.intrin.common import target_features

    tgt = target if isinstance(target, tvm.target.Target) else tvm.target.Target(dict(target))
    triple = str(tgt.attrs.get("mtriple", "") or "")
    if platform.machine() not in ("x86_64", "AMD64") or (triple and not triple.startswith("x86_64")):
        return False
    isa = {f for f in target_features(tgt) if f.startswith(_ISA_PREFIXES)}
    return isa <= host_cpu_features()


def _absent_features(mcpu: str) -> list[str]:
    """`-feature` for every extension LLVM's `mcpu` implies that /proc/cpuinfo does not list (a hypervisor may
    mask some), so a target named after this CPU enables only what it really has."""
    import tvm

    from qcompile.backends.tvm.intrin.common import target_features

    implied = target_features(tvm.target.Target({"kind": "llvm", "mcpu": mcpu}))
    host = host_cpu_features()
    return sorted(f"-{f}" for f in implied if f.startswith(_ISA_PREFIXES) and f not in host)


def family_target(family: str, num_cores: int = 2) -> dict[str, Any]:
    """A target dict that builds `family`'s kernels and enables no wider extension.

    Where this host has the family it is the host's own mcpu with the wider extensions turned off, so
    the code runs here; otherwise a generic ISA level plus the family's features: build it and inspect
    the assembly, but do not execute it (`runs_on_host` says False).
    """
    if family not in KERNEL_FAMILIES:
        raise LoweringError(f"family={family!r}", "unknown kernel family", f"use one of {list(KERNEL_FAMILIES)}")
    if family in host_kernel_families():
        tgt = host_x86_target(num_cores)
        off = {o.lstrip("-") for o in _FAMILY_OFF[family]}
        no_512 = "avx512f" in off  # turning AVX-512F off turns every AVX-512 extension off: drop their "+"
        on = [a for a in tgt.get("mattr", []) if a[1:] not in off and not (no_512 and a.startswith("+avx512"))]
        tgt["mattr"] = on + list(_FAMILY_OFF[family]) + _absent_features(tgt["mcpu"])
        return tgt
    level = _FAMILY_LEVEL.get(family, "x86-64-v4")
    mattr = [f"+{f}" for f in KERNEL_FAMILIES[family]]
    return {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": level, "mattr": mattr, "num-cores": int(num_cores)}


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
