"""`qcompile bench` on a real (tiny, calibrated 8-bit) subnet: the integer rows come from the subnet's
own IntegerGraph, so they are compared with the float twin as well as with the reference executor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import qcompile as qc
from qcompile.bench.fidelity import cosine, rel_l2
from qcompile.cli.bench_run import bench_subnet, float_twin, float_twin_batches
from qcompile.passes.float_copy import float_copy
from qcompile.train.calibrate import batchnorm_modules
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
    twin = float_twin(subnet, float_twin_batches("digits", 3, 32))  # what the float rows run
    with torch.inference_mode():
        fp32 = twin(torch.from_numpy(x)).numpy()
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
        fp_top = twin(images).argmax(1).numpy()
    assert doc["meta"]["eval_set"] == {"n": len(labels), "fake_quant_top1": pytest.approx(float((fq == labels).mean()))}
    assert rows[tvm[0]]["top1"] == pytest.approx(float((ref_top == labels).mean()))
    assert rows[tvm[0]]["agree_fake_quant"] == pytest.approx(float((ref_top == fq).mean()))
    assert rows["torch_fp32"]["top1"] == pytest.approx(float((fp_top == labels).mean()))
    assert rows["torch_fp32"]["agree_fake_quant"] == pytest.approx(float((fp_top == fq).mean()))
    assert f"| {100 * rows[tvm[0]]['top1']:.1f} % |" in md and "rel L2" not in md


def test_float_twin_recomputes_bn_statistics_without_quantizers(subnet):
    """The float rows' network: BN statistics of the float copy over the given batches (the first BN's input
    does not depend on any BN, so its statistics can be computed by hand from the plain copy)."""
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(8, 3, 32, 32, generator=gen) for _ in range(3)]
    plain = float_copy(subnet)
    modules = dict(plain.named_modules())
    bns = {n for n, _ in batchnorm_modules(plain)}
    first = next(n.target for n in plain.graph.nodes if n.op == "call_module" and n.target in bns)
    seen: list[torch.Tensor] = []
    hook = modules[first].register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    with torch.no_grad():
        for b in batches:
            plain(b)
    hook.remove()
    before = {k: v.clone() for k, v in subnet.state_dict().items()}
    twin = float_twin(subnet, batches)
    bn = dict(twin.named_modules())[first]
    torch.testing.assert_close(bn.running_mean, torch.cat(seen).mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    # momentum None: the cumulative average of the per-batch (unbiased) variances
    torch.testing.assert_close(bn.running_var, torch.stack([s.var((0, 2, 3)) for s in seen]).mean(0),
                               rtol=1e-5, atol=1e-6)
    assert not torch.allclose(bn.running_mean, modules[first].running_mean)  # the copy's were the subnet's
    assert all(torch.equal(v, subnet.state_dict()[k]) for k, v in before.items())  # the subnet is untouched
    assert not twin.training
    untouched = float_twin(subnet, None)
    assert torch.equal(dict(untouched.named_modules())[first].running_mean, modules[first].running_mean)
