"""`Lowered.benchmark(remote=...)` / `run_remote` against a local TVM RPC server on 127.0.0.1."""

from __future__ import annotations

import numpy as np
import pytest
import tvm_graphs as G
from conftest import make_input

from qcompile.errors import ConfigError, LoweringError


@pytest.fixture()
def rpc_server():
    from tvm import rpc

    srv = rpc.Server(host="127.0.0.1", port=9190, port_end=9390)
    try:
        yield f"127.0.0.1:{srv.port}"
    finally:
        srv.terminate()


def test_rpc_run_and_benchmark(mbv2_x86, mbv2_graph, rpc_server):
    x = make_input(mbv2_graph, 11)
    np.testing.assert_array_equal(mbv2_x86.run_remote(x, rpc_server), G.reference(mbv2_graph, x))
    res = mbv2_x86.benchmark(repeat=4, remote=rpc_server)
    assert res.where == f"rpc {rpc_server}" and res.repeat == 4 and 0 < res.min_ms <= res.max_ms


def test_rpc_bad_address(mbv2_x86):
    with pytest.raises(ConfigError, match="host:port"):
        mbv2_x86.benchmark(repeat=1, remote="nohostport")
    with pytest.raises(LoweringError, match="cannot connect"):
        mbv2_x86.benchmark(repeat=1, remote="127.0.0.1:1")
