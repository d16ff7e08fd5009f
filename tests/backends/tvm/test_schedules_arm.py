"""aarch64 strategies (sdot and NEON) bit-exact against qcompile.ops.reference under qemu-aarch64.

All cases of one target live in a single Relax function (one cross build and one qemu run per target):
the input is the concatenation of every case's activation codes, each case is sliced out, run through
the strategy `select_strategy` picks, flattened to int32 and concatenated into one output.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402
from tvm_graphs import conv_call_params  # noqa: E402

from qcompile.backends.tvm.qemu import qemu_available, run_aarch64  # noqa: E402
from qcompile.backends.tvm.schedules.arm import (  # noqa: E402
    CODE_OFFSET,
    arm_mode,
    fold_code_offset,
    is_arm,
)
from qcompile.backends.tvm.strategy import OpCall, select_strategy  # noqa: E402
from qcompile.backends.tvm.targets import ARM_CPU_TARGET, CROSS_CXX  # noqa: E402
from qcompile.ops import reference as R  # noqa: E402

SDOT = tvm.target.Target(dict(ARM_CPU_TARGET, **{"num-cores": 2}))
#: aarch64 without the dotprod extension (Cortex-A53/A72 class): the NEON fallback
NEON_DICT = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": 2}
NEON = tvm.target.Target(NEON_DICT)
#: Armv8.6 with the int8 matrix multiply (`smmla`; qemu-aarch64's default "max" CPU has it)
I8MM = tvm.target.Target(dict(ARM_CPU_TARGET, mattr=["+neon", "+dotprod", "+i8mm"], **{"num-cores": 2}))
TARGETS = {"sdot": SDOT, "neon": NEON, "i8mm": I8MM}

needs_qemu = pytest.mark.skipif(not qemu_available(), reason="needs qemu-aarch64 and aarch64-linux-gnu-g++")


# name, op, (c, h, w), o, k, stride, pad, groups, pad_value, weight bits, activation pattern
CASES = [
    ("pw-odd", "conv2d_requant", (19, 5, 7), 13, 1, 1, 0, 1, 0, 8, "random"),
    ("pw-2bit", "conv2d_requant", (24, 6, 6), 16, 1, 1, 0, 1, 0, 2, "random"),
    ("pw-255-minw", "conv2d_requant", (33, 4, 4), 8, 1, 1, 0, 1, 0, 8, "all255"),
    ("pw-0", "conv2d_requant", (16, 4, 5), 8, 1, 1, 0, 1, 0, 8, "all0"),
    ("full3x3-s1", "conv2d_requant", (5, 9, 11), 12, 3, 1, 1, 1, 37, 8, "random"),
    ("full3x3-s2", "conv2d_requant", (3, 13, 12), 16, 3, 2, 1, 1, 201, 2, "random"),
    ("full3x3-s2-255", "conv2d_requant", (7, 8, 8), 6, 3, 2, 1, 1, 255, 8, "all255"),
    ("dw-s1", "conv2d_requant", (21, 9, 10), 21, 3, 1, 1, 21, 17, 8, "random"),
    ("dw-s2", "conv2d_requant", (13, 11, 9), 13, 3, 2, 1, 13, 250, 2, "random"),
    ("dw5-s2-255", "conv2d_requant", (8, 10, 10), 8, 5, 2, 2, 8, 0, 8, "all255"),
    ("acc-pw", "conv2d", (17, 3, 5), 9, 1, 1, 0, 1, 0, 8, "random"),
    ("acc-full", "conv2d", (6, 7, 7), 10, 3, 2, 1, 1, 99, 4, "random"),
    ("acc-dw", "conv2d", (11, 6, 7), 11, 3, 1, 1, 11, 3, 8, "random"),
]


def _make_case(rng, case):
    name, op, (c, h, w), o, k, s, p, groups, pad_value, wbits, pattern = case
    if pattern == "all255":
        x = np.full((1, c, h, w), 255, np.uint8)
    elif pattern == "all0":
        x = np.zeros((1, c, h, w), np.uint8)
    else:
        x = rng.integers(0, 256, (1, c, h, w)).astype(np.uint8)
        x.reshape(-1)[:5] = (0, 255, 0, 255, 128)
    lo_w, hi_w = -(2 ** (wbits - 1)), 2 ** (wbits - 1)
    wt = rng.integers(lo_w, hi_w, (o, c // groups, k, k)).astype(np.int8)
    if pattern == "all255":
        wt[: o // 2] = lo_w  # the most negative weights times the largest codes: the extreme accumulators
        wt[o // 2 :] = hi_w - 1
    fan_in = (c // groups) * k * k
    acc_mag = fan_in * 255 * 2 ** (wbits - 1)
    bias = rng.integers(-acc_mag // 8 - 1, acc_mag // 8 + 1, o).astype(np.int32)
    # multipliers near 2^31 - 1 with shifts that map typical accumulators onto ~0..255
    mult = rng.integers(2**31 - 2**20, 2**31, o).astype(np.int32)
    mult[0] = 2**31 - 1
    sigma = max(np.sqrt(fan_in) * 2 ** (wbits - 1) * 74, 1.0)
    shift = (31 + np.floor(np.log2(3 * sigma / 255)) + rng.integers(-1, 2, o)).astype(np.int32)
    if pattern == "all255":
        # centre the extreme accumulators in the code range, so a wrong accumulator shows as a wrong code
        acc0 = R.conv2d(
            torch.from_numpy(x), torch.from_numpy(wt), torch.zeros(o, dtype=torch.int32),
            stride=s, padding=p, groups=groups, pad_value=pad_value,
        ).numpy()  # fmt: skip
        mid = np.round(rng.integers(20, 236, o) * 2.0 ** (shift.astype(np.float64) - 31))
        bias = (mid - acc0.mean(axis=(0, 2, 3))).astype(np.int32)
    lohi = {"lo": 2, "hi": 253} if op == "conv2d_requant" else {}
    params = conv_call_params(x.shape, wt.shape, s=s, p=p, groups=groups, pad_value=pad_value, node=name, **lohi)
    acc = R.conv2d(
        torch.from_numpy(x), torch.from_numpy(wt), torch.from_numpy(bias),
        stride=s, padding=p, groups=groups, pad_value=pad_value,
    )  # fmt: skip
    if op == "conv2d_requant":
        ref = R.requantize(acc, torch.from_numpy(mult), torch.from_numpy(shift), **lohi).numpy()
        consts = [wt, bias, mult, shift]
    else:
        ref = acc.numpy()
        consts = [wt, bias]
    return x, op, params, consts, ref


@pytest.fixture(scope="module")
def cases():
    rng = np.random.default_rng(2026)
    return [_make_case(rng, c) for c in CASES]


def _build(cases, target):
    """One Relax module running every case; returns (executable, input vector, strategy names)."""
    total = sum(x.size for x, *_ in cases)
    xin = relax.Var("x", relax.TensorType((total,), "uint8"))
    bb = relax.BlockBuilder()
    names = []
    with bb.function("main", [xin]):
        with bb.dataflow():
            outs, pos = [], 0
            for x, op, params, consts, _ref in cases:
                call = OpCall(op, params, target)
                strat = select_strategy(call)
                assert strat is not None, params["node"]
                names.append(strat.name)
                xs = bb.emit(relax.op.strided_slice(xin, axes=[0], begin=[pos], end=[pos + x.size]))
                xs = bb.emit(relax.op.reshape(xs, x.shape))
                pos += x.size
                y = strat.emit(bb, call, [xs, *(relax.const(c) for c in consts)])
                y = bb.emit(relax.op.reshape(y, (-1,)))
                outs.append(bb.emit(relax.op.astype(y, "int32")))
            out = bb.emit_output(relax.op.concat(outs, axis=0))
        bb.emit_func_output(out)
    ex = relax.build(bb.get(), target)
    return ex, np.concatenate([x.reshape(-1) for x, *_ in cases]), names


@pytest.fixture(scope="module")
def arm_builds(cases, tmp_path_factory):
    out = {}
    for mode, target in TARGETS.items():
        ex, xin, names = _build(cases, target)
        lib = tmp_path_factory.mktemp(f"arm_{mode}") / "lib.so"
        ex.export_library(str(lib), cc=CROSS_CXX)
        out[mode] = (lib, xin, names)
    return out


def test_target_predicates():
    assert is_arm(SDOT) and is_arm(NEON)
    assert not is_arm(tvm.target.Target({"kind": "llvm", "mcpu": "core-avx2"}))
    assert arm_mode(SDOT) == "sdot" and arm_mode(NEON) == "neon" and arm_mode(I8MM) == "i8mm"
    assert arm_mode(I8MM, 13) == "sdot" and arm_mode(I8MM, 12) == "i8mm"  # smmla fills 2 channels per call
    a55 = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a55"})
    assert arm_mode(a55) == "sdot"  # dotprod implied by the core, not only by mattr


def test_code_offset_identity_exact():
    """sum(x*w) = sum((x-128)*w) + 128*sum(w), checked in numpy over all codes and 2..8-bit weights."""
    rng = np.random.default_rng(0)
    for bits in range(2, 9):
        w = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), (7, 300)).astype(np.int8)
        x = rng.integers(0, 256, (300, 11)).astype(np.int64)
        x[:, 0], x[:, 1] = 0, 255
        shifted = x - CODE_OFFSET
        assert shifted.min() >= -128 and shifted.max() <= 127  # fits the s8 operand of sdot/smull
        folded = fold_code_offset(np.zeros(7, np.int32), w)
        np.testing.assert_array_equal(w.astype(np.int64) @ shifted + folded[:, None], w.astype(np.int64) @ x)


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize("mode", ["sdot", "neon", "i8mm"])
def test_arm_strategies_bit_exact_under_qemu(arm_builds, cases, mode):
    lib, xin, names = arm_builds[mode]
    assert all(n.startswith("arm_") for n in names), names
    got, _ = run_aarch64(lib, xin)
    pos = 0
    for (_x, _op, params, _c, ref), case in zip(cases, CASES):
        part = got[pos : pos + ref.size].reshape(ref.shape)
        pos += ref.size
        assert len(np.unique(ref)) > 1, case[0]  # each case exercises more than one value
        if params.get("hi") is not None:
            assert ((ref > params["lo"]) & (ref < params["hi"])).any(), case[0]  # not only the clamps
        np.testing.assert_array_equal(part, ref.astype(np.int32), err_msg=f"{mode} {case[0]}")
    assert pos == got.size


def _disassemble(lib: Path) -> str:
    r = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(lib)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


@needs_qemu
def test_generated_code_uses_the_instruction(arm_builds):
    def kernels_asm(lib: Path) -> str:
        text = _disassemble(lib)
        # only our GEMM kernels' function bodies (objdump prints "<symbol>:" headers)
        blocks = text.split("\n\n")
        return "\n".join(b for b in blocks if "qc_arm_gemm" in b.split("\n", 1)[0])

    sdot_asm = kernels_asm(arm_builds["sdot"][0])
    neon_asm = kernels_asm(arm_builds["neon"][0])
    assert sdot_asm and neon_asm
    # vector forms only (the requantize epilogue uses scalar `smull x, w, w` 32x32->64 in both builds)
    assert re.search(r"\tsdot\tv\d+\.4s, v\d+\.16b, v\d+\.16b", sdot_asm)
    assert "\tsdot\t" not in neon_asm
    assert re.search(r"\tsmull2?\tv\d+\.8h, v\d+\.(8|16)b", neon_asm)
    assert re.search(r"\ts(addlp|adalp)\tv\d+\.4s, v\d+\.8h", neon_asm)
    i8mm_asm = kernels_asm(arm_builds["i8mm"][0])
    assert re.search(r"\tsmmla\tv\d+\.4s, v\d+\.16b, v\d+\.16b", i8mm_asm)
    assert "\tsmmla\t" not in sdot_asm
    # the odd-channel cases (pw-odd: 13, acc-pw: 9) fall back to sdot in the i8mm build
    assert re.search(r"\tsdot\tv\d+\.4s", i8mm_asm)


@needs_qemu
@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.parametrize("name", ["mobilenet_v3", "mobilenet_v2", "spaceevo"])
def test_arm_subnets_bit_exact_batch1(tiny_quantized, name):
    """Real calibrated subnets at batch 1 (where the arm strategies apply), sdot and NEON targets."""
    import qcompile as qc
    from qcompile.backends.tvm import lower_integer_graph

    space, qnet = tiny_quantized[name]
    for seed in range(2):  # one sdot and one NEON subnet per space (~1 min each: TVM builds + qemu)
        cfg = space.sample(seed=seed, bits=(2, 3, 4, 8))
        g = torch.Generator().manual_seed(seed)
        sub = qc.extract(qnet, cfg)
        qc.calibrate(sub, [torch.randn(8, 3, 32, 32, generator=g) for _ in range(2)])
        ig = qc.to_integer(sub)
        x = torch.randn(1, 3, 32, 32, generator=g)
        target = "arm_cpu" if seed % 2 == 0 else NEON_DICT
        low = lower_integer_graph(ig, target, input_shape=(1, 3, 32, 32))
        strategies = {k["strategy"] for k in low.kernels}
        assert {"arm_conv_requant"} <= strategies, strategies
        np.testing.assert_array_equal(low(x.numpy()), ig(x).numpy(), err_msg=f"{name} seed {seed}")
