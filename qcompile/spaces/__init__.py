"""Search spaces: `mobilenet_v3` (QFA/OQA), `mobilenet_v2` (OQA, APQ channels), `spaceevo` (SpaceEvo hyperspace)."""

from __future__ import annotations

from typing import Any

from qcompile.errors import ConfigError
from qcompile.spaces.base import HeadSpec, LayerDesc, StagedSpace, StageSpec, Supernet
from qcompile.spaces.mobilenet import mobilenet_v2, mobilenet_v3
from qcompile.spaces.spaceevo import spaceevo

SPACES = {"mobilenet_v3": mobilenet_v3, "mobilenet_v2": mobilenet_v2, "spaceevo": spaceevo}


def get_space(name: str, **kwargs: Any) -> StagedSpace:
    """Build a space by name (as stored in checkpoints: `space.to_dict()`)."""
    if name not in SPACES:
        raise ConfigError("space", name, sorted(SPACES))
    return SPACES[name](**kwargs)


def from_dict(d: dict) -> StagedSpace:
    return get_space(d["name"], **d.get("args", {}))


__all__ = [
    "SPACES",
    "get_space",
    "from_dict",
    "mobilenet_v2",
    "mobilenet_v3",
    "spaceevo",
    "StagedSpace",
    "StageSpec",
    "HeadSpec",
    "LayerDesc",
    "Supernet",
]
