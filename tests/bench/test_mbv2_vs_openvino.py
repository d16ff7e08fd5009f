"""`benchmarks.mbv2_vs_openvino`: OpenVINO's executed nodes mapped onto qcompile's kernels, and the ranked table."""

from __future__ import annotations

import pytest

from benchmarks.mbv2_vs_openvino import describe, layers, table


def _conv(c, o, h, k, s, groups=1, add=False, primfunc=None):
    nodes = ["conv2d", "requantize"] + (["add"] if add else [])
    return {"op": "conv2d_requant", "nodes": nodes, "primfuncs": [primfunc] if primfunc else [],
            "workload": {"shapes": [[1, c, h, h], [o, c // groups, k, k]], "stride": [s, s],
                         "padding": [k // 2, k // 2], "groups": groups}}


def _meta():
    return {"kernels": [
        {"op": "quantize", "nodes": ["quantize"], "primfuncs": ["q"], "workload": {"shapes": [[1, 3, 8, 8]]}},
        _conv(3, 16, 8, 3, 2, primfunc="stem"),
        _conv(16, 16, 4, 3, 1, groups=16, primfunc="dw"),
        _conv(16, 16, 4, 3, 1, groups=16),  # a repeat: no PrimFunc of its own, matched by workload
        _conv(16, 8, 4, 1, 1, add=True, primfunc="proj"),
        {"op": "mean", "nodes": ["mean"], "primfuncs": ["mean"], "workload": {"shapes": [[1, 8, 4, 4]]}},
        {"op": "linear", "nodes": ["linear"], "primfuncs": ["fc"], "workload": {"shapes": [[1, 8], [10, 8]]}},
        {"op": "dequantize_acc", "nodes": ["d"], "primfuncs": ["deq"], "workload": {"shapes": [[1, 10]]}},
    ]}


def _node(name, typ, us, exec_type="jit"):
    return {"name": name, "type": typ, "exec_type": exec_type, "min_us": us}


OV = [_node("xq", "Subgraph", 3.0), _node("reorder", "Reorder", 1.0), _node("stem", "Convolution", 10.0),
      _node("dw1", "GroupConvolution", 4.0, "dw_I8"), _node("dw2", "GroupConvolution", 6.0, "dw_I8"),
      _node("proj", "Convolution", 5.0), _node("pool", "ReduceMean", 2.0),
      _node("fc", "FullyConnectedQuantizedLegacy", 7.0), _node("y", "Subgraph", 1.0)]


def test_layers_map_openvino_nodes_in_order_and_describe_ours():
    rows = layers(_meta(), OV, {"stem": (3, 16, 4), "dw1": (16, 16, 4), "proj": (16, 8, 4)})
    assert [[n["name"] for n in r["ov"]] for r in rows] == [["xq", "reorder"], ["stem"], ["dw1"], ["dw2"], ["proj"],
                                                           ["pool"], ["fc"], ["y"]]
    assert [r["primfunc"] for r in rows] == ["q", "stem", "dw", "dw", "proj", "mean", "fc", "deq"]
    assert rows[1]["layer"] == "stem 3x3 s2, 3->16, 4 px"
    assert rows[2]["layer"] == "dw 3x3 s1, 16->16, 4 px"
    assert rows[4]["layer"] == "project +add, 16->8, 4 px"
    assert describe(_meta()["kernels"][0]) == "quantize 3x8x8"


def test_layers_refuse_a_mismatched_program():
    bad = [n if n["name"] != "dw1" else _node("dw1", "Convolution", 4.0) for n in OV]
    with pytest.raises(RuntimeError, match="does not match"):
        layers(_meta(), bad, {})
    with pytest.raises(RuntimeError, match="convolutions"):
        layers(_meta(), [n for n in OV if n["name"] != "proj"], {})


def test_table_groups_repeats_and_ranks_by_time_lost():
    meta = _meta()
    res = {"layers": layers(meta, OV, {}), "threads": 1, "max_others_cores": 0.2, "rounds_quiet": 3,
           "others_cores": [0.0, 0.1, 0.3], "loadavg_end": ["0.5", "0.4", "0.3"],
           "network_min_us": {"openvino": 40.0, "qcompile": 50.0},
           "qcompile_primfuncs": {"q": 2.0, "stem": 9.0, "dw": 8.0, "proj": 5.0, "mean": 1.0, "fc": 3.0, "deq": 0.5}}
    lines = table(res).splitlines()
    # dw: 2 calls x 8 us against 4 + 6 us: 6 us lost, first; the classifier: 3 against 7, last
    assert lines[2] == "| dw 3x3 s1, 16->16, 4 px | 2 | 5.0 (dw_I8) | 8.0 | 1.60 | +6.0 |"
    assert lines[-4].startswith("| linear 8 | 1 | 7.0 (jit) | 3.0 | 0.43 | -4.0 |")
    assert lines[-3] == "| **sum** | | **39** | **36** | **0.94** | **-2** |"  # 36.5 us
    assert "OpenVINO 40 us" in lines[-1] and "qcompile 50 us" in lines[-1] and "3 of 3" in lines[-1]
