"""quantize_model (bring your own CNN), integer max pool, calibrate(bn=False), weight-step initialisation.

References: the float model (torch), the fake-quant model, the exact integer reference (`qcompile.ops`),
onnxruntime (QOperator) and TVM x86; hand-computed MACs, steps and max pools.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qcompile as qc
from qcompile.errors import ConfigError, LoweringError
from qcompile.ops import reference as R
from qcompile.passes.quantize_model import ALLOWED_BITS, bitops, init_weight_steps
from qcompile.quant import LSQ, BatchQuant


class TinyCNN(nn.Module):
    """Every supported op in a few channels: stem + max pool, residual, dw/grouped convs, SE, LUTs, head."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.c1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.act2 = nn.Hardswish()
        self.se1 = nn.Conv2d(16, 8, 1)
        self.se2 = nn.Conv2d(8, 16, 1)
        self.gate = nn.Hardsigmoid()
        self.grp = nn.Conv2d(16, 24, 3, stride=2, padding=1, groups=4, bias=False)
        self.bn3 = nn.BatchNorm2d(24)
        self.act3 = nn.SiLU()
        self.c4 = nn.Conv2d(24, 24, 1, bias=True)
        self.act4 = nn.Sigmoid()
        self.relu6 = nn.ReLU6()
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, classes)

    def forward(self, x):
        x = self.pool(self.relu(self.bn0(self.stem(x))))
        x = self.relu(self.bn1(self.c1(x)) + x)
        h = self.act2(self.bn2(self.dw(x)))
        s = self.gate(self.se2(F.relu(self.se1(h.mean((2, 3), keepdim=True)))))
        h = h * s
        h = self.act3(self.bn3(self.grp(h)))
        h = self.relu6(self.act4(self.c4(h)))
        return self.fc(torch.flatten(self.avg(h), 1))


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial 'trained' BN statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 3, 16, 16, generator=g) for _ in range(4)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return _randomise_bn(TinyCNN())


@pytest.fixture(scope="module")
def w8a8(model, data):
    gm = qc.quantize_model(model, (8, 8), (data[0],))
    return qc.calibrate(gm, data[:3], bn=False)


@pytest.fixture(scope="module")
def ig8(w8a8):
    return qc.to_integer(w8a8)


# -- names and policies ---------------------------------------------------------------------------------------


NAMES = ["stem", "c1", "dw", "se1", "se2", "grp", "c4", "fc"]


def test_layer_names_on_plain_and_quantized_model(model, w8a8):
    assert qc.layer_names(model) == NAMES
    assert qc.layer_names(w8a8) == NAMES
    assert w8a8.qc_policy == {n: (8, 8) for n in NAMES}


def test_policy_forms_agree(model, data):
    x = (data[0],)
    mixed = {"stem": (8, 8), "c1": (4, 8), "dw": (8, 4), "grp": (4, 4), "fc": (8, 8)}
    gm = qc.quantize_model(model, mixed, x)
    assert gm.qc_policy["c1"] == (4, 8) and gm.qc_policy["se1"] == (8, 8)  # omitted layers: (8, 8)
    pol = qc.QuantPolicy(tuple(gm.qc_policy[n] for n in NAMES))
    assert qc.quantize_model(model, pol, x).qc_policy == gm.qc_policy
    # the layers really run at those bits
    assert gm.c1.weight_quant.active_bits == 4 and gm.dw_input_quant.active_bits == 4
    codes, _ = gm.grp.weight_quant.codes(gm.grp.weight)
    assert int(codes.min()) >= -8 and int(codes.max()) <= 7


@pytest.mark.parametrize("policy, field, value", [
    ({"nope": (8, 8)}, "policy", "nope"),
    ({"c1": (9, 8)}, "policy['c1']", (9, 8)),
    ((8, 1), "policy", (8, 1)),
    ((16, 8), "policy", (16, 8)),
    ("w8a8", "policy", "w8a8"),
])
def test_bad_policy_names_field_value_and_allowed(model, data, policy, field, value):
    with pytest.raises(ConfigError) as e:
        qc.quantize_model(model, policy, (data[0],))
    assert e.value.field == field and e.value.value == value
    msg = str(e.value)
    assert ("stem" in msg) if field == "policy" and value == "nope" else True
    if isinstance(value, tuple):
        assert str(ALLOWED_BITS) in msg


