"""The qcompile command: summaries with real numbers; bad input exits non-zero with one line, no traceback."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

import qcompile as qc
from qcompile.artifacts import load_subnet, save_subnet
from qcompile.cli import main
from qcompile.search.cost import count_macs
from tests.conftest import tiny_space


def _run(capsys, *argv):
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_space_summary_numbers(capsys):
    code, out, _ = _run(capsys, "space", "--space", "mobilenet_v3", "--num-classes", "1000")
    assert code == 0
    assert "566,170,656" in out and "7,664,760" in out  # OFA MobileNetV3 largest at 224
    space = qc.spaces.mobilenet_v3(num_classes=1000)
    assert f"{count_macs(space, space.smallest()):,}" in out


@pytest.fixture()
def subnet_dir(tmp_path):
    torch.manual_seed(0)
    space = tiny_space("mobilenet_v2")
    opts = {"weight_bits": [2, 3, 4, 8, 32], "act_bits": [2, 3, 4, 8, 32]}
    qnet = qc.quantize(qc.trace(space.build_supernet()), **opts)
    cfg = space.sample(seed=1, bits=(2, 3, 4))
    sub = qc.extract(qnet, cfg)
    qc.calibrate(sub, [torch.randn(8, 3, 32, 32) for _ in range(2)])
    return save_subnet(sub, tmp_path / "sub", space=space, quantize_options=opts, calibrated=True), sub


def test_subnet_artifact_round_trip(subnet_dir):
    path, sub = subnet_dir
    _, loaded, doc = load_subnet(path)
    x = torch.randn(2, 3, 32, 32)
    assert doc["calibrated"] is True
    assert torch.equal(loaded(x), sub.eval()(x))


@pytest.mark.parametrize(
    "argv",
    [
        ("extract", "/no/such/run", "--out", "/tmp/x"),
        ("calibrate", "/no/such/subnet"),
        ("lower", "/no/such/subnet", "--out", "/tmp/y"),
        ("export-onnx", "/no/such/subnet", "--out", "/tmp/z.onnx"),
        ("bench", "/no/such/subnet"),
        ("run", "/no/such/lowered"),
        ("train", "--data", "imagenet-2012", "--out", "/tmp/t"),
    ],
)
def test_bad_paths_exit_with_one_line(capsys, argv):
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"qcompile {argv[0]}: error:")


def test_config_for_another_space_is_refused(capsys, subnet_dir, tmp_path):
    path, _ = subnet_dir
    doc = json.loads((path / "subnet.json").read_text())
    doc["config"] = json.loads(qc.spaces.spaceevo().sample(seed=0).to_json())
    (path / "subnet.json").write_text(json.dumps(doc))
    code, _, err = _run(capsys, "lower", str(path), "--out", str(tmp_path / "low"))
    assert code == 2 and "Traceback" not in err
    assert "depths" in err or "resolution" in err or "kernels" in err


def test_uncalibrated_subnet_is_refused(capsys, subnet_dir, tmp_path):
    path, _ = subnet_dir
    doc = json.loads((path / "subnet.json").read_text())
    doc["calibrated"] = False
    (path / "subnet.json").write_text(json.dumps(doc))
    code, _, err = _run(capsys, "lower", str(path), "--out", str(tmp_path / "low"))
    assert code == 2 and "calibrate" in err


def test_corrupt_artifact(capsys, subnet_dir, tmp_path):
    path, _ = subnet_dir
    (path / "state.safetensors").write_bytes(b"garbage")
    code, _, err = _run(capsys, "lower", str(path), "--out", str(tmp_path / "low"))
    assert code == 2 and "state.safetensors" in err


def test_tune_for_arm_without_remote_is_refused(capsys, subnet_dir, tmp_path):
    """ARM kernels are timed on the device: `tune --target arm_cpu` needs `--remote HOST:PORT`, and says so."""
    path, _ = subnet_dir
    code, _, err = _run(capsys, "tune", str(path), "--target", "arm_cpu")
    assert code == 2 and "remote" in err and "host:port" in err
    code, _, err = _run(capsys, "lower", str(path), "--out", str(tmp_path / "low"), "--remote", "127.0.0.1:9")
    assert code == 2 and "tune=False" in err


def test_every_subcommand_help_says_what_it_does(capsys):
    """Each subcommand's own --help opens with its one-line summary from the command list (nested actions too)."""
    from qcompile.cli.app import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                for name, child in action.choices.items():
                    yield [*path, name], helps[name]
                    yield from walk(child, [*path, name])

    commands = list(walk(build_parser(), []))
    assert {"predictor fit", "latency-table show", "export-onnx"} <= {" ".join(c) for c, _ in commands}
    for cmd, summary in commands:
        code, out, _ = _run(capsys, *cmd, "--help")
        text = " ".join(out.split())
        assert code == 0 and (summary[0].upper() + summary[1:]) in text, cmd
