"""Run by `torchrun` in test_distributed.py: 4 sandwich steps of the BN-free stand-in, then save weights."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from standin import TinySpace, tiny_set_active  # noqa: E402

import qcompile.data as qd  # noqa: E402
from qcompile.train import Phase, TrainConfig, Trainer  # noqa: E402
from qcompile.train.distributed import init_from_env  # noqa: E402


def main(out: str, batch: int) -> None:
    rank, world = init_from_env()
    torch.manual_seed(0 if rank == 0 else 99)  # ranks start different: broadcast must fix it
    space = TinySpace()
    net = space.build_supernet(norm=False)
    data = qd.digits(resolution=16, seed=0)
    train = data.train.subset(range(128))
    cfg = TrainConfig(batch_size=batch, progress=False, evaluate=False)
    tr = Trainer(net, space, train, cfg, [Phase("float", 1, num_random=1)], activate=tiny_set_active)
    hist = tr.fit(max_steps=4)
    torch.save({"state": net.state_dict(), "loss": [h["loss"] for h in hist]}, f"{out}.rank{rank}.pt")
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