def test_quant_policy_length_and_weight_init_checked(model, data):
    with pytest.raises(ConfigError, match="8 slots"):
        qc.quantize_model(model, qc.QuantPolicy(((8, 8),) * 3), (data[0],))
    with pytest.raises(ConfigError, match="maxabs"):
        qc.quantize_model(model, (8, 8), (data[0],), weight_init="minmax")
    with pytest.raises(ConfigError, match="example_inputs"):
        qc.quantize_model(model, (8, 8))
    with pytest.raises(ConfigError, match="example_inputs"):  # the model does not run on them
        qc.quantize_model(model, (8, 8), (torch.zeros(1, 5, 16, 16),))


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2)
        self.fc = nn.Linear(8 * 32 * 32, 2)

    def forward(self, x):
        y = self.c(x)
        y = torch.cat([y, self.up(y)[:, :, ::2, ::2]], 1)
        return self.fc(torch.tanh(y.view(y.shape[0], -1)))  # the view is a flatten (normalised); tanh is not


def test_unsupported_layers_listed_in_one_error():
    with pytest.raises(LoweringError) as e:
        qc.quantize_model(Unsupported(), (8, 8), (torch.zeros(1, 3, 32, 32),))
    msg = str(e.value)
    for part in ("Upsample", "cat", "getitem", "tanh", "Remedy"):
        assert part in msg, part
    assert e.value.where.startswith("model Unsupported: 4 unsupported node(s)") and "view" not in msg


# -- weight steps ---------------------------------------------------------------------------------------------


def _sq_err(w: torch.Tensor, s: torch.Tensor, bits: int) -> torch.Tensor:
    n, p = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = torch.floor(torch.clamp(w / s[:, None], n, p) + 0.5)
    return ((q * s[:, None] - w) ** 2).sum(1)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_weight_steps_maxabs_mse_lsq(bits):
    torch.manual_seed(bits)
    w = torch.distributions.Laplace(0.0, 1.0).sample((6, 200)).to(torch.float64)  # heavy tails: clipping pays
    steps = {}
    for method in ("maxabs", "mse", "lsq"):
        q = LSQ((bits,), per_channel=True, num_channels=6)
        q.active_bits = bits
        steps[method] = init_weight_steps(q, w.float(), method).to(torch.float64)
    qp = 2 ** (bits - 1) - 1
    torch.testing.assert_close(steps["maxabs"], w.abs().amax(1) / qp, rtol=1e-6, atol=0)
    torch.testing.assert_close(steps["lsq"], 2 * w.abs().mean(1) / qp**0.5, rtol=1e-6, atol=0)
    e = {k: _sq_err(w, s, bits) for k, s in steps.items()}
    assert bool((e["mse"] <= e["maxabs"] * (1 + 1e-6)).all())
    # a fine brute-force search beats the 96-point grid by little
    ratios = torch.linspace(0.05, 1.0, 2001, dtype=torch.float64)
    best = torch.stack([_sq_err(w, r * w.abs().amax(1) / qp, bits) for r in ratios]).min(0).values
    assert bool((e["mse"] <= best * 1.15).all()), (e["mse"] / best).max()
    if bits <= 4:
        assert float(e["mse"].sum()) < 0.9 * float(e["maxabs"].sum())


def test_weight_init_changes_quantized_weights(model, data):
    a = qc.quantize_model(model, (4, 8), (data[0],), weight_init="maxabs")
    b = qc.quantize_model(model, (4, 8), (data[0],), weight_init="mse")
    w = model.c1.weight.detach()
    err = {k: float((g.c1.weight_quant(g.c1.weight).detach() - w).pow(2).sum()) for k, g in (("a", a), ("b", b))}
    assert err["b"] < err["a"]


# -- calibration ----------------------------------------------------------------------------------------------


def test_calibrate_bn_false_keeps_bn_statistics(model, data):
    gm = qc.quantize_model(model, (8, 8), (data[0],))
    mean0 = gm.bn1.running_mean.clone()
    qc.calibrate(gm, data[:2], bn=False)
    torch.testing.assert_close(gm.bn1.running_mean, mean0, rtol=0, atol=0)
    assert all(q.is_calibrated for q in gm.modules() if isinstance(q, BatchQuant))
    qc.calibrate(gm, data[:2])  # default: recompute BN statistics (supernet subnets)
    assert not torch.equal(gm.bn1.running_mean, mean0)


# -- lowering -------------------------------------------------------------------------------------------------


