"""Short QAT finetune of a quantize_model result through the Trainer (OnePointSpace)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import qcompile as qc
from qcompile.data import load_dataset
from qcompile.errors import ConfigError
from qcompile.train.finetune import OnePointSpace, finetune
from tests.passes.test_quantize_model import TinyCNN


def _acc(f, data) -> float:
    with torch.no_grad():
        return float((f(data.test.images).argmax(1) == data.test.labels).float().mean())


def test_qat_finetune_recovers_w4a4_accuracy():
    data = load_dataset("digits", resolution=16)
    torch.manual_seed(0)
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for ep in range(3):
        model.train()
        for x, y in data.train.loader(64, shuffle=True, seed=ep):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    gm = qc.quantize_model(model, (4, 4), (data.train.images[:8],))
    qc.calibrate(gm, data.train.loader(64, shuffle=True, seed=1), max_batches=8, bn=False)
    ptq = _acc(gm, data)
    bn_before = model.bn1.running_mean.clone()
    finetune(gm, data, epochs=2)
    qat = _acc(gm, data)
    assert qat > ptq + 0.05, (ptq, qat)
    assert torch.equal(model.bn1.running_mean, bn_before)  # the float model is untouched
    ig = qc.to_integer(gm)
    with torch.no_grad():
        agree = (ig(data.test.images).argmax(1) == gm(data.test.images).argmax(1)).float().mean()
    assert float(agree) >= 0.97


def test_finetune_checks_its_inputs():
    with pytest.raises(ConfigError, match="quantize_model"):
        finetune(torch.fx.symbolic_trace(TinyCNN()), None)
    cfg = qc.SubnetConfig(16, (), (), ())
    space = OnePointSpace(cfg)
    assert space.largest() is cfg and space.sample(seed=3, bits=(2, 4)) is cfg
    with pytest.raises(ConfigError):
        space.validate(qc.SubnetConfig(32, (), (), ()))
