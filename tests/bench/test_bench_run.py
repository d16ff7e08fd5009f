"""`qcompile bench` on a real (tiny, calibrated 8-bit) subnet: the integer rows come from the subnet's
own IntegerGraph, so they are compared with the float twin as well as with the reference executor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import qcompile as qc
from qcompile.bench.fidelity import cosine, rel_l2
from qcompile.cli.bench_run import bench_subnet
from qcompile.passes.float_copy import float_copy
from tests.conftest import tiny_space


@pytest.fixture(scope="module")
def subnet():
    torch.manual_seed(0)
    space = tiny_space("mobilenet_v2")
    qnet = qc.quantize(qc.trace(space.build_supernet()), weight_bits=(8,), act_bits=(8,)).eval()
    sub = qc.extract(qnet, space.largest(bits=8))
    gen = torch.Generator().manual_seed(1)
    qc.calibrate(sub, [(torch.randn(8, 3, 32, 32, generator=gen), torch.zeros(8, dtype=torch.long))
                       for _ in range(2)])
    return sub.eval()


def test_bench_subnet_rows_and_fidelity(subnet, tmp_path):
    md = bench_subnet(subnet, target="x86", out=tmp_path, repeat=2, threads=1,
                      peers=("torch_fp32", "ort_fp32", "ort_ours_qoperator"), eval_limit=40)
    doc = json.loads((tmp_path / "bench.json").read_text())
    rows = {r["name"]: r for r in doc["runners"]}
    tvm = [n for n in rows if n.startswith("qcompile_tvm_")]
    assert len(tvm) == 1 and tvm[0] == f"qcompile_tvm_{doc['meta']['tvm_targets'][tvm[0]]['mcpu']}_untuned"
    assert all(r["status"] == "ok" for r in rows.values()) and tvm[0] in md
    assert doc["meta"]["synthetic_integer_graph"] is False
    # independent references: the float twin and the reference executor of the subnet's IntegerGraph
    ig = qc.to_integer(subnet)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        fp32 = float_copy(subnet)(torch.from_numpy(x)).numpy()
    y_ref = ig(torch.from_numpy(x)).numpy()
    assert rows[tvm[0]]["max_code_diff"] == 0.0
    assert rows[tvm[0]]["rel_l2_vs_fp32"] == pytest.approx(rel_l2(y_ref, fp32), rel=1e-9)
    assert rows[tvm[0]]["cosine_vs_fp32"] == pytest.approx(cosine(y_ref, fp32), rel=1e-9)
    assert rows["ort_ours_qoperator"]["max_code_diff"] < 1.0
    assert rows["ort_fp32"]["rel_l2_vs_fp32"] < 1e-4  # float32 rounding through the layers
    # accuracy columns: the digits test split, against the reference executor and the fake-quant subnet
    from qcompile.data import load_dataset

    test = load_dataset("digits", resolution=32).test
    images, labels = test.images[:40], test.labels[:40].numpy()
    with torch.inference_mode():
        fq = subnet(images).argmax(1).numpy()
        ref_top = np.concatenate([ig(images[i : i + 1]).numpy() for i in range(len(labels))]).argmax(1)
        fp_top = float_copy(subnet)(images).argmax(1).numpy()
    assert doc["meta"]["eval_set"] == {"n": len(labels), "fake_quant_top1": pytest.approx(float((fq == labels).mean()))}
    assert rows[tvm[0]]["top1"] == pytest.approx(float((ref_top == labels).mean()))
    assert rows[tvm[0]]["agree_fake_quant"] == pytest.approx(float((ref_top == fq).mean()))
    assert rows["torch_fp32"]["top1"] == pytest.approx(float((fp_top == labels).mean()))
    assert rows["torch_fp32"]["agree_fake_quant"] == pytest.approx(float((fp_top == fq).mean()))
    assert f"| {100 * rows[tvm[0]]['top1']:.1f} % |" in md and "rel L2" not in md
