"""Inputs that used to fail silently (or with an AttributeError) raise qcompile errors naming the object,
what is wrong and the remedy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qcompile as qc
from qcompile.errors import ConfigError, LoweringError
from tests.conftest import tiny_space


class PlainCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_quantize_of_a_plain_cnn_is_refused_with_the_remedy():
    with pytest.raises(ConfigError) as e:
        qc.quantize(qc.trace(PlainCNN()))
    msg = str(e.value)
    assert "no elastic conv or linear layer" in msg and "2 plain nn.Conv2d/nn.Linear" in msg
    assert "qc.quantize_model(" in msg


def test_to_integer_of_an_eager_module_is_refused():
    with pytest.raises(LoweringError) as e:
        qc.to_integer(PlainCNN())
    msg = str(e.value)
    assert msg.startswith("to_integer(PlainCNN)") and "eager nn.Module" in msg
    assert "qc.extract(qnet, cfg)" in msg and "qc.quantize_model(" in msg


def test_extract_without_a_config_is_refused(tiny_quantized):
    _, qnet = tiny_quantized["mobilenet_v2"]
    for bad in (None, {"resolution": 32}):
        with pytest.raises(ConfigError) as e:
            qc.extract(qnet, bad)
        assert str(e.value).startswith("cfg: got") and "qcompile.SubnetConfig" in str(e.value)


@pytest.fixture(scope="module")
def float_and_int_programs():
    """The same architecture twice: all-float policy (every conv a float island) and 8-bit."""
    torch.manual_seed(0)
    space = tiny_space("mobilenet_v2")
    qnet = qc.quantize(qc.trace(space.build_supernet()), last_layer=32, head_layers=32)  # fixed layers float too
    arch = space.smallest()
    n = len(space.sample(seed=0, bits=(8,)).policy)
    out = {}
    for name, bits in (("float", 32), ("int8", 8)):
        torch.manual_seed(0)
        sub = qc.extract(qnet, arch.with_policy(qc.QuantPolicy.uniform(n, bits)))
        qc.calibrate(sub, [torch.randn(4, 3, 32, 32) for _ in range(2)])
        out[name] = qc.to_integer(sub)
    return out


def test_lower_refuses_a_program_without_integer_conv_or_linear(float_and_int_programs):
    ig = float_and_int_programs["float"]
    assert "conv2d" not in ig.ops() and "linear" not in ig.ops()  # the premise: only float islands
    with pytest.raises(LoweringError) as e:
        qc.lower(ig, target="x86")
    msg = str(e.value)
    assert "no integer conv or linear" in msg and "float.conv2d" in msg and "allow_float=True" in msg
    assert "conv2d" in float_and_int_programs["int8"].ops()  # the check does not fire on a quantized program
