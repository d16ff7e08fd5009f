"""to-integer: IntegerGraph vs the fake-quant subnet (codes, logits, top-1), golden program text, refusals.

Reference for every check is the fake-quant model itself (float32 torch), read through its quantizers'
codes, plus NumPy-level bounds computed here from the IntegerGraph's constants:

- classifier bound (per sample and class): `|logit_int - logit_fq| <= acc_scale_c (1/2 + sum_k |w_q[c,k]|
  |dx_k|) + 1e-5 (1 + |logit|)`, where `dx` is the code difference at the classifier input, 1/2 is the
  bias rounding and the last term covers the fake-quant model's float32 arithmetic.
- first-layer bound (identical input codes): codes differ by at most `ceil(r_c/2 + r_c |z+beta-pad| sum|w_q|)`
  (`r_c = M_c / 2^s_c`, bias rounding and padding border, passes/to_integer.py error terms 1-2).
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qcompile import ops as Q
from qcompile.debug.compare import _Recorder, compare_codes, compare_codes_local, logit_bound, quantizer_codes
from qcompile.errors import LoweringError
from qcompile.ops import IntegerGraph
from qcompile.passes import PassManager
from qcompile.passes.to_integer import to_integer
from qcompile.quant import calibration
from tests.passes.fq_nets import NETS, bq, digits16, qconv, qlinear, trace_fq, trained

SHAPE = (1, 1, 16, 16)


def _logits(gm, ig, x):
    with torch.no_grad():
        return gm(x).double(), ig(x).to(torch.float64)


@pytest.mark.parametrize("kind", list(NETS))
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_integer_program_matches_fake_quant(kind, seed):
    gm = trained(kind, seed)
    x = digits16()["xte"]
    # float epilogue: integer convs, exact float64 epilogues -> the fake-quant model code for code
    ig_exact = to_integer(gm, input_shape=SHAPE, float_epilogue=True)
    ref, out = _logits(gm, ig_exact, x)
    assert (ref.argmax(1) == out.argmax(1)).double().mean() >= 0.99
    for d in compare_codes(gm, ig_exact, x):
        assert d.mismatch <= 2e-3, d
    # teacher-forced (each op reads the fake-quant codes of its inputs): each op's own error is one code
    for d in compare_codes_local(gm, ig_exact, x):
        assert d.max_diff <= 1 and d.mismatch <= 2e-3, d
    assert torch.all((out - ref).abs() <= logit_bound(gm, ig_exact, x, ref))
    # the integer program of the contract (requantize with int32 bias): within the documented bound
    ig = to_integer(gm, input_shape=SHAPE)
    assert "requantize" in ig.ops() or kind == "mixed"
    ref, out = _logits(gm, ig, x)
    assert torch.all((out - ref).abs() <= logit_bound(gm, ig, x, ref))
    agree = float((ref.argmax(1) == out.argmax(1)).double().mean())
    # requantize's per-channel offset carries the fractional bias, so the integer program is the
    # float-epilogue program above: same top-1 (measured 0.84-1.0 before the offset existed)
    assert agree >= 0.99, (gm.policy, agree)


def test_first_layer_codes_within_rounding_bound():
    gm = trained("convbnrelu", 0)
    ig = to_integer(gm, input_shape=SHAPE)
    x = digits16()["xte"][:64]
    rq = next(n for n in ig.graph.nodes if n.target is Q.requantize)
    conv = rq.args[0]
    r = getattr(ig, rq.args[1].target).double() / 2.0 ** getattr(ig, rq.args[2].target).double()
    w = getattr(ig, conv.args[1].target).double()
    _, zp = gm.q_in.qparams()
    dz = abs(zp - conv.kwargs["pad_value"])
    bound = r * (0.5 + dz * w.abs().sum(dim=(1, 2, 3)))
    fq = quantizer_codes(gm, x)["q2"]
    rec = _Recorder(ig, {rq.name})
    with torch.no_grad():
        rec.run(x)
    diff = (rec.values[rq.name].long() - fq).abs()
    allowed = torch.ceil(bound).reshape(1, -1, 1, 1)
    assert torch.all(diff <= allowed)
    assert float((diff > 0).double().mean()) <= float(bound.mean()) + 0.02


def _check(text: str, patterns: list[str]) -> None:
    """FileCheck-style: each pattern occurs, in order."""
    pos = 0
    for p in patterns:
        i = text.find(p, pos)
        assert i >= 0, f"CHECK not found after offset {pos}: {p!r}\n{text}"
        pos = i + len(p)


def test_golden_program_text():
    ig = to_integer(trained("convbnrelu", 0), input_shape=SHAPE)
    assert ig.ops() == ["quantize", "conv2d", "requantize", "conv2d", "requantize", "mean", "flatten", "linear",
                        "dequantize_acc"]
    text = ig.program_text()
    _check(text, [
        "%x = input",
        "%q_in_quantize = quantize(%x,", ": uint8[1, 1, 16, 16]",
        "%conv1_conv2d = conv2d(%q_in_quantize, conv1_w:int8[16, 1, 3, 3], conv1_bias:int32[16]",
        "padding=(1, 1)", ": int32[1, 16, 16, 16]",
        "%q2_requantize = requantize(%conv1_conv2d, q2_M:int32[16], q2_shift:int32[16], lo=",
        "%conv2_conv2d = conv2d(%q2_requantize,", "stride=(2, 2)", ": int32[1, 24, 8, 8]",
        "%pool_in_requantize = requantize(%conv2_conv2d,", "'bits': 8",
        "%fc_in_mean = mean(%pool_in_requantize, multiplier=", "'hw': 64",
        "%flatten_flatten = flatten(%fc_in_mean)", ": uint8[1, 24]",
        "%fc_linear = linear(%flatten_flatten, fc_w:int8[10, 24], fc_bias:int32[10])", ": int32[1, 10]",
        "%fc_dequantize_acc = dequantize_acc(%fc_linear, fc_acc_scale:float64[10])",
        "return %fc_dequantize_acc",
    ])
    assert "float." not in text  # no float island in an all-quantized net
    # ReLU6 after conv2 became the clamp of pool_in's requantize: hi < 255 unless 6.0 saturates the quantizer
    q = trained("convbnrelu", 0).pool_in
    s, zp = q.qparams()
    rq = next(n for n in ig.graph.nodes if n.name == "pool_in_requantize")
    assert rq.kwargs["lo"] == max(0, math.floor(zp + 0.5))
    assert rq.kwargs["hi"] == min(255, math.floor(6.0 / s + zp + 0.5))


def test_mbv3_block_program_structure():
    ig = to_integer(trained("mbv3", 0), input_shape=SHAPE)
    ops = ig.ops()
    for op in ("lut", "mul", "add", "mean", "requantize", "dequantize"):
        assert op in ops
    # SE: dequantize the SE input, float mean/convs, quantize the gate, integer mul on codes
    i = ops.index("mul")
    assert ops.index("dequantize") < ops.index("float.hardsigmoid") < i
    assert ops[-2:] == ["linear", "dequantize_acc"]  # the graph output is the classifier's accumulator


def test_pipeline_string_and_save_load(tmp_path):
    gm = trained("swish", 0)
    pm = PassManager("fold-bn,fold-batchquant-bias,to-integer{check_overflow=true}")
    import copy

    res = pm.run(copy.deepcopy(gm))
    ig = res.graph_module
    assert isinstance(ig, IntegerGraph)
    x = digits16()["xte"][:32]
    ig2 = IntegerGraph.load(ig.save(tmp_path / "prog"))
    with torch.no_grad():
        assert torch.equal(ig(x), ig2(x))
        # pipeline without input shape: pools become float islands, still within the classifier bound
        ref = gm(x).double()
        out = ig(x)
    assert torch.all((out - ref).abs() <= logit_bound(gm, ig, x, ref) + 1e-3 * (1 + ref.abs()))


class _Gelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = bq(4)
        self.conv = qconv(1, 8, 3, wbits=4)
        self.fc_in = bq(8)
        self.fc = qlinear(8, 10)

    def forward(self, x):
        x = F.gelu(self.conv(self.q(x)))
        return self.fc(self.fc_in(torch.mean(x, dim=(2, 3))))


class _HswishOnAcc(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = bq(4)
        self.conv = qconv(1, 8, 3, wbits=4)
        self.act = nn.Hardswish()
        self.fc_in = bq(8)
        self.fc = qlinear(8, 10)

    def forward(self, x):
        x = self.act(self.conv(self.q(x)))
        return self.fc(self.fc_in(torch.mean(x, dim=(2, 3))))


def _calibrate(module):
    gm = trace_fq(module.eval()).eval()
    x = digits16()["xtr"][:128]
    with torch.no_grad(), calibration(gm):
        gm(x)
    return gm


def test_op_without_integer_form_names_the_node():
    gm = _calibrate(_Gelu())
    with pytest.raises(LoweringError, match=r"node gelu .*gelu.*no integer form"):
        to_integer(gm, input_shape=SHAPE)


def test_uncalibrated_quantizer_names_the_node():
    gm = trace_fq(_HswishOnAcc().eval()).eval()
    with torch.no_grad():
        gm(torch.randn(2, *SHAPE[1:]))
    with pytest.raises(LoweringError, match=r"node q .*not calibrated"):
        to_integer(gm, input_shape=SHAPE)


def test_strict_mode_refuses_float_fallback_and_default_lowers_it_exactly():
    gm = _calibrate(_HswishOnAcc())
    with pytest.raises(LoweringError, match=r"node act.*hardswish needs an 8-bit quantizer"):
        to_integer(gm, input_shape=SHAPE, strict=True)
    ig = to_integer(gm, input_shape=SHAPE)
    assert "float.hardswish" in ig.ops()
    assert any("act" in s for s in ig.program_meta["float_islands"])
    x = digits16()["xte"][:64]
    ref, out = _logits(gm, ig, x)
    assert torch.all((out - ref).abs() <= logit_bound(gm, ig, x, ref))


def test_strict_mode_accepts_float_layers():
    for kind in ("mixed", "mbv3"):
        ig = to_integer(trained(kind, 0), input_shape=SHAPE, strict=True)
        assert ig.program_meta["float_islands"]


def test_input_is_not_modified():
    gm = trained("mbv3", 0)
    before = gm.code
    n_modules = len(list(gm.modules()))
    to_integer(gm, input_shape=SHAPE)
    assert gm.code == before and len(list(gm.modules())) == n_modules
    assert any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())


def test_se_gate_with_fractional_zero_point_stays_integer():
    """A gate zero point z + beta != 0 goes into `mul`'s `offset_x` term: no float island."""
    import copy

    gm = copy.deepcopy(trained("mbv3", 0))
    with torch.no_grad():
        gm.se_gate.beta[str(gm.se_gate.active_bits)].fill_(0.3)
    ig = to_integer(gm, input_shape=SHAPE)
    assert "mul" in ig.ops() and "float.mul" not in ig.ops()
    node = next(n for n in ig.graph.nodes if n.target is Q.mul)
    assert node.kwargs["offset_x"] != 0
    x = digits16()["xte"][:64]
    ref, out = _logits(gm, ig, x)
    assert torch.all((out - ref).abs() <= logit_bound(gm, ig, x, ref))
    assert np.isfinite(out.numpy()).all()
