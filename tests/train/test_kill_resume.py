"""SIGKILL a training process and resume it in a new one.

"Killing training mid-epoch and resuming loses at most the steps since the last checkpoint and
reproduces the uninterrupted run's final weights (CPU, same seed)." The reference is an
uninterrupted run of the same worker in its own process; the comparison is bit for bit (model,
IDM and optimiser tensors) and float-for-float on the per-step loss sequence. The fast tests use
the stand-in supernet (`kill_worker.py`); the slow one runs `qcompile train` on MobileNetV3.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
from kill_support import (
    REPO,
    WORKER,
    assert_same_tensors,
    child_env,
    final_checkpoint,
    latest_meta,
    run_worker,
    step_lines,
    tmp_saves,
    wait_for,
)
from kill_worker import CHECKPOINT_EVERY, STEPS_PER_EPOCH

from qcompile.train import latest_checkpoint, load_checkpoint
from qcompile.train.checkpoint import WRITE_DELAY_ENV

TOTAL_STEPS = 3 * STEPS_PER_EPOCH  # float 1 epoch + {2,3,4} 2 epochs


def _start(run, log, *args, **env):
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(run), *args], env=child_env(**env), stdout=log, stderr=subprocess.STDOUT
    )


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_reference_run_checkpoints_mid_epoch(kill_reference_run):
    _, meta, steps = kill_reference_run
    assert [s["step"] for s in steps] == list(range(TOTAL_STEPS))
    assert meta["position"]["global_step"] == TOTAL_STEPS
    assert [h["loss"] for h in meta["history"]] == [s["loss"] for s in steps]


def test_sigkill_mid_epoch_then_resume_reproduces_uninterrupted_run(kill_reference_run, tmp_path):
    ref_tensors, ref_meta, ref_steps = kill_reference_run
    run, ckpt_dir = tmp_path / "run", tmp_path / "run" / "checkpoints"
    log_path = tmp_path / "killed.log"
    with open(log_path, "w") as log:
        proc = _start(run, log, "--step-sleep", "0.25")  # slow steps: the kill lands at a known place
        wait_for(lambda: (m := latest_meta(ckpt_dir)) is not None and m["batch_in_epoch"] > 0, proc, 90,
                 "a mid-epoch checkpoint")
        ckpt_step = latest_meta(ckpt_dir)["global_step"]
        # let it run past the checkpoint (the steps a kill loses), then kill without warning
        wait_for(lambda: any(s["step"] >= ckpt_step for s in step_lines(log_path.read_text())), proc, 60,
                 "a step after the checkpoint")
        _kill(proc)
    killed = step_lines(log_path.read_text())
    pos = latest_meta(ckpt_dir)
    assert pos["batch_in_epoch"] > 0, "the kill must leave a mid-epoch checkpoint"
    assert pos["global_step"] % CHECKPOINT_EVERY == 0 and pos["global_step"] % STEPS_PER_EPOCH != 0
    done = len(killed)
    lost = done - pos["global_step"]
    assert 1 <= lost <= CHECKPOINT_EVERY, (done, pos)  # at most the steps since the last checkpoint
    assert done < TOTAL_STEPS
    # the killed process's losses so far are the reference's (same seed)
    assert [s["loss"] for s in killed] == [s["loss"] for s in ref_steps[:done]]

    resumed = subprocess.run(
        [sys.executable, str(WORKER), str(run), "--resume"],
        env=child_env(), capture_output=True, text=True, timeout=120, check=False,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    first = json.loads(resumed.stdout.splitlines()[0])
    assert first == {"resumed_at": pos["global_step"]}
    after = step_lines(resumed.stdout)
    # the lost steps are recomputed; every loss after the checkpoint equals the uninterrupted run's
    assert [s["step"] for s in after] == list(range(pos["global_step"], TOTAL_STEPS))
    assert [s["loss"] for s in after] == [s["loss"] for s in ref_steps[pos["global_step"] :]]
    tensors, meta = final_checkpoint(run)
    n = assert_same_tensors(tensors, ref_tensors, ("model.", "idm.", "optim.", "rng."))
    assert n > 20
    assert [h["loss"] for h in meta["history"]] == [h["loss"] for h in ref_meta["history"]]
    # per-epoch mean losses, including the epoch the kill cut in two
    assert meta["epoch_log"] == ref_meta["epoch_log"]
    assert meta["schedulers"] == ref_meta["schedulers"]


def test_sigkill_during_checkpoint_write_keeps_previous_checkpoint(kill_reference_run, tmp_path):
    ref_tensors, ref_meta, _ = kill_reference_run
    run, ckpt_dir = tmp_path / "run", tmp_path / "run" / "checkpoints"
    with open(tmp_path / "killed.log", "w") as log:
        proc = _start(run, log, **{WRITE_DELAY_ENV: "1.0"})  # every save pauses 1 s after the tensors
        wait_for(lambda: latest_checkpoint(ckpt_dir) is not None, proc, 90, "the first complete checkpoint")
        first = latest_checkpoint(ckpt_dir)
        # the next save's temporary directory holds the tensors and no metadata yet: kill inside it
        wait_for(lambda: bool(tmp_saves(ckpt_dir)), proc, 60, "a checkpoint write in progress")
        _kill(proc)
    partial = tmp_saves(ckpt_dir)
    assert len(partial) == 1 and not (partial[0] / "meta.json").exists()
    assert latest_checkpoint(ckpt_dir) == first
    assert sorted(p.name for p in ckpt_dir.glob("ckpt-*")) == [first.name]
    tensors, meta = load_checkpoint(ckpt_dir)  # loadable, sha256 verified
    assert meta["position"]["global_step"] == CHECKPOINT_EVERY
    # the interrupted save is cleaned up by the resumed run, whose result is the uninterrupted one
    run_worker(run, "--resume")
    assert not list(ckpt_dir.glob(".tmp-ckpt-*"))
    tensors, meta = final_checkpoint(run)
    assert_same_tensors(tensors, ref_tensors, ("model.", "idm.", "optim.", "rng."))
    assert [h["loss"] for h in meta["history"]] == [h["loss"] for h in ref_meta["history"]]
    assert meta["epoch_log"] == ref_meta["epoch_log"]


def _cli(out, *extra):
    return [
        sys.executable, "-m", "qcompile.cli", "train", "--space", "mobilenet_v3", "--width-mult", "0.35",
        "--resolutions", "16", "--epochs", "1,0,1", "--batch-size", "128", "--checkpoint-every", "4",
        "--threads", "1", "--seed", "3", "--out", str(out), *extra,
    ]


@pytest.mark.slow
def test_cli_sigkill_mid_epoch_then_resume(tmp_path):
    """`qcompile train` killed after a mid-epoch checkpoint, then `--resume`: same weights and losses."""
    ref = tmp_path / "ref"
    done = subprocess.run(_cli(ref), env=child_env(), capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    ckpt_dir = run / "checkpoints"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(_cli(run), env=child_env(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        # the first mid-epoch checkpoint is step 4 of 9 in the float epoch; kill as soon as it is there
        wait_for(lambda: (m := latest_meta(ckpt_dir)) is not None and m["batch_in_epoch"] > 0, proc, 600,
                 "a mid-epoch checkpoint")
        _kill(proc)
    pos = latest_meta(ckpt_dir)
    assert pos["batch_in_epoch"] > 0 and pos["global_step"] < 18
    res = subprocess.run(_cli(run, "--resume"), env=child_env(), capture_output=True, text=True, timeout=900,
                         cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"at step {pos['global_step']}" in res.stderr
    a, meta_a = final_checkpoint(ref)
    b, meta_b = final_checkpoint(run)
    assert meta_b["position"]["global_step"] == meta_a["position"]["global_step"] == 18
    assert assert_same_tensors(a, b, ("model.", "optim.", "rng.")) > 100
    assert [h["loss"] for h in meta_b["history"]] == [h["loss"] for h in meta_a["history"]]
    assert [r["loss"] for r in meta_b["epoch_log"]] == [r["loss"] for r in meta_a["epoch_log"]]
