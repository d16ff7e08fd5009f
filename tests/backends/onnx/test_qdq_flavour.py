"""The "qdq" flavour: the fake-quant forward, the integer program and the ONNX QDQ export compute the same
float32 QuantizeLinear arithmetic, checked against onnxruntime (the independent reference) op by op."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import qcompile as qc
from qcompile.backends.onnx.export import OnnxExportOptions, QdqApproximationWarning, build_onnx_model
from qcompile.backends.onnx.runtime import OnnxRunner, compare_with_reference
from qcompile.data import load_dataset
from qcompile.ops import reference as R
from qcompile.quant import BatchQuant, calibration

pytest.importorskip("onnxruntime")


def test_batchquant_qdq_forward_is_quantize_linear():
    torch.manual_seed(0)
    q = BatchQuant((4,), estimator="minmax", flavour="qdq")
    with torch.no_grad():
        q.beta["4"].fill_(0.37)  # a fractional beta: the fixed-point flavour's zero point would be z + 0.37
    x = torch.randn(8, 3, 5, 5) * 2 + 0.3
    with calibration(q):
        q(x)
    q.eval()
    scale, zp = q.qparams()
    assert zp == int(zp)
    s = np.float32(scale)
    ref = np.clip(np.round(x.numpy() / s) + zp, 0, 15)  # QuantizeLinear: x / scale, ties to even
    got = q(x).detach().numpy()
    np.testing.assert_array_equal(got, ((ref - zp) * s).astype(np.float32))
    # the flavour is state: it survives a state dict; a state dict written before flavours is fixed-point
    fresh = BatchQuant((4,), estimator="minmax")
    fresh.load_state_dict(q.state_dict())
    assert fresh.flavour == "qdq"
    old = {k: v for k, v in q.state_dict().items() if k != "qdq"}
    fresh.load_state_dict(old)
    assert fresh.flavour == "fixed-point"
    with pytest.raises(qc.ConfigError, match="flavour"):
        BatchQuant((4,), flavour="qdq8")


def test_requantize_float_rounds_half_to_even():
    acc = torch.tensor([[1], [3], [5], [-3]], dtype=torch.int32).reshape(4, 1)
    out = R.requantize_float(acc, torch.tensor([0.5]), x_scale=1.0, y_scale=1.0, zero_point=10, lo=0, hi=255)
    assert out.reshape(-1).tolist() == [10, 12, 12, 8]  # 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -1.5 -> -2


@pytest.fixture(scope="module")
def qdq_subnet():
    torch.manual_seed(0)
    space = qc.spaces.get_space("mobilenet_v3", num_classes=10, width_mult=0.25, resolutions=(32,))
    graph = qc.trace(space.build_supernet())
    qnet = qc.quantize(graph, weight_bits=(2, 3, 4), act_bits=(2, 3, 4, 8), first_layer=8, se_layers=8,
                       flavour="qdq")
    data = load_dataset("digits", resolution=32, in_channels=space.in_channels)
    sub = qc.extract(qnet, space.sample(seed=3, bits=(2, 3, 4)))
    qc.calibrate(sub, data.train.loader(64, shuffle=True, seed=1, resolution=32), max_batches=2)
    x, _ = next(iter(data.test.loader(96, resolution=32)))
    return space, qnet, sub, x


def test_qdq_flavour_is_bit_exact_on_onnxruntime(qdq_subnet):
    _, _, sub, x = qdq_subnet
    ig = qc.to_integer(sub)
    assert ig.program_meta["flavour"] == "qdq"
    ops = {n.target for n in ig.graph.nodes if n.op == "call_function"}
    assert set(R.QDQ_OPS) <= ops  # every float32 op of the flavour is exercised
    cmp = compare_with_reference(ig, x.numpy(), format="qdq", threads=1)
    assert cmp.meta["qcompile.flavour"] == "qdq"
    for d in cmp.nodes:
        assert d.mismatches == 0, d  # every code, every accumulator, the logits: bit for bit
    # the plain export (no debug outputs) under onnxruntime's default optimisation, which fuses the QDQ
    # patterns into QLinearConv / QLinearAdd / QLinearGlobalAveragePool: the reference logits, bit for bit
    model = build_onnx_model(ig, OnnxExportOptions(format="qdq", input_shape=(1, 3, 32, 32)))
    kinds = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "GlobalAveragePool", "Add"} <= kinds
    with torch.no_grad():
        ref = ig(x).numpy()
    np.testing.assert_array_equal(OnnxRunner(model, threads=1)(x.numpy()), ref)


def test_flavour_can_be_set_at_extract_and_refuses_mixing(qdq_subnet):
    space, qnet, _, _ = qdq_subnet
    sub = qc.extract(qnet, space.smallest(bits=2), flavour="fixed-point")
    assert qc.quant.flavour_of(sub) == "fixed-point"
    with pytest.raises(qc.ConfigError, match="flavour"):
        qc.quantize(qc.trace(space.build_supernet()), flavour="int8")


def test_fixed_point_qdq_export_warns_with_agreement(qdq_subnet, tmp_path):
    space, qnet, _, x = qdq_subnet
    sub = qc.extract(qnet, space.sample(seed=3, bits=(2, 3, 4)), flavour="fixed-point")
    qc.calibrate(sub, [(x[:48], None)])
    with pytest.warns(QdqApproximationWarning, match=r"% of 48 calibration images"):
        qc.export_onnx(sub, tmp_path / "m.onnx", format="qdq")


def test_openvino_agrees_with_integer_program(qdq_subnet):
    pytest.importorskip("openvino")
    from qcompile.backends.onnx.openvino_runner import agreement

    _, _, sub, x = qdq_subnet
    ig = qc.to_integer(sub)
    model = build_onnx_model(ig, OnnxExportOptions(format="qdq", input_shape=(1, 3, 32, 32)))
    # the residual inputs pass a lookup on their codes (OpenVINO would fuse Conv -> Q -> DQ -> Add and skip
    # the rounding); without it top-1 agreement was 17 % on the 359 test images (these logits are close together)
    assert sum(n.op_type == "Gather" and n.input[0].startswith("identity_u8") for n in model.graph.node) >= 5
    res = agreement(ig, model, x)
    assert res.top1_agreement == 1.0
    assert res.max_logit_diff < 1e-2  # the float32 classifier epilogue; every code before it is equal


def test_qdq_fake_quant_forward_has_the_int32_bias_grid(qdq_subnet):
    """The fake-quant forward adds each layer's folded bias on QLinearConv's int32 grid (`BiasGrid`), so it
    computes the integer program's codes; with the hooks removed a 2-bit-input layer is off by many codes."""
    import copy

    from qcompile.debug.compare import compare_codes_local
    from qcompile.passes.bias_grid import BiasGrid

    _, _, sub, x = qdq_subnet
    ig = qc.to_integer(sub)
    local = compare_codes_local(sub, ig, x)
    assert len(local) > 20
    for d in local:  # what remains is float32 rounding order at ties: rare, one code
        assert d.max_diff <= 1 and d.mismatch < 1e-3, d
    with torch.no_grad():
        fq, ref = sub(x), ig(x)
    assert (fq.argmax(1) == ref.argmax(1)).float().mean() >= 0.98
    bare = copy.deepcopy(sub)
    n = 0
    for m in bare.modules():
        for k, h in list(m._forward_hooks.items()):
            if isinstance(h, BiasGrid):
                del m._forward_hooks[k]
                n += 1
    assert n > 10
    assert max(d.max_diff for d in compare_codes_local(bare, ig, x)) > 1


