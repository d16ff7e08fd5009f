"""`qcompile evolve-space` and `qcompile train --space-json`: outputs, reuse of the table, bad input, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

import qcompile as qc
from qcompile.cli import main
from qcompile.spaces.hyperspace import digits_hyperspace, encoding_of
from qcompile.train.blockwise import BKDSettings, table_key
from tests.search.spaceevo_helpers import synthetic_table


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    h = digits_hyperspace()
    t = synthetic_table(h)
    t.key = table_key(h, "digits", 0, BKDSettings())  # the key evolve-space expects: reused, not rebuilt
    return t.save(tmp_path_factory.mktemp("table") / "table.json")


@pytest.fixture(scope="module")
def evolved(table_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("evo")
    code = main(["evolve-space", "--data", "digits", "--target", "x86", "--constraints", "0.2,0.3,0.5",
                 "--cycles", "10", "--latency", "mac", "--table", str(table_path), "--out", str(out)])
    assert code == 0
    return out


def test_evolve_space_writes_space_history_and_plot(evolved):
    hist = json.loads((evolved / "history.json").read_text())
    evo, rnd = hist["evolution"]["history"], hist["random"]["history"]
    assert len(evo) == len(rnd) == 4 + 2 * 10  # P = max(4, cycles/4) plus two children per cycle
    assert len({x["encoding"] for x in evo}) == len(evo)
    best = max(evo, key=lambda x: x["score"])
    assert hist["best"]["encoding"] == best["encoding"] and hist["best"]["score"] == best["score"]
    assert sum(hist["best"]["per_constraint"]) == pytest.approx(best["score"])
    space = qc.spaces.from_json((evolved / "space.json").read_text())
    assert encoding_of(space) == best["encoding"]
    assert (evolved / "best_score.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert hist["latency"] == "mac" and "stand-in" in hist["latency_model"]


def test_evolve_space_resume_continues_the_state(evolved, table_path):
    before = json.loads((evolved / "evolution_state.json").read_text())
    assert before["cycle"] == 10
    # the same run again with --resume: nothing left to do, same best space
    code = main(["evolve-space", "--cycles", "10", "--latency", "mac", "--table", str(table_path),
                 "--out", str(evolved), "--resume"])
    assert code == 0
    assert json.loads((evolved / "evolution_state.json").read_text())["history"] == before["history"]


@pytest.mark.parametrize(
    "argv,field",
    [
        (["--cycles", "0"], "--cycles"),
        (["--cycles", "2", "--data", "cifar10"], "--data"),
        (["--cycles", "2", "--target", "gpu"], "target"),
        (["--cycles", "2", "--constraints", "0.2,-1"], "constraints"),
        (["--cycles", "2", "--latency", "flops"], "--latency"),
    ],
)
def test_bad_input_is_one_line(capsys, table_path, tmp_path, argv, field):
    code = main(["evolve-space", "--table", str(table_path), "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and field in err and len(err.strip().splitlines()) == 1


def test_table_of_another_seed_is_refused(capsys, table_path, tmp_path):
    doc = json.loads(table_path.read_text())
    doc["key"]["data"] = "cifar10"
    other = tmp_path / "t.json"
    other.write_text(json.dumps(doc))
    code = main(["evolve-space", "--cycles", "2", "--latency", "mac", "--table", str(other),
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "'data'" in capsys.readouterr().err


@pytest.mark.slow
def test_best_space_trains_searches_and_lowers_bit_exact(evolved, tmp_path, capsys):
    """The evolved space through the normal commands: train --space-json, a latency-constrained search over
    trained subnets, extract --config --calibrate, lower for x86, bit-exact against the reference executor."""
    import torch

    from qcompile.artifacts import load_run, load_subnet
    from qcompile.config import SubnetConfig
    from qcompile.data import load_dataset
    from qcompile.search.space_evolution import latency_model
    from qcompile.train.evaluate import evaluate_subnets

    run = tmp_path / "run"
    assert main(["train", "--space-json", str(evolved / "space.json"), "--epochs", "1,1,0", "--threads", "1",
                 "--out", str(run)]) == 0
    space, qnet, _ = load_run(run)
    assert encoding_of(space) == json.loads((evolved / "space.json").read_text())["encoding"]
    # search: the most accurate of a few 4-bit subnets under 0.3 ms (latency model of evolve-space)
    data = load_dataset("digits", resolution=16, in_channels=3)
    lat = latency_model("x86", "mac")
    cands = [c for c in (space.sample(seed=i, bits=(4,)) for i in range(12)) if lat.predict(space, c) < 0.3][:4]
    assert cands
    accs = evaluate_subnets(qnet, space, data, cands, calib_batches=2, split="val")
    best = cands[int(np.argmax(accs))]
    (tmp_path / "best.json").write_text(best.to_json())
    assert main(["extract", str(run), "--config", str(tmp_path / "best.json"), "--calibrate", "--calib-batches", "2",
                 "--out", str(tmp_path / "sub")]) == 0
    assert main(["lower", str(tmp_path / "sub"), "--target", "x86", "--out", str(tmp_path / "low")]) == 0
    _, sub, _ = load_subnet(tmp_path / "sub")
    assert SubnetConfig.from_json(best.to_json()) == sub.subnet_config
    ig = qc.to_integer(sub)
    low = qc.load(tmp_path / "low")
    for i in range(4):  # the library is static-shaped, batch 1
        x = data.test.images[i : i + 1].numpy()
        with torch.no_grad():
            ref = ig(torch.from_numpy(x)).numpy()
        np.testing.assert_array_equal(low(x), ref)


def test_train_space_json_builds_that_space(monkeypatch, tmp_path, capsys):
    """`qcompile train --space-json FILE` trains exactly the saved space (train_run stubbed: wiring only)."""
    import qcompile.cli.train_run as tr

    seen = {}
    monkeypatch.setattr(tr, "train_run", lambda space, **kw: seen.update(space=space, **kw))
    space = digits_hyperspace().from_encoding("052000-033330").build()
    f = tmp_path / "space.json"
    f.write_text(space.to_json())
    assert main(["train", "--space-json", str(f), "--out", str(tmp_path / "run")]) == 0
    assert seen["space"].spec() == space.spec() and encoding_of(seen["space"]) == "052000-033330"
    assert main(["train", "--space-json", str(tmp_path / "missing.json"), "--out", str(tmp_path / "r")]) == 2
    f.write_text('{"name": "spaceevo", "args": {"blocks": ["x"]}}')
    assert main(["train", "--space-json", str(f), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "blocks" in err[-1]
