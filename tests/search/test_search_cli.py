"""`qcompile search` and `qcompile extract --config DIR/pareto/NNN.json`: numbers and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import qcompile as qc
import qcompile.search as qs
from qcompile.artifacts import load_subnet, write_run
from qcompile.cli import main
from qcompile.cli.search_run import parse_constraint, parse_objective_list
from qcompile.errors import ConfigError
from qcompile.train.checkpoint import save_checkpoint
from tests.conftest import tiny_space


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.mark.parametrize("text, spec, limit", [
    ("latency<=0.4ms", "latency", 0.4),
    ("latency:x86 <= 400us", "latency:x86", 0.4),
    ("latency<=0.002s", "latency", 2.0),
    ("bitops<=2e7", "bitops", 2e7),
    ("accuracy>=90%", "accuracy", 0.9),
    ("accuracy>=0.9", "accuracy", 0.9),
])
def test_parse_constraint(text, spec, limit):
    c = parse_constraint(text)
    assert c.spec == spec and c.limit == pytest.approx(limit)


@pytest.mark.parametrize("text", ["latency<0.4ms", "latency<=0.4kg", "bitops>=1e7", "accuracy<=0.9", "foo<=1",
                                  "bitops<=2e7ms", "latency<=fast", ""])
def test_bad_constraint(text):
    with pytest.raises(ConfigError, match="--constraint"):
        parse_constraint(text)


def test_parse_objectives():
    assert parse_objective_list("accuracy, bitops,latency:x86") == ["accuracy", "bitops", "latency:x86"]
    for bad in ("", "flops", "bitops:x86", "bitops,bitops"):
        with pytest.raises(ConfigError, match="--objectives"):
            parse_objective_list(bad)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """An untrained run directory (run.json + one checkpoint): enough for search and extract."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("run")
    space = tiny_space("mobilenet_v3")
    opts = {"weight_bits": [2, 3, 4, 8, 32], "act_bits": [2, 3, 4, 8, 32]}
    qnet = qc.quantize(qc.trace(space.build_supernet()), **opts)
    write_run(out, space, opts)
    tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in qnet.state_dict().items()}
    save_checkpoint(out / "checkpoints", tensors, {"space": space.to_dict()}, step=0)
    return out, space


def test_search_then_extract_a_pareto_config(run_dir, tmp_path, capsys):
    run, space = run_dir
    code, out, err = _run(capsys, "search", run, "--objectives", "bitops,model_bits", "--constraint",
                          "bitops<=1.3e7", "--evals", "120", "--seed", "1", "--out", tmp_path / "s", "--no-progress")
    assert code == 0, err
    assert "120 evaluations" in out
    res = qs.SearchResult.load(tmp_path / "s")
    doc = json.loads((tmp_path / "s" / "search.json").read_text())
    assert doc["algorithm"] == "nsga2" and doc["seed"] == 1 and "qcompile search" in doc["command"]
    assert res.n_evals == 120 and (res.G[res.pareto_indices, 0] <= 1.3e7).all()
    b = qs.objectives.bitops(space)
    assert np.array_equal(res.F[:, 0], b(res.configs))  # values recorded are the cost model's
    pick = sorted((tmp_path / "s" / "pareto").glob("*.json"))[-1]
    code, out, err = _run(capsys, "extract", run, "--config", pick, "--out", tmp_path / "sub")
    assert code == 0, err
    _, sub, sdoc = load_subnet(tmp_path / "sub")
    assert qc.SubnetConfig.from_dict(sdoc["config"]) == qc.SubnetConfig.from_json(pick.read_text())


@pytest.mark.parametrize("argv, match", [
    (("--objectives", "accuracy,bitops"), "--predictor"),
    (("--objectives", "flops"), "--objectives"),
    (("--objectives", "bitops", "--constraint", "latency<0.4ms"), "--constraint"),
    (("--objectives", "bitops", "--constraint", "bitops<=10"), "unreachable"),
    (("--objectives", "bitops", "--evals", "0"), "--evals"),
    (("--objectives", "bitops", "--bits", "5"), "bits"),
    (("--objectives", "bitops", "--algorithm", "greedy-bits"), "budget" if hasattr(qs, "greedy_bits") else "greedy"),
])
def test_search_errors_are_one_line(run_dir, tmp_path, capsys, argv, match):
    run, _ = run_dir
    code, _, err = _run(capsys, "search", run, *argv, "--evals" if "--evals" not in argv else "--seed",
                        "20" if "--evals" not in argv else "0", "--out", tmp_path / "x", "--no-progress")
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("qcompile search: error:") and match in lines[0]