def test_flavour_is_recorded_in_quantize_options_and_restored(qdq_subnet):
    from qcompile.artifacts import build_quantized_supernet

    space, qnet, _, _ = qdq_subnet
    assert qnet.quantize_options["flavour"] == "qdq"
    _, again = build_quantized_supernet(space.to_dict(), qnet.quantize_options)
    assert qc.quant.flavour_of(again) == "qdq"


def _train_mode(model):
    """Training mode with dropout off, so two forwards of the same batch compute the same thing."""
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    return model


def _drop_bias_grid(model) -> int:
    from qcompile.passes.bias_grid import BiasGrid

    n = 0
    for m in model.modules():
        for k, h in list(m._forward_hooks.items()):
            if isinstance(h, BiasGrid):
                del m._forward_hooks[k]
                n += 1
    return n


def test_qdq_training_forward_has_the_int32_bias_grid(qdq_subnet):
    """Training sees the bias grid the deployed model has: in training mode (batch statistics) the qdq
    fake-quant forward equals the eval-mode forward whose BN and BatchQuant running statistics are this batch's
    (eval mode is the integer program's arithmetic, `test_qdq_fake_quant_forward_has_the_int32_bias_grid`);
    the quantized supernet computes what its extracted subnet computes; the grid's rounding is straight-through."""
    import copy

    from torch import nn

    space, qnet, sub, x = qdq_subnet
    x = x[:48]
    cfg = space.sample(seed=3, bits=(2, 3, 4))
    # the supernet carries the hooks (insert_quantizers), and its training forward is the subnet's
    supernet = copy.deepcopy(qnet)
    extracted = _train_mode(qc.extract(supernet, cfg))  # before the supernet's forward moves its BN statistics
    qc.set_active(supernet, cfg)
    with torch.no_grad():
        y_super = _train_mode(supernet)(x)
        y_sub = extracted(x)
    torch.testing.assert_close(y_super, y_sub, rtol=0, atol=1e-6)

    # training mode vs eval mode with the running statistics set to this batch's (mean, biased variance;
    # BatchQuant's batch estimates): the same arithmetic, so equal up to float32 evaluation order (1e-5)
    train = _train_mode(copy.deepcopy(sub))
    seen: dict[str, object] = {}
    hooks = []
    for name, m in train.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_pre_hook(lambda _, a, k=name: seen.__setitem__(k, a[0].detach())))
        elif isinstance(m, BatchQuant):
            hooks.append(m.register_forward_pre_hook(lambda q, a, k=name: seen.__setitem__(k, q.batch_estimates(a[0]))))
    y_train = train(x)
    for h in hooks:
        h.remove()
    ev = copy.deepcopy(train).eval()
    with torch.no_grad():
        for name, m in ev.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(seen[name].mean((0, 2, 3)))
                m.running_var.copy_(seen[name].var((0, 2, 3), unbiased=False))
            elif isinstance(m, BatchQuant):
                m.running_min.copy_(seen[name][0])
                m.running_max.copy_(seen[name][1])
        y_eval = ev(x)
    torch.testing.assert_close(y_train.detach(), y_eval, rtol=0, atol=1e-5)
    assert bool((y_train.argmax(1) == y_eval.argmax(1)).all())

    # without the hooks the training forward is another model (on this subnet: top-1 agreement ~20 %)
    bare = copy.deepcopy(train)
    assert _drop_bias_grid(bare) > 10
    with torch.no_grad():
        y_bare = bare(x)
    assert (y_bare.argmax(1) == y_eval.argmax(1)).float().mean() < 0.9

    # straight-through: one hooked BN in training mode adds a shift of whole accumulator units, and the
    # gradient reaching its affine bias is the upstream gradient summed, as without the shift
    from qcompile.passes.bias_grid import BiasGrid

    bn, grid = next((m, h) for m in train.modules() for h in m._forward_hooks.values()
                    if isinstance(h, BiasGrid) and isinstance(m, nn.BatchNorm2d)
                    and h.layer.weight_quant.active_bits == 2)
    inp = seen[next(k for k, m in train.named_modules() if m is bn)].clone().requires_grad_(True)
    out = bn(inp)
    plain = nn.functional.batch_norm(inp, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    shift = (out - plain).detach()
    assert shift.abs().amax() > 0
    torch.testing.assert_close(shift[0, :, 0, 0], grid.shift(inp, channels=inp.shape[1]).float(), rtol=0, atol=1e-5)
    r = torch.randn_like(out)
    (g_bias,) = torch.autograd.grad((out * r).sum(), bn.bias)
    torch.testing.assert_close(g_bias, r.sum((0, 2, 3)), rtol=1e-5, atol=1e-5)


def test_flavour_benchmark_measures_at_the_config_resolution():
    """`benchmarks/qdq_flavour.py` evaluates a subnet as `evaluate_subnets` (the trainer's report) does: on the test
    split resized to the config's resolution. Labels are the predictions of the subnet calibrated and run at its
    24 px, so the right measurement is 100 %; the 32 px source images give another model's predictions."""
    from benchmarks import qdq_flavour as bq
    from qcompile.data.base import ArrayDataset, DatasetSplits, resize
    from qcompile.train import evaluate_subnets

    torch.manual_seed(0)
    space = qc.spaces.get_space("mobilenet_v3", num_classes=10, width_mult=0.25, resolutions=(24, 32))
    qnet = qc.quantize(qc.trace(space.build_supernet()), weight_bits=(2, 3, 4), act_bits=(2, 3, 4, 8),
                       first_layer=8, se_layers=8, flavour="qdq")
    full = load_dataset("digits", resolution=32, in_channels=space.in_channels)
    idx = torch.arange(128)
    cfg = space.smallest(bits=4)
    assert cfg.resolution == 24
    sub = qc.extract(qnet, cfg)
    qc.calibrate(sub, full.train.loader(64, shuffle=True, seed=1, resolution=24), max_batches=1)
    with torch.no_grad():
        pred = sub(resize(full.test.images[idx], 24)).argmax(1)
        at_source = sub(full.test.images[idx]).argmax(1)
    assert (pred != at_source).any()  # the resolution matters for this model
    data = DatasetSplits(full.train, full.val, ArrayDataset(full.test.images[idx], pred, 10))
    assert evaluate_subnets(qnet, space, data, [cfg], calib_batches=1) == [1.0]
    row = bq.evaluate(qnet, "smallest 4/4", cfg, data, calib_batches=1, threads=1, accuracy_only=True)
    assert row["acc_fake_quant"] == 1.0
    assert row["resolution"] == 24
