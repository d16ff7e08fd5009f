"""Data-parallel training (torchrun, 2 processes, gloo) equals single-process training on the union batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent


@pytest.mark.slow
def test_two_process_training_matches_single_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parents[1])}
    torchrun = Path(sys.executable).parent / "torchrun"
    subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            str(HERE / "ddp_worker.py"),
            str(tmp_path / "ddp"),
            "16",
        ],
        check=True,
        env=env,
        timeout=240,
        capture_output=True,
    )
    subprocess.run(
        [sys.executable, str(HERE / "ddp_worker.py"), str(tmp_path / "single"), "32"],
        check=True,
        env=env,
        timeout=240,
        capture_output=True,
    )
    r0, r1 = (torch.load(tmp_path / f"ddp.rank{r}.pt") for r in (0, 1))
    single = torch.load(tmp_path / "single.rank0.pt")
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), k  # ranks stay in lock-step
        torch.testing.assert_close(v, single["state"][k], rtol=1e-4, atol=1e-6, msg=k)
    # each rank's loss is that of its half batch; their mean is the single-process loss
    mean = [(a + b) / 2 for a, b in zip(r0["loss"], r1["loss"])]
    torch.testing.assert_close(torch.tensor(mean), torch.tensor(single["loss"]), rtol=1e-4, atol=1e-6)