def test_every_op_is_integer_and_matches_fake_quant(model, w8a8, ig8, data):
    ops = ig8.ops()
    for op in ("max_pool2d", "add", "mul", "mean", "lut", "conv2d", "requantize", "linear"):
        assert op in ops, op
    assert ig8.program_meta["float_islands"] == ["output: graph output"]
    x = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        yf, yq, yi = model(x), w8a8(x), ig8(x).float()
    spread = float(yf.std())
    assert float((yq - yf).abs().max()) < 0.15 * spread  # w8a8 fake-quant close to float
    assert float((yi - yq).abs().max()) < 0.05 * spread  # integer program = fake-quant up to rounding ties
    assert float((yi.argmax(1) == yq.argmax(1)).float().mean()) >= 0.95


def test_float_layer_in_mixed_policy(model, data):
    gm = qc.quantize_model(model, {"c1": (32, 32), "grp": (2, 4)}, (data[0],))
    qc.calibrate(gm, data[:3], bn=False)
    ig = qc.to_integer(gm)
    assert any(i.startswith("c1") for i in ig.program_meta["float_islands"])
    x = data[3]
    with torch.no_grad():
        yq, yi = gm(x), ig(x).float()
    assert float((yi - yq).abs().max()) < 0.05 * float(yq.std())


