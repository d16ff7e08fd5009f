"""TVM's "Scope Saving:" / "Scope Loaded:" debug warnings stay out of the user's stderr (backends/tvm/tvm_log.py),
and nothing else is dropped."""

from __future__ import annotations

import os

import numpy as np
import tvm_graphs as G
from conftest import make_input

from qcompile.backends.tvm import load
from qcompile.backends.tvm.tvm_log import quiet_scope_warnings


def test_run_export_load_of_a_lowering_write_no_scope_lines(mbv2_x86, mbv2_graph, tmp_path, capfd):
    x = make_input(mbv2_graph)
    want = G.reference(mbv2_graph, x)
    np.testing.assert_array_equal(mbv2_x86(x), want)  # the VM has run: one memory-scope entry per constant
    capfd.readouterr()
    # TVM itself, unfiltered, prints one line per constant here: the lines this test keeps out
    mbv2_x86._exec.export_library(str(tmp_path / "raw.so"))
    assert "Scope Saving:" in capfd.readouterr().err
    again = load(mbv2_x86.export(tmp_path / "lib"))
    np.testing.assert_array_equal(again(x), want)
    again.benchmark(repeat=2)
    assert "Scope" not in capfd.readouterr().err


def test_filter_keeps_every_other_line_in_order(capfd):
    with quiet_scope_warnings():
        os.write(2, b"before\n[12:00:00] /p/src/runtime/vm/executable.cc:276: Warning: Scope Saving:\n")
        with quiet_scope_warnings():  # nested: one capture
            os.write(2, b"[12:00:01] /p/src/runtime/vm/executable.cc:340: Warning: Scope Loaded:global\n")
        os.write(2, b"[12:00:02] /p/src/runtime/vm/vm.cc:9: Warning: something else\nafter: Scope Saving: quoted\n")
    assert capfd.readouterr().err == (
        "before\n[12:00:02] /p/src/runtime/vm/vm.cc:9: Warning: something else\nafter: Scope Saving: quoted\n")
    os.write(2, b"restored\n")  # fd 2 is the real stderr again
    assert capfd.readouterr().err == "restored\n"


def test_output_survives_an_exception_in_the_body(capfd):
    try:
        with quiet_scope_warnings():
            os.write(2, b"compiler said this\n")
            raise RuntimeError("build failed")
    except RuntimeError:
        pass
    assert capfd.readouterr().err == "compiler said this\n"
