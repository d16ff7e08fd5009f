"""`qcompile run DIR [IMAGES]` and the subnet config a lowered library carries (metadata.json, `Lowered.config`).

Predictions are checked against the reference integer executor (`IntegerGraph`), run on inputs prepared
independently of the command.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import qcompile as qc
from qcompile.cli import main
from qcompile.data import load_dataset
from tests.conftest import tiny_space

pytest.importorskip("tvm")


@pytest.fixture(scope="module")
def lowered_dir(tmp_path_factory):
    """A tiny 4-bit mobilenet_v2 subnet calibrated on digits, lowered for this host and exported."""
    torch.manual_seed(0)
    space = tiny_space("mobilenet_v2")
    qnet = qc.quantize(qc.trace(space.build_supernet()))
    cfg = space.sample(seed=3, bits=(4,))
    sub = qc.extract(qnet, cfg)
    data = load_dataset("digits", resolution=32)
    qc.calibrate(sub, [data.train.images[i : i + 32] for i in range(0, 128, 32)])
    ig = qc.to_integer(sub)
    low = qc.lower(ig, target="x86")
    path = tmp_path_factory.mktemp("lowered") / "lowered_x86"
    low.export(path)
    return path, cfg, ig, low


def test_lowered_and_loaded_library_know_their_config(lowered_dir):
    path, cfg, ig, low = lowered_dir
    assert low.config == cfg and qc.load(path).config == cfg
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["config"] == cfg.to_dict() and meta["policy"] == cfg.policy.to_list()
    assert meta["input"]["shape"] == [1, 3, cfg.resolution, cfg.resolution]
    assert ig.program_meta["config"] == cfg.to_dict()


def test_run_without_images_classifies_test_digits(lowered_dir, capsys):
    path, _, ig, _ = lowered_dir
    assert main(["run", str(path), "--limit", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    test = load_dataset("digits", resolution=32).test
    assert len(lines) == 5
    for i, line in enumerate(lines):
        want = int(np.argmax(np.asarray(ig(test.images[i : i + 1]))))
        assert line == f"digits/test[{i}] (label {int(test.labels[i])}): class {want}"


def test_run_classifies_each_image_file_at_the_library_resolution(lowered_dir, capsys, tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    path, _, ig, _ = lowered_dir
    raw = load_digits().images[:3]  # 8x8, values 0..16: the command must resize them to 32x32
    files = []
    for i, img in enumerate(raw):
        f = tmp_path / f"digit{i}.png"
        Image.fromarray((img * 16).clip(0, 255).astype(np.uint8), mode="L").save(f)
        files.append(str(f))
    assert main(["run", str(path), *files]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    # independent preparation: the digits loader's own pipeline on the same 8-bit pixels
    from qcompile.data.digits import normalisation

    pix = torch.from_numpy(np.stack([np.asarray(Image.open(f), np.float32) / 255.0 for f in files]))[:, None]
    x = torch.nn.functional.interpolate(pix, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
    mean, std = normalisation(32, 3)
    x = ((x.expand(-1, 3, -1, -1) - mean) / std).numpy()
    for f, line, xi in zip(files, lines, x):
        assert line == f"{f}: class {int(np.argmax(np.asarray(ig(torch.from_numpy(xi[None])))))}"


def test_digits_normalisation_is_the_loaders():
    """`normalisation` reproduces the statistics `digits()` standardised its splits with."""
    from sklearn.datasets import load_digits

    from qcompile.data.base import resize
    from qcompile.data.digits import normalisation, stratified_split

    mean, std = normalisation(32, 3)
    d = load_digits()
    te = stratified_split(d.target, (0.7, 0.1, 0.2), 0)[2]
    raw = resize(torch.from_numpy(d.images[te].astype(np.float32) / 16.0)[:, None], 32).clamp(0, 1)
    want = load_dataset("digits", resolution=32).test.images
    torch.testing.assert_close((raw.expand(-1, 3, -1, -1) - mean) / std, want)


def test_run_refuses_an_unreadable_image(lowered_dir, capsys, tmp_path):
    path = lowered_dir[0]
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    assert main(["run", str(path), str(bad)]) == 2
    err = capsys.readouterr().err
    # one line naming the file and what is allowed (the checked image reader)
    assert err.startswith(f"qcompile run: error: {bad}: ") and "image" in err and "PNG" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_run_dynamic_batch_library_classifies_in_one_call(lowered_dir, capsys, tmp_path):
    """A `batch="dynamic"` library runs the images up to 64 per call, no padding: the same classes as the
    reference executor."""
    _, _, ig, _ = lowered_dir
    path = qc.lower(ig, target="x86", batch="dynamic").export(tmp_path / "dyn")
    assert qc.load(path).dynamic_batch
    assert main(["run", str(path), "--limit", "7"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    test = load_dataset("digits", resolution=32).test
    want = np.argmax(np.asarray(ig(test.images[:7])), axis=1)
    assert lines == [f"digits/test[{i}] (label {int(test.labels[i])}): class {int(want[i])}" for i in range(7)]
