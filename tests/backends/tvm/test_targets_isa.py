"""Kernel families and host checks (`targets.host_kernel_families`, `runs_on_host`, `family_target`) on a host
described by its /proc/cpuinfo flags, so every branch runs on any CPU."""

from __future__ import annotations

import pytest

tvm = pytest.importorskip("tvm")

from qcompile.backends.tvm import targets as T  # noqa: E402
from qcompile.backends.tvm.intrin.x86 import has_avx2, has_avx512_vnni, has_vnni  # noqa: E402
from qcompile.errors import LoweringError  # noqa: E402

AVX2_ONLY = {
    "sse",
    "sse2",
    "sse4_1",
    "sse4_2",
    "ssse3",
    "pni",
    "avx",
    "avx2",
    "fma",
    "bmi1",
    "bmi2",
    "f16c",
    "popcnt",
    "movbe",
}
# an Ice Lake / Cascade Lake style server: AVX-512 VNNI but no VEX AVX-VNNI, no AMX
AVX512_VNNI = AVX2_ONLY | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx512_vnni"}


@pytest.fixture
def host(monkeypatch):
    def use(flags):
        monkeypatch.setattr(T, "_cpu_flags", lambda: set(flags))

    return use


def test_cpuinfo_flags_become_llvm_features(host):
    host(AVX512_VNNI | {"amx_int8", "amx_tile", "avx_vnni"})
    f = T.host_cpu_features()
    assert {"sse3", "bmi", "sse4.1", "avx512vnni", "avxvnni", "amx-int8", "amx-tile"} <= f
    assert T.host_kernel_families() == ("avx2", "avx512", "avx-vnni", "avx512-vnni", "amx-int8")


def test_avx2_host_runs_only_avx2(host):
    host(AVX2_ONLY)
    assert T.host_kernel_families() == ("avx2",)
    assert not T.runs_on_host({"kind": "llvm", "mcpu": "znver5"})  # AVX-512 code: SIGILL on this CPU
    assert not T.runs_on_host(T.ARM_CPU_TARGET)
    vnni = T.family_target("avx512-vnni")  # built for a generic ISA level, never run here
    assert vnni["mcpu"] == "x86-64-v4" and not T.runs_on_host(vnni)
    assert has_avx512_vnni(tvm.target.Target(vnni))
    avx2 = T.family_target("avx2")
    assert T.runs_on_host(avx2) and has_avx2(tvm.target.Target(avx2))


def test_family_targets_of_a_vnni_host_enable_no_wider_extension(host):
    host(AVX512_VNNI)
    assert T.host_kernel_families() == ("avx2", "avx512", "avx512-vnni")
    for fam in ("avx2", "avx512", "avx512-vnni"):
        tgt = T.family_target(fam)
        assert tgt["mcpu"] == T.host_x86_target()["mcpu"] and T.runs_on_host(tgt), fam
    assert not has_vnni(tvm.target.Target(T.family_target("avx2")))
    assert not has_vnni(tvm.target.Target(T.family_target("avx512")))
    assert not T.runs_on_host(T.family_target("avx-vnni"))  # VEX vpdpbusd: this CPU has only the EVEX form
    with pytest.raises(LoweringError, match="unknown kernel family"):
        T.family_target("sse9")


def test_bench_refuses_to_run_code_this_cpu_cannot_execute(host):
    from qcompile.bench.peers import tvm_runners

    host(AVX2_ONLY)
    runners, _ = tvm_runners(None, ["avx512-vnni", "znver5"], 1)  # refused before any lowering
    for name in ("qcompile_tvm_avx512-vnni_untuned", "qcompile_tvm_znver5_untuned"):
        with pytest.raises(RuntimeError, match="this CPU cannot execute"):
            runners[name].build()
