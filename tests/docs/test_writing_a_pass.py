"""docs/writing_a_pass.md runs as written: its Python blocks in order, its file block written to
disk, its `qcompile` command lines through the CLI; the custom pass runs inside `qc.lower` and
`qcompile lower --pipeline` and the results are bit-identical to the default pipeline's."""

from __future__ import annotations

import re
import shlex
import sys
import types
from pathlib import Path

import numpy as np
import torch

import qcompile as qc
from qcompile.cli import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "writing_a_pass.md"
_BLOCK = re.compile(r'```(python|console)(?: title="([^"]+)")?\n(.*?)```', flags=re.S)


def test_doc_runs_as_written(tmp_path, monkeypatch, capsys):
    blocks = _BLOCK.findall(DOC.read_text())
    assert [k for k, t, _ in blocks if k == "python" and not t], "no python block in docs/writing_a_pass.md"
    monkeypatch.chdir(tmp_path)
    mod = types.ModuleType("writing_a_pass_example")
    sys.modules[mod.__name__] = mod
    commands = []
    try:
        for kind, title, body in blocks:
            if kind == "python" and title:
                (tmp_path / title).write_text(body)
            elif kind == "python":
                exec(compile(body, str(DOC), "exec", dont_inherit=True), mod.__dict__)
            else:
                for line in body.splitlines():
                    if line.startswith("$ qcompile "):
                        argv = shlex.split(line[2:])[1:]
                        assert main(argv) == 0, capsys.readouterr().err
                        commands.append(argv[0])
    finally:
        del sys.modules[mod.__name__]
    assert mod.macs > 0
    assert commands == ["lower", "export-onnx"]

    # the CLI ran the custom pass (its pipeline is recorded) and matches the API and the default pipeline
    x = mod.x
    expected = mod.default_ig(torch.from_numpy(x)).numpy()
    cli_low = qc.load(tmp_path / "lowered")
    assert np.array_equal(cli_low(x), expected)
    assert np.array_equal(mod.low(x), expected)

    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (y,) = sess.run(["output"], {sess.get_inputs()[0].name: x})
    np.testing.assert_array_equal(y, expected.astype(y.dtype))

    # the pass really runs inside both: a stricter option refuses the 4-bit weights
    strict = "fold-bn,fold-batchquant-bias,lower-to-integer,require-weight-bits{allowed=8}"
    try:
        qc.lower(mod.small, target="x86", pipeline=strict)
    except qc.LoweringError as e:
        assert "4-bit weights" in str(e) and "require-weight-bits" in "".join(getattr(e, "__notes__", []))
    else:
        raise AssertionError("qc.lower did not run require-weight-bits")
    code = main(["lower", "subnet", "--pass-module", "my_passes.py", "--pipeline", strict, "--out", "refused"])
    err = capsys.readouterr().err
    assert code == 2 and "4-bit weights" in err and not (tmp_path / "refused").exists()
    assert "require-weight-bits{allowed=2,3,4,8}" in cli_low.meta["program_meta"]["pipeline"]
