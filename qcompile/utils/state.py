"""Loading a state dict into a quantized module whose LSQ per-channel steps may still be placeholders."""

from __future__ import annotations

import torch

from qcompile.errors import CheckpointError


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    # LSQ per-channel steps may be placeholders until first use: size them from the state first.
    own = module.state_dict()
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            *path, leaf = k.split(".")
            mod = module.get_submodule(".".join(path))
            p = getattr(mod, leaf)
            if isinstance(p, torch.nn.Parameter):
                setattr(mod, leaf, torch.nn.Parameter(torch.empty_like(v)))
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: weights do not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "was it written for another space or quantization setting?"
        )
