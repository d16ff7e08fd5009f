"""Run by test_kill_resume.py as a subprocess: a short checkpointed training of the stand-in supernet.

    python kill_worker.py RUN_DIR [--resume] [--step-sleep SECONDS]

Float phase (1 epoch) then a {2,3,4} phase (2 epochs) with the bit scheduler and IDM, so that a
checkpoint carries optimiser, scheduler, IDM and RNG state; 6 steps per epoch, a checkpoint every
4 steps (mid-epoch) and at every epoch end. After each step it prints one JSON line
`{"step": N, "loss": L}` (N = the step's global index) and sleeps `--step-sleep` seconds, so the
parent can kill it at a known point. `--resume` continues from RUN_DIR's latest checkpoint, starting
from a different random init and global RNG state (everything must come from the checkpoint).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from standin import TinySpace, tiny_set_active  # noqa: E402

import qcompile.data as qd  # noqa: E402
from qcompile.train import Phase, TrainConfig, Trainer, latest_checkpoint  # noqa: E402

PHASES = [
    Phase("float", 1, bits=None),
    Phase("q", 2, bits=(2, 3, 4), bit_schedule=True, idm_weight=0.1),
]
CHECKPOINT_EVERY = 4
STEPS_PER_EPOCH = 6


class _Reporting(Trainer):
    """A Trainer that reports every step on stdout and may slow down (a stand-in for real step time)."""

    step_sleep = 0.0

    def train_step(self, x, y, phase, step, total):
        loss = super().train_step(x, y, phase, step, total)
        print(json.dumps({"step": self.global_step, "loss": loss}), flush=True)
        if self.step_sleep:
            time.sleep(self.step_sleep)
        return loss


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--step-sleep", type=float, default=0.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(123 if args.resume else 0)
    space = TinySpace()
    s = qd.digits(resolution=16, in_channels=3, seed=0)
    data = qd.DatasetSplits(s.train.subset(range(32 * STEPS_PER_EPOCH), "digits/train192"), s.val, s.test)
    cfg = TrainConfig(
        batch_size=32,
        progress=False,
        evaluate=False,
        checkpoint_every=CHECKPOINT_EVERY,
        bit_schedule_every=2,
        keep_checkpoints=3,
    )
    ckpt = Path(args.run) / "checkpoints"
    tr = _Reporting(space.build_supernet(), space, data, cfg, PHASES, activate=tiny_set_active, checkpoint_dir=ckpt)
    tr.step_sleep = args.step_sleep
    if args.resume:
        tr.resume(latest_checkpoint(ckpt))
        print(json.dumps({"resumed_at": tr.global_step}), flush=True)
    tr.fit()


if __name__ == "__main__":
    main()
