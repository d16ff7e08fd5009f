"""Good artifacts for the fuzz suite, built once per session (tiny mobilenet_v3, width 0.25, 32x32).

Cases never touch these directly: they copy what they corrupt, and the originals are hash-guarded.
`golden.lowered` is a real TVM lowering (slow tests only); `golden.fake_lowered` is a lowered
directory whose lib.so is a system shared library, enough for every check that runs before dlopen.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.fuzz.harness import TALLY


@dataclass
class Golden:
    root: Path
    run: Path
    subnet: Path
    fake_lowered: Path
    config_json: Path
    png: Path


def _system_lib() -> Path | None:
    for p in ("/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1",
              "/lib/x86_64-linux-gnu/libm.so.6"):
        if Path(p).is_file():
            return Path(os.path.realpath(p))
    return None


@pytest.fixture(scope="session")
def golden(tmp_path_factory) -> Golden:
    import numpy as np
    from PIL import Image

    import qcompile as qc
    from qcompile.artifacts import load_run, save_subnet
    from qcompile.cli.train_run import train_run
    from tests.conftest import tiny_space

    os.environ.setdefault("QCOMPILE_CACHE", str(tmp_path_factory.mktemp("cache")))
    root = tmp_path_factory.mktemp("golden")
    torch.manual_seed(0)
    space = tiny_space("mobilenet_v3")
    train_run(space, "digits", root / "run", epochs=(0, 0, 0), threads=1, train_config={"evaluate": False})
    space, qnet, doc = load_run(root / "run")
    cfg = space.smallest(bits=4)
    sub = qc.extract(qnet, cfg)
    qc.calibrate(sub, [torch.rand(4, 3, 32, 32) for _ in range(2)])
    save_subnet(sub, root / "subnet", space=space, quantize_options=doc.get("quantize"), calibrated=True)
    cfg.save(root / "config.json")
    Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)).save(root / "img.png")

    fake = root / "fake_lowered"
    lib = _system_lib()
    if lib is not None:
        import hashlib

        fake.mkdir()
        shutil.copyfile(lib, fake / "lib.so")
        data = (fake / "lib.so").read_bytes()
        meta = {"format": 1,
                "target": {"name": "x86", "tvm": {"kind": "llvm"}, "arch": "x86_64", "cross_cxx": None},
                "input": {"shape": [1, 3, 32, 32], "dtype": "float32"},
                "output": {"shape": [1, 10], "dtype": "float64"},
                "kernels": [], "signatures": {}, "config": json.loads(cfg.to_json()), "policy": None,
                "num_threads": None,
                "library": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "machine": "x86_64"}}
        (fake / "metadata.json").write_text(json.dumps(meta))
    return Golden(root, root / "run", root / "subnet", fake, root / "config.json", root / "img.png")


@pytest.fixture(scope="session")
def golden_lowered(golden, tmp_path_factory) -> Path:
    """A real x86 lowering of the golden subnet (about a minute on a loaded 2-core machine)."""
    from qcompile.cli import main

    out = tmp_path_factory.mktemp("lowered") / "low"
    assert main(["lower", str(golden.subnet), "--out", str(out)]) == 0
    return out


@pytest.fixture()
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (disk-full faults); skipped where mounting is not permitted."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}): disk-full cases not run")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def pytest_configure(config):
    config.addinivalue_line("markers", "xdist_group(name): run the group's tests on one xdist worker")


def pytest_terminal_summary(terminalreporter):
    if not TALLY:
        return
    tried = sum(t for t, _ in TALLY.values())
    bad = sum(b for _, b in TALLY.values())
    terminalreporter.write_sep("-", f"fuzz: {tried} cases tried, bad endings: {bad}")
    for fam, (t, b) in sorted(TALLY.items()):
        terminalreporter.write_line(f"  {fam:<28} tried {t:>4}  bad {b}")
