import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from standin import TinySpace  # noqa: E402

import qcompile.data as qd  # noqa: E402


@pytest.fixture(scope="session")
def digits16():
    """Digits at 16x16, with a 192-image training subset so that an epoch is 6 steps of 32."""
    s = qd.digits(resolution=16, in_channels=3, seed=0)
    return qd.DatasetSplits(s.train.subset(range(192), "digits/train192"), s.val, s.test)


@pytest.fixture(scope="session")
def digits16_full():
    return qd.digits(resolution=16, in_channels=3, seed=0)


@pytest.fixture()
def space():
    return TinySpace()


@pytest.fixture()
def net(space):
    torch.manual_seed(0)
    return space.build_supernet()


@pytest.fixture(scope="session")
def kill_reference_run(tmp_path_factory):
    """An uninterrupted run of kill_worker.py: (final checkpoint tensors, meta, per-step losses)."""
    from kill_support import final_checkpoint, run_worker

    run = tmp_path_factory.mktemp("kill-reference")
    steps = run_worker(run)
    tensors, meta = final_checkpoint(run)
    return tensors, meta, steps
