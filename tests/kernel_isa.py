"""Which x86 kernel families a test may execute on this host, and a record of those it did.

Tests build every family (the assembly is checked for its instructions) but execute one only where
/proc/cpuinfo has all its features: code for another CPU can die with SIGILL. `tests/conftest.py` prints
the record as the last line of the run, so a green suite says what it covered.
"""

from __future__ import annotations

import re

import tvm

from qcompile.backends.tvm.targets import (
    KERNEL_FAMILIES,
    family_target,
    host_cpu_features,
    host_kernel_families,
    runs_on_host,
)

#: families whose kernels ran in this process (merged across xdist workers by tests/conftest.py)
EXECUTED: set[str] = set()
#: families built and checked in the assembly only, because this host cannot run them
BUILT_ONLY: set[str] = set()


def target(family: str) -> tvm.target.Target:
    """The family's target: the host's own mcpu where it has the family, a generic ISA level otherwise."""
    return tvm.target.Target(family_target(family))


def can_run(family: str) -> bool:
    return family in host_kernel_families() and runs_on_host(family_target(family))


def vnni256_family() -> str:
    """The family whose target gives the 256-bit `vpdpbusd` here (AVX-VNNI, else AVX512-VL VNNI)."""
    if can_run("avx-vnni") or not can_run("avx512-vnni"):
        return "avx-vnni"
    return "avx512-vnni"


def assembly(built) -> str:
    """x86 assembly of a `tvm.compile` result (a PrimFunc library or a Relax executable)."""
    mod = built.mod
    mods = [mod, *mod.imports]
    for m in list(mods):
        mods.extend(m.imports)
    for m in mods:
        try:
            asm = m.inspect_source("asm")
        except Exception:  # noqa: BLE001 - modules without assembly (the VM executable itself)
            continue
        if asm:
            return asm
    raise AssertionError("no module with assembly in the build")


# instructions a family's target must never emit (a wider extension leaking in would SIGILL elsewhere)
_FORBIDDEN = {"avx2": (r"%zmm", r"vpdp(busd|wssd)"), "avx-vnni": (r"%zmm",), "avx512": (r"vpdp(busd|wssd)",)}


def check_instructions(built, family: str, *instructions: str) -> None:
    """Assert each instruction (a regex, e.g. r"vpdpbusd\\s+%zmm") occurs in the build's assembly, and none
    of a wider extension than `family` does."""
    asm = assembly(built)
    for ins in instructions:
        assert re.search(ins, asm), f"{family} kernel: no {ins!r} in the assembly"
    for ins in _FORBIDDEN.get(family, ()):
        assert not re.search(ins, asm), f"{family} kernel: {ins!r} in the assembly"


def should_execute(family: str) -> bool:
    """True (and recorded) when this host runs `family`; else recorded as built only."""
    if can_run(family):
        EXECUTED.add(family)
        return True
    BUILT_ONLY.add(family)
    return False


def summary_line(executed: set[str], built_only: set[str]) -> str:
    """One line: the host's CPU and ISA, and which kernel families were executed or only built."""
    from tvm.target import codegen

    host = host_cpu_features()
    isa = [f for f in ("avx2", "avx512f", "avx512vnni", "avxvnni", "amx-int8") if f in host]
    order = list(KERNEL_FAMILIES)
    ran = sorted(executed, key=order.index)
    only = sorted(built_only - executed, key=order.index)
    return (
        f"qcompile kernels: host {codegen.llvm_get_system_cpu()} ({_model_name()}; {' '.join(isa) or 'no AVX2'}); "
        f"executed: {', '.join(ran) or 'none'}; built and asm-checked only: {', '.join(only) or 'none'}"
    )


def _model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def stack_ymm_in_blocks_with(asm: str, instr: str) -> list[str]:
    """The ymm loads and stores to the stack (`(%rsp)`) in the basic blocks of `asm` that hold a match of the regex
    `instr` (a block ends at a label or a jump, so an epilogue after a loop's branch is not in the loop's block): a
    spilled accumulator or tap vector there costs a load and a store on every reduction step. Asserts `instr`
    occurs at all, so a kernel that lost the instruction cannot pass as spill-free."""
    blocks, cur = [], []
    for line in asm.splitlines():
        if re.match(r"^\S+:", line):  # a label starts a block, a jump ends one
            blocks.append(cur)
            cur = []
        cur.append(line)
        if re.match(r"^\s+j\w+\s", line):
            blocks.append(cur)
            cur = []
    blocks.append(cur)
    hot = [b for b in blocks if any(re.search(instr, ln) for ln in b)]
    assert hot, f"no {instr} in the kernel"
    return [ln.strip() for b in hot for ln in b if "(%rsp)" in ln and "ymm" in ln]
