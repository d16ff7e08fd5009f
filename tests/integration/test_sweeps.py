"""End-to-end sweeps over random subnets of every space (the bit-exactness acceptance of the backends).

- integer program vs fake-quant subnet (after calibration on digits): top-1 agreement >= 99 % and
  logits within a bound computed from the classifier input codes;
- TVM x86 (native) and aarch64 (qemu) bit-exact with the reference executor;
- onnxruntime on our QOperator export: every quantized output within one code, top-1 identical.

The fast variants run one or two subnets; the `slow` ones the full counts (CI runs both).
"""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch

import qcompile as qc
from qcompile.debug.compare import logit_bound
from tests.conftest import SPACE_NAMES
from tests.integration.conftest import calibrated_subnet

BITS = (2, 3, 4, 8)


def _integer_vs_fakequant(space, qnet, data, seed):
    cfg = space.sample(seed=seed, bits=(2, 3, 4))
    sub = calibrated_subnet(space, qnet, cfg, data)
    ig = qc.to_integer(sub)
    # The fake-quant subnet evaluated in float64: in float32 its sums round differently from the exact
    # integer accumulators, and a value within ~1e-7 of a code boundary flips a code, which low-bit
    # layers amplify (measured: 97-100 % top-1 in float32, 100 % in float64 on the same subnets).
    sub64 = copy.deepcopy(sub).double()
    x = data.test.images.double()
    with torch.no_grad():
        ref = sub64(x)
        out = ig(x).double()
    agree = float((ref.argmax(1) == out.argmax(1)).double().mean())
    bound = logit_bound(sub64, ig, x, ref)
    return agree, bool(torch.all((out - ref).abs() <= bound)), float((out - ref).abs().max())


@pytest.mark.parametrize("name", ["mobilenet_v3"])
def test_integer_program_agrees_with_fake_quant(trained, digits32, name):
    space, qnet = trained(name)
    for seed in range(2):
        agree, within, _ = _integer_vs_fakequant(space, qnet, digits32, seed)
        assert within and agree >= 0.99, (seed, agree)


@pytest.mark.slow
@pytest.mark.parametrize("name", SPACE_NAMES)
def test_integer_program_agrees_with_fake_quant_50(trained, digits32, name):
    space, qnet = trained(name)
    agreements = []
    for seed in range(50):
        agree, within, maxdiff = _integer_vs_fakequant(space, qnet, digits32, 100 + seed)
        assert within, (seed, maxdiff)
        agreements.append(agree)
    assert float(np.mean(agreements)) >= 0.99 and min(agreements) >= 0.97, agreements


def _untrained_subnet(tiny_quantized, name, seed, flavour="fixed-point"):
    """Calibrated subnet of the untrained tiny supernet: exactness needs no training."""
    space, qnet = tiny_quantized[name]
    cfg = space.sample(seed=seed, bits=BITS)
    g = torch.Generator().manual_seed(seed)
    sub = qc.extract(qnet, cfg, flavour=flavour)
    qc.calibrate(sub, [torch.randn(16, 3, 32, 32, generator=g) for _ in range(2)])
    return qc.to_integer(sub), torch.randn(2, 3, 32, 32, generator=g)


def _tvm_exact(ig, x, target):
    """Lower at batch 1 (what deployment runs, and where qcompile's own kernel strategies apply: at other
    batch sizes the emitter's generic kernels run) and compare each image with the reference executor."""
    from qcompile.backends.tvm import lower_integer_graph

    low = lower_integer_graph(ig, target, input_shape=(1, *x.shape[1:]))
    assert any(k["strategy"] != "naive" for k in low.meta["kernels"]), "no kernel strategy applied"
    ref = ig(x).numpy()
    got = np.concatenate([low(x[i : i + 1].numpy()) for i in range(len(x))])
    return np.array_equal(got.astype(np.float64), ref.astype(np.float64)), low


