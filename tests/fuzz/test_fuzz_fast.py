"""Fast subset of the fuzz suite: the documented bad inputs one by one, plus a fixed sample of the
generated cases that end before any lowering. The full suite is tests/fuzz/test_fuzz.py (slow)."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch

import qcompile as qc
from qcompile.errors import CheckpointError, ConfigError, LoweringError
from tests.fuzz import cases as C
from tests.fuzz import faults as F
from tests.fuzz.harness import Case, copy_artifact, run_cases, run_cli, temp_leftovers, tree_hash

pytestmark = pytest.mark.xdist_group("fuzz-fast")  # the golden artifacts are built once, on one worker


def _assert_clean(family, cs):
    tried, bad = run_cases(family, cs)
    assert tried > 0
    assert not bad, f"{len(bad)} bad endings of {tried}:\n" + "\n".join(bad[:20])


def _one_line(end, *needles):
    assert end.ok, end
    line = end.stderr.strip().splitlines()[-1]
    for n in needles:
        assert n in line, (n, line)
    return line


# -- the issue's examples, one by one ---------------------------------------------------------------

def test_config_nan_inf_depths_are_config_errors(golden):
    good = json.loads(golden.config_json.read_text())
    for bad in ("NaN", "Infinity", "-Infinity"):
        text = json.dumps(good).replace('"depths": [', f'"depths": [{bad}, ', 1)
        with pytest.raises(ConfigError, match="depths"):
            qc.SubnetConfig.from_json(text)
    with pytest.raises(ConfigError, match="policy"):
        qc.SubnetConfig.from_json(json.dumps(dict(good, policy=[[float("inf"), 4]])))


def test_extract_refuses_dicts_other_spaces_and_resolutions(golden):
    from qcompile.artifacts import load_run

    space, qnet, _ = load_run(golden.run)
    cfg = qc.SubnetConfig.from_json(golden.config_json.read_text())
    with pytest.raises(ConfigError, match="SubnetConfig"):
        qc.extract(qnet, cfg.to_dict())
    other = qc.spaces.mobilenet_v3(num_classes=10, width_mult=0.25, resolutions=(32,))
    import dataclasses

    with pytest.raises(ConfigError, match="resolution"):
        qc.extract(qnet, dataclasses.replace(cfg, resolution=7))
    with pytest.raises(ConfigError, match="depths|policy|resolution"):
        qc.extract(qnet, qc.spaces.spaceevo().sample(seed=0, bits=(4,)))
    long_policy = dataclasses.replace(cfg, policy=qc.QuantPolicy((*cfg.policy.bits, (4, 4), (4, 4), (4, 4))))
    with pytest.raises(ConfigError, match="policy"):
        qc.extract(qnet, long_policy)
    assert qc.extract(qnet, other.smallest(bits=4)) is not None  # the same space, built anew, is accepted


def test_calibrate_failures_leave_the_subnet_as_it_was(golden):
    from qcompile.artifacts import load_subnet

    _, sub, _ = load_subnet(golden.subnet)
    before = {k: v.clone() for k, v in sub.state_dict().items()}
    for batches, match in (([], "batch"), (None, "iterable"), ([None], "batches\\[0\\]"),
                           ([torch.rand(2, 3, 16, 16)], "resolution"),
                           ([torch.ones(2, 3, 32, 32, dtype=torch.int64)], "dtype"),
                           ([torch.rand(2, 3, 32, 32), torch.full((2, 3, 32, 32), float("nan"))], "non-finite")):
        with pytest.raises(ConfigError, match=match):
            qc.calibrate(sub, batches)
        after = sub.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), f"state changed by calibrate({batches!r:.30})"
    assert sum(float(v.abs().sum()) for k, v in before.items() if k.endswith("running_var")) > 0


def test_lower_refuses_foreign_mtriple_before_any_work():
    with pytest.raises(LoweringError, match="riscv64"):
        qc.lower(object(), target={"kind": "llvm", "mtriple": "riscv64-unknown-linux-gnu"})


def test_lowered_rejects_non_finite_input():
    from qcompile.backends.tvm.lowered import Lowered
    from qcompile.backends.tvm.targets import TargetSpec

    meta = {"input": {"shape": [1, 3, 4, 4], "dtype": "float32"}, "output": {"shape": [1, 2], "dtype": "float64"},
            "kernels": []}
    low = Lowered(None, None, TargetSpec("x86", {"kind": "llvm"}, "x86_64", None, True), meta, None)
    _assert_clean("api Lowered(x) (no library)", C.lowered_input_cases(low))
    x = np.zeros((1, 3, 4, 4), np.float32)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(ConfigError, match="non-finite"):
        low(x)


@pytest.mark.parametrize("argv,needle", [
    (["space", "--width-mult", "0"], "--width-mult"),
    (["space", "--width-mult", "nan"], "--width-mult"),
    (["bench", "SUB", "--target", "x68"], "x68"),
    (["lower", "SUB", "--out", "OUT", "--target", '{"kind": "llvm", "mtriple": "riscv64-linux-gnu"}'], "riscv64"),
    (["train", "--epochs", "1,1", "--out", "OUT"], "--epochs"),
    (["lower", "SUB", "--out", "SUB"], "not a lowered directory"),
    (["export-onnx", "SUB", "--out", "DIR"], "is a directory"),
    (["frobnicate"], "invalid choice"),
])
def test_issue_examples_end_in_one_line(golden, tmp_path, argv, needle):
    sub = copy_artifact(golden.subnet, tmp_path / "sub")
    (tmp_path / "dir").mkdir()
    names = {"SUB": str(sub), "OUT": str(tmp_path / "out"), "DIR": str(tmp_path / "dir")}
    want = tree_hash(sub)
    end = run_cli([names.get(a, a) for a in argv], expect_ok=False)
    _one_line(end, needle)
    assert tree_hash(sub) == want
    assert not temp_leftovers(tmp_path)
    assert not (tmp_path / "out").exists()


def test_target_json_is_accepted_by_the_cli(golden, tmp_path, monkeypatch):
    """--target help promises TVM target JSON: the CLI parses it and hands qc.lower a dict."""
    seen = {}

    def fake_lower(sub, target="x86", **kw):
        seen["target"] = target
        raise LoweringError("fake", "stop here")

    monkeypatch.setattr(qc, "lower", fake_lower)
    end = run_cli(["lower", str(golden.subnet), "--out", str(tmp_path / "o"), "--target",
                   '{"kind": "llvm", "mcpu": "x86-64"}'], expect_ok=False)
    _one_line(end, "stop here")
    assert seen["target"] == {"kind": "llvm", "mcpu": "x86-64"}


def test_state_safetensors_that_cannot_be_read_is_named(golden, tmp_path):
    sub = copy_artifact(golden.subnet, tmp_path / "sub")
    os.unlink(sub / "state.safetensors")
    (sub / "state.safetensors").mkdir()
    line = _one_line(run_cli(["export-onnx", str(sub), "--out", str(tmp_path / "m.onnx")], expect_ok=False),
                     "state.safetensors")
    assert "No such file" not in line


def test_binary_latest_file_is_named(golden, tmp_path):
    run = copy_artifact(golden.run, tmp_path / "run")
    (run / "checkpoints" / "latest").write_bytes(b"\xff\xfe\x00\x01")
    _one_line(run_cli(["extract", str(run), "--smallest", "--out", str(tmp_path / "x")], expect_ok=False),
              "latest", "binary")


def test_resume_with_another_space_refuses_before_writing(golden, tmp_path):
    run = copy_artifact(golden.run, tmp_path / "run")
    want = tree_hash(run)
    for extra in (["--space", "mobilenet_v2"], ["--width-mult", "0.5"]):
        end = run_cli(["train", "--resume", "--epochs", "0,0,0", "--out", str(run), *extra], expect_ok=False)
        _one_line(end, "run.json")
        assert tree_hash(run) == want


def test_debug_shows_the_traceback(capsys):
    from qcompile.cli import main

    with pytest.raises(ConfigError):
        main(["space", "--resolutions", "0", "--debug"])
    assert main(["space", "--resolutions", "0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_internal_errors_are_one_line_with_exit_70(monkeypatch, capsys):
    import qcompile.cli.app as cli

    monkeypatch.setattr(cli, "cmd_space", lambda args: {}["boom"])
    parser_fn = cli.build_parser

    def patched():
        p = parser_fn()
        for a in p._actions:
            if hasattr(a, "choices") and isinstance(a.choices, dict) and "space" in a.choices:
                a.choices["space"].set_defaults(fn=cli.cmd_space)
        return p

    monkeypatch.setattr(cli, "build_parser", patched)
    assert cli.main(["space"]) == 70
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error: KeyError" in err[0] and "--debug" in err[0]


# -- lowered libraries verified before dlopen ----------------------------------------------------------

def test_lowered_library_checks(golden, tmp_path):
    from qcompile.backends.tvm.lowered import elf_info

    if not golden.fake_lowered.exists():
        pytest.skip("no system shared library to stand in for lib.so")
    lib = golden.fake_lowered / "lib.so"
    data = lib.read_bytes()
    assert elf_info(lib, data)["machine"] == "x86_64"
    for cut in (0, 63, 64, 4096, len(data) // 2, len(data) - 1):
        with pytest.raises(CheckpointError, match="lib.so"):
            elf_info(lib, data[:cut])
    cases = []
    for name, fault in (("half", C.FILE_FAULTS["half"]), ("flipped", C.FILE_FAULTS["flipped"]),
                        ("garbage", C.FILE_FAULTS["garbage"]), ("legacy+cut", C._legacy_then(C.FILE_FAULTS["half"]))):
        def go(fault=fault, name=name):
            d = copy_artifact(golden.fake_lowered, tmp_path / name)
            fault(d / "lib.so")
            return run_cli(["run", str(d), "--limit", "1"], expect_ok=False)
        cases.append(Case(f"run <lib.so {name}>", go, [golden.root]))
    _assert_clean("lowered lib.so (fast)", cases)


# -- nothing destroyed to make room -------------------------------------------------------------------

def test_demo_interrupted_keeps_the_old_directory(tmp_path, monkeypatch):
    end = F.demo_interrupt(tmp_path, monkeypatch)
    assert end.ok, end


def test_subnet_replacement_is_whole_and_atomic(golden, tmp_path):
    from qcompile.artifacts import load_subnet, save_subnet

    space, sub, doc = load_subnet(golden.subnet)
    dst = copy_artifact(golden.subnet, tmp_path / "sub")
    (dst / "stale.txt").write_text("from an older version")
    save_subnet(sub, dst, space=space, quantize_options=doc["quantize"], calibrated=True)
    assert not (dst / "stale.txt").exists()  # replaced as a whole, not file by file
    assert hashlib.sha256((dst / "state.safetensors").read_bytes()).hexdigest() == \
        json.loads((dst / "subnet.json").read_text())["state_sha256"]
    assert not temp_leftovers(tmp_path)


def test_concurrent_tuning_keeps_every_record(tmp_path):
    end = F.concurrent_tuning(tmp_path, 2, 10)
    assert end.ok, end.what


def test_artifacts_without_format_version_still_load(golden, tmp_path):
    from qcompile.artifacts import load_subnet

    sub = copy_artifact(golden.subnet, tmp_path / "sub")
    doc = json.loads((sub / "subnet.json").read_text())
    for k in ("format", "state_sha256"):
        doc.pop(k)
    (sub / "subnet.json").write_text(json.dumps(doc))
    load_subnet(sub)
    doc["format"] = 99
    (sub / "subnet.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="format 99"):
        load_subnet(sub)


# -- a fixed sample of the generated cases ----------------------------------------------------------

def test_sample_cli_arguments(golden, tmp_path):
    _assert_clean("cli arguments (sample)", list(C.cli_argument_cases(golden, tmp_path))[::5])


def test_sample_corrupt_artifacts(golden, tmp_path):
    _assert_clean("corrupt artifacts (sample)", list(C.corrupt_artifact_cases(golden, tmp_path, quick=True))[::6])


def test_sample_api(golden):
    from qcompile.artifacts import load_subnet

    _assert_clean("api SubnetConfig (sample)", list(C.config_cases(golden))[::4])
    _, sub, _ = load_subnet(golden.subnet)
    _assert_clean("api calibrate", C.calibrate_cases(sub))
    _assert_clean("api lower targets", C.target_cases(sub))


def test_disk_full_sample(golden, small_tmpfs):
    _assert_clean("disk full (sample)", F.disk_full_cases(golden, small_tmpfs)[:2])


def test_permission_faults_sample(golden, tmp_path):
    _assert_clean("permission faults (sample)", F.permission_cases(golden, tmp_path)[::3])


def test_space_constructors():
    _assert_clean("api spaces", C.space_cases())


@pytest.mark.parametrize("exchange", [True, False])
def test_staged_dir_swaps_whole_or_not_at_all(tmp_path, monkeypatch, exchange):
    from qcompile.utils import io as qio

    if not exchange:  # the two-rename fallback of systems without renameat2(RENAME_EXCHANGE)
        monkeypatch.setattr(qio, "_exchange", lambda a, b: False)
    target = tmp_path / "art"
    target.mkdir()
    (target / "summary.json").write_text("old")
    want = tree_hash(target)
    with pytest.raises(KeyboardInterrupt), qio.staged_dir(target) as tmp:
        (tmp / "summary.json").write_text("half")
        raise KeyboardInterrupt
    assert tree_hash(target) == want and sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    with qio.staged_dir(target) as tmp:
        (tmp / "summary.json").write_text("new")
    assert (target / "summary.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    assert oct(target.stat().st_mode & 0o777) != oct(0o700)  # not mkdtemp's private mode


def test_check_out_rules(tmp_path):
    from qcompile.utils.io import check_out

    assert check_out(tmp_path / "new", "lowered") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    check_out(tmp_path / "empty", "lowered")
    (tmp_path / "low").mkdir()
    (tmp_path / "low" / "metadata.json").write_text("{}")
    check_out(tmp_path / "low", "lowered")
    with pytest.raises(CheckpointError, match="not a subnet directory"):
        check_out(tmp_path / "low", "subnet")
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        check_out(tmp_path / "f", "lowered")
