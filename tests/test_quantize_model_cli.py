"""`qcompile quantize-model FILE.py:factory` -> subnet directory that lower / run / export-onnx / calibrate accept."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch

import qcompile as qc
from qcompile.artifacts import load_subnet
from qcompile.cli import main
from qcompile.data import load_dataset

MODEL_FILE = textwrap.dedent('''
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, c=8):
            super().__init__()
            self.conv = nn.Conv2d(3, c, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(c)
            self.relu = nn.ReLU(inplace=True)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(c, 10)

        def forward(self, x):
            x = self.pool(self.relu(self.bn(self.conv(x))))
            return self.fc(torch.flatten(x.mean((2, 3)), 1))


    def make(c=8):
        torch.manual_seed(0)
        net = Net(c)
        with torch.no_grad():  # "trained" BN statistics the command must keep
            net.bn.running_mean.fill_(0.25)
            net.bn.running_var.fill_(2.0)
        return net.eval()
''')


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("usermodel") / "net.py"
    path.write_text(MODEL_FILE)
    return path


@pytest.fixture(scope="module")
def subnet_dir(model_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("sub") / "sub"
    policy = json.dumps({"conv": [4, 8]})
    rc = main(["quantize-model", f"{model_file}:make", "--policy", policy, "--data", "digits",
               "--input-shape", "3,16,16", "--factory-kwargs", '{"c": 12}', "--out", str(out)])
    assert rc == 0
    return out


def test_subnet_directory_round_trips(subnet_dir):
    space, gm, doc = load_subnet(subnet_dir)
    assert space is None and doc["kind"] == "model" and doc["calibrated"]
    assert gm.qc_policy == {"conv": (4, 8), "fc": (8, 8)} and gm.conv.out_channels == 12
    assert float(gm.bn.running_mean[0]) == 0.25  # BN statistics kept (calibrate bn=False)
    assert doc["config"]["resolution"] == 16 and [ly["name"] for ly in doc["layers"]] == ["conv", "fc"]


def test_lower_and_run_accept_it(subnet_dir, tmp_path, capsys):
    low_dir = tmp_path / "low"
    assert main(["lower", str(subnet_dir), "--out", str(low_dir)]) == 0
    _, gm, _ = load_subnet(subnet_dir)
    ig = qc.to_integer(gm)
    low = qc.load(low_dir)
    x = load_dataset("digits", resolution=16).test.images[:3]
    want = np.concatenate([ig(x[i : i + 1]).numpy() for i in range(3)])
    got = np.concatenate([low(x[i : i + 1].numpy()) for i in range(3)])
    np.testing.assert_array_equal(got, want)
    capsys.readouterr()
    assert main(["run", str(low_dir), "--limit", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert [int(line.rsplit("class ", 1)[1]) for line in lines] == want.argmax(1).tolist()


def test_export_onnx_and_calibrate_accept_it(subnet_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from qcompile.backends.onnx.runtime import OnnxRunner

    path = tmp_path / "m.onnx"
    assert main(["export-onnx", str(subnet_dir), "--format", "qoperator", "--out", str(path)]) == 0
    _, gm, _ = load_subnet(subnet_dir)
    x = torch.zeros(1, 3, 16, 16).uniform_(-1, 1)
    got = OnnxRunner(path, threads=1).run_all(x.numpy())["output"]
    np.testing.assert_array_equal(got, qc.to_integer(gm)(x).numpy())
    u8 = tmp_path / "u8.onnx"  # --weights reaches the exporter: every integer layer uint8, still bit-exact
    assert main(["export-onnx", str(subnet_dir), "--format", "qoperator", "--weights", "uint8", "--out", str(u8)]) == 0
    props = {p.key: p.value for p in onnx.load(str(u8)).metadata_props}
    assert props["qcompile.weights"] == "uint8"
    assert set(json.loads(props["qcompile.weight_storage"]).values()) == {"uint8"}
    np.testing.assert_array_equal(OnnxRunner(u8, threads=1).run_all(x.numpy())["output"], got)
    again = tmp_path / "again"
    assert main(["calibrate", str(subnet_dir), "--out", str(again)]) == 0
    _, gm2, _ = load_subnet(again)
    assert float(gm2.bn.running_mean[0]) == 0.25


def test_errors_name_the_field(model_file, tmp_path, capsys):
    assert main(["quantize-model", f"{model_file}:make", "--policy", '{"nope": [8, 8]}', "--out",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "'conv'" in err
    assert main(["quantize-model", f"{model_file}:missing", "--out", str(tmp_path / "y")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["quantize-model", f"{model_file}:make", "--policy", "8,9", "--out", str(tmp_path / "z")]) == 2
    assert "(8, 9)" in capsys.readouterr().err