def test_tvm_x86_bit_exact(tiny_quantized, space_name):
    ig, x = _untrained_subnet(tiny_quantized, space_name, 0)
    exact, _ = _tvm_exact(ig, x, "x86")
    assert exact


#: subnets per space of the slow sweeps: the default flavour's full count; the qdq flavour's float32 epilogues
#: (qcompile.ops.QDQ_OPS) on the space that has them all (SE mul, adds, pools), two subnets to keep CI short
SWEEP = {"fixed-point": 30, "qdq": 2}
SWEEP_CASES = [(name, "fixed-point") for name in SPACE_NAMES] + [("mobilenet_v3", "qdq")]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "flavour"), SWEEP_CASES)
def test_tvm_x86_bit_exact_30(tiny_quantized, name, flavour):
    for seed in range(SWEEP[flavour]):
        ig, x = _untrained_subnet(tiny_quantized, name, 1000 + seed, flavour)
        exact, _ = _tvm_exact(ig, x, "x86")
        assert exact, seed


needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-aarch64") is None or shutil.which("aarch64-linux-gnu-g++") is None,
    reason="qemu-aarch64 / aarch64-linux-gnu-g++ not installed (apt: qemu-user g++-aarch64-linux-gnu)",
)


@needs_qemu
@pytest.mark.slow
@pytest.mark.parametrize(("name", "flavour"), SWEEP_CASES)
def test_tvm_arm_qemu_bit_exact_30(tiny_quantized, name, flavour, tmp_path):
    for seed in range(SWEEP[flavour]):
        ig, x = _untrained_subnet(tiny_quantized, name, 2000 + seed, flavour)
        exact, low = _tvm_exact(ig, x, "arm_cpu")
        assert exact, seed
        if seed == 0:
            path = low.export(tmp_path / f"{name}_arm")
            lib = next(path.glob("*.so"))
            head = lib.read_bytes()[:20]
            assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 0xB7  # EM_AARCH64


def _onnx_check(ig, x, format="qoperator"):
    from qcompile.backends.onnx.runtime import compare_with_reference

    cmp = compare_with_reference(ig, x, format=format, threads=1)
    return cmp.max_codes, cmp.top1_equal


def test_onnx_within_one_code(tiny_quantized, space_name):
    ig, x = _untrained_subnet(tiny_quantized, space_name, 0)
    max_codes, top1 = _onnx_check(ig, x)
    assert max_codes <= 1 and top1


@pytest.mark.slow
@pytest.mark.parametrize(("name", "flavour"), SWEEP_CASES)
def test_onnx_within_one_code_30(tiny_quantized, name, flavour):
    for seed in range(SWEEP[flavour]):
        ig, x = _untrained_subnet(tiny_quantized, name, 3000 + seed, flavour)
        max_codes, top1 = _onnx_check(ig, x)
        assert max_codes <= 1 and top1, (seed, max_codes)
        if flavour == "qdq":  # the plain QDQ export of the qdq flavour: bit-exact
            max_codes, top1 = _onnx_check(ig, x, format="qdq")
            assert max_codes <= 1 and top1, (seed, max_codes)  # float-island stems run float32 there


@pytest.mark.slow
def test_onnx_top1_on_digits(trained, digits32):
    """Our QOperator export classifies the digits test set exactly as the reference executor."""
    from qcompile.backends.onnx.export import OnnxExportOptions, build_onnx_model
    from qcompile.backends.onnx.runtime import OnnxRunner

    space, qnet = trained("mobilenet_v3")
    sub = calibrated_subnet(space, qnet, space.sample(seed=5, bits=(2, 3, 4)), digits32)
    ig = qc.to_integer(sub)
    x = digits32.test.images
    model = build_onnx_model(ig, OnnxExportOptions(format="qoperator", input_shape=tuple(x.shape)))
    got = OnnxRunner(model, threads=1)(x.numpy())
    assert np.array_equal(np.asarray(got).argmax(1), ig(x).numpy().argmax(1))