@pytest.mark.parametrize("k, s, p, d", [(3, 2, 1, 1), (2, 2, 0, 1), (3, 1, 1, 1), (3, 2, 1, 2), (5, 3, 2, 1)])
def test_max_pool_reference_is_max_pool_of_codes(k, s, p, d):
    x = torch.randint(0, 256, (2, 3, 11, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(k + s))
    want = F.max_pool2d(x.to(torch.float32), k, s, p, d).to(torch.uint8)
    got = R.max_pool2d(x, kernel_size=(k, k), stride=(s, s), padding=(p, p), dilation=(d, d))
    assert torch.equal(got, want)


def test_max_pool_codes_equal_fake_quant_max_pool(w8a8, ig8, data):
    """The codes after max pool are exactly the pooled codes of the fake-quant tensor (monotone dequantize)."""
    n = next(n for n in ig8.graph.nodes if n.target is R.max_pool2d)
    vals = {}

    class Rec(torch.fx.Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            vals[node.name] = out
            return out

    Rec(ig8).run(data[3])
    pooled = vals[n.name]
    src = vals[n.args[0].name]
    assert pooled.dtype == torch.uint8
    assert torch.equal(pooled, F.max_pool2d(src.float(), 3, 2, 1).to(torch.uint8))


def test_onnx_qoperator_exact_and_qdq_within_one_code(ig8, data):
    pytest.importorskip("onnxruntime")
    from qcompile.backends.onnx.runtime import compare_with_reference

    x = data[3][:1]
    q = compare_with_reference(ig8, x, format="qoperator")
    assert q.max_codes == 0 and q.top1_equal
    assert any(d.op == "max_pool2d" for d in q.nodes)
    # QDQ: each fused conv within one code of the reference; the max pool adds nothing to its input's difference
    d = {n.node: n.max_diff for n in compare_with_reference(ig8, x, format="qdq").nodes}
    pool = next(n for n in ig8.graph.nodes if n.target is R.max_pool2d)
    assert d[pool.args[0].name] <= 1 and d[pool.name] <= d[pool.args[0].name]


def test_tvm_x86_bit_exact(ig8, data):
    low = qc.lower(ig8, target="x86")
    for i in range(2):
        x = data[3][i : i + 1]
        np.testing.assert_array_equal(low(x.numpy()), ig8(x).numpy())


# -- what a search needs --------------------------------------------------------------------------------------


def test_layer_info_macs_and_bitops(model, w8a8, data):
    info = {ly.name: ly for ly in qc.layer_info(w8a8)}
    assert info == {ly.name: ly for ly in qc.layer_info(model, (data[0],))}
    # 16x16 input: stem 16x16x16 outputs x 3*9; dw 8x8x16 x 9; grouped 4x4x24 x (16/4)*9; se1 1x1x8 x 16; fc 24*10
    assert info["stem"].macs == 16 * 16 * 16 * 27
    assert info["dw"].macs == 8 * 8 * 16 * 9 and info["dw"].groups == 16
    assert info["grp"].macs == 4 * 4 * 24 * 4 * 9 and info["grp"].stride == (2, 2)
    assert info["se1"].macs == 8 * 16 and info["fc"].macs == 240 and info["fc"].op == "linear"
    total = sum(ly.macs for ly in info.values())
    assert bitops(qc.layer_info(w8a8)) == 64 * total
    assert bitops(qc.layer_info(w8a8), {"stem": (4, 8)}) == 64 * total - 32 * info["stem"].macs


def test_to_integer_lists_every_unsupported_node(w8a8):
    """A graph edited after quantize_model: to_integer names all unsupported nodes in one error."""
    import copy

    gm = copy.deepcopy(w8a8)
    g = gm.graph
    out = next(n for n in g.nodes if n.op == "output")
    src = out.args[0]
    with g.inserting_before(out):
        a = g.call_function(torch.nn.functional.gelu, (src,))
        b = g.call_function(torch.tanh, (a,))
    out.replace_input_with(src, b)
    gm.recompile()
    with pytest.raises(LoweringError) as e:
        qc.to_integer(gm)
    assert e.value.where.startswith("2 unsupported nodes: node gelu (call_function gelu), node tanh")
    assert "max pool" in e.value.remedy


class OldStyle(nn.Module):
    """Spellings of older CNNs: x.view(x.size(0), -1), an average pool over the whole map, F.max_pool2d."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 5, padding=2)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1)
        self.pool = nn.AvgPool2d(4)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = self.pool(F.relu(self.c2(x)))
        return self.fc(x.view(x.size(0), -1))


def test_view_and_whole_map_avg_pool_are_normalised(data):
    torch.manual_seed(0)
    model = OldStyle().eval()
    x = data[0][:, :, :8, :8]
    gm = qc.calibrate(qc.quantize_model(model, (8, 8), (x,)), [x], bn=False)
    ig = qc.to_integer(gm)
    assert {"max_pool2d", "mean", "flatten"} <= set(ig.ops())
    assert ig.program_meta["float_islands"] == ["output: graph output"]
    with torch.no_grad():
        yf, yi = model(x), ig(x).float()
    assert float((yi - yf).abs().max()) < 0.1 * float(yf.std())


def test_minmax_zero_estimator_keeps_positive_gates_exact():
    """QFA Eq. 5 clamps z to [0, 255]: a range [0.45, 0.55] would be shifted and clipped; minmax_zero contains 0."""
    from qcompile.quant.estimators import minmax_zero

    gate = torch.linspace(0.45, 0.55, 101).reshape(1, 101)
    lo, hi = minmax_zero(gate)
    assert float(lo) == 0.0 and float(hi) == pytest.approx(0.55)
    assert [float(v) for v in minmax_zero(torch.tensor([[-2.0, -1.0]]))] == [-2.0, 0.0]
    errs = {}
    for est in ("minmax", "minmax_zero"):
        q = BatchQuant((8,), estimator=est)
        q.active_bits = 8
        q.train()
        errs[est] = float((q(gate).detach() - gate).abs().max())
    assert errs["minmax_zero"] <= 0.55 / 255 / 2 + 1e-6 and errs["minmax"] > 0.3


def test_elastic_bits_switch_policy_with_set_active(model, data):
    """bits_choices: one graph, any policy through qc.set_active (what a bit search on a fixed model needs)."""
    x = (data[0],)
    gm = qc.quantize_model(model, (8, 8), x, bits_choices=(2, 4, 8))
    qc.calibrate(gm, data[:3], bn=False)
    pol4 = {"c1": (4, 4), "grp": (2, 8)}
    cfg = gm.subnet_config.with_policy(qc.QuantPolicy(tuple(pol4.get(n, (8, 8)) for n in NAMES)))
    qc.set_active(gm, cfg)
    assert gm.c1.weight_quant.active_bits == 4 and gm.c1_input_quant.active_bits == 4
    assert gm.grp.weight_quant.active_bits == 2 and gm.stem.weight_quant.active_bits == 8
    # the same as quantizing statically at that policy: weights exactly, logits up to the extra input quantizers
    static = qc.quantize_model(model, pol4, x)
    torch.testing.assert_close(gm.grp.weight_quant(gm.grp.weight), static.grp.weight_quant(static.grp.weight))
    qc.calibrate(static, data[:3], bn=False)
    ig = qc.to_integer(gm)
    with torch.no_grad():
        ys, yi = static(data[3]), ig(data[3]).float()
    assert float((ys - yi).abs().max()) < 0.1 * float(ys.std())
    qc.set_active(gm, cfg.with_policy(None))  # a float config: every bound quantizer passes through
    assert gm.c1.weight_quant.active_bits == 32
