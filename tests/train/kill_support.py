"""Helpers of test_kill_resume.py: start, watch and SIGKILL training subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from qcompile.errors import CheckpointError
from qcompile.train import latest_checkpoint, load_checkpoint
from qcompile.train.checkpoint import TMP_PREFIX, WRITE_DELAY_ENV

HERE = Path(__file__).parent
WORKER = HERE / "kill_worker.py"
REPO = HERE.parent.parent


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != WRITE_DELAY_ENV}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    return env


def step_lines(text: str) -> list[dict]:
    """The `{"step": N, "loss": L}` lines a worker printed."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            if "step" in rec:
                out.append(rec)
    return out


def run_worker(run: Path, *args: str, timeout: float = 120) -> list[dict]:
    """Run kill_worker.py to completion; returns its step lines."""
    done = subprocess.run(
        [sys.executable, str(WORKER), str(run), *args],
        env=child_env(), capture_output=True, text=True, timeout=timeout, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return step_lines(done.stdout)


def final_checkpoint(run: Path) -> tuple[dict[str, torch.Tensor], dict]:
    return load_checkpoint(run / "checkpoints")


def wait_for(cond: Callable[[], bool], proc: subprocess.Popen, timeout: float, what: str) -> None:
    """Poll `cond` every 10 ms; fail if the process ends first or `timeout` passes."""
    end = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"training ended (rc {proc.returncode}) before {what}")
        if time.monotonic() > end:
            proc.kill()
            proc.wait()
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def latest_meta(ckpt_dir: Path) -> dict | None:
    """Position of the newest complete checkpoint, or None (tolerates a concurrent save/prune)."""
    try:
        path = latest_checkpoint(ckpt_dir)
        return None if path is None else json.loads((path / "meta.json").read_text())["position"]
    except (OSError, ValueError, KeyError, CheckpointError):  # `latest` swapped or pruned while reading
        return None


def tmp_saves(ckpt_dir: Path) -> list[Path]:
    """Temporary directories of saves in progress that already hold the tensors file."""
    return [p for p in ckpt_dir.glob(TMP_PREFIX + "*") if (p / "tensors.safetensors").is_file()]


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> int:
    """Bit-for-bit equality of every tensor whose name starts with one of `prefixes`; returns the count."""
    keys = sorted(k for k in a if k.startswith(prefixes))
    assert keys == sorted(k for k in b if k.startswith(prefixes))
    for k in keys:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    return len(keys)
