"""Tracing keeps elastic ops as leaves; set_active works on the traced graph as on the eager net."""

from __future__ import annotations

import torch

import qcompile as qc
from qcompile.nn.elastic import DepthGate, ElasticConv2d


def test_elastic_ops_are_leaves(tiny_supernets):
    _, _, graph = tiny_supernets["mobilenet_v3"]
    mods = [graph.get_submodule(n.target) for n in graph.graph.nodes if n.op == "call_module"]
    assert any(isinstance(m, ElasticConv2d) for m in mods)
    assert any(isinstance(m, DepthGate) for m in mods)
    assert "conv2d" not in graph.code  # convs are not traced through


def test_set_active_on_graph_equals_eager(tiny_supernets, space_name):
    space, net, graph = tiny_supernets[space_name]
    x = torch.randn(2, 3, 32, 32)
    for seed in range(3):
        cfg = space.sample(seed=seed)
        qc.set_active(net, cfg)
        qc.set_active(graph, cfg)
        with torch.no_grad():
            torch.testing.assert_close(graph(x), net(x))
