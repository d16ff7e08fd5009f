"""Search spaces: `mobilenet_v3` (QFA/OQA), `mobilenet_v2` (OQA, APQ channels), `spaceevo` (SpaceEvo hyperspace)."""

from __future__ import annotations

from typing import Any

from qcompile.errors import ConfigError
from qcompile.spaces import hyperspace  # noqa: F401  (registers the SpaceEvo encoding in space.to_json)
from qcompile.spaces.base import HeadSpec, StagedSpace, StageSpec
from qcompile.spaces.mobilenet import mobilenet_v2, mobilenet_v3
from qcompile.spaces.spaceevo import spaceevo
from qcompile.spaces.supernet import Supernet

SPACES = {"mobilenet_v3": mobilenet_v3, "mobilenet_v2": mobilenet_v2, "spaceevo": spaceevo}


def get_space(name: str, **kwargs: Any) -> StagedSpace:
    """Build a space by name (as stored in checkpoints: `space.to_dict()`)."""
    if name not in SPACES:
        raise ConfigError("space", name, sorted(SPACES))
    return SPACES[name](**kwargs)


def from_dict(d: dict) -> StagedSpace:
    return get_space(d["name"], **d.get("args", {}))


def from_json(text: str) -> StagedSpace:
    """Rebuild a space saved by `space.to_json()` (any space: mobilenet_v3/v2, spaceevo, evolved candidates)."""
    import json

    from qcompile.spaces.base import SPACE_JSON_FORMAT

    try:
        doc = json.loads(text)
    except (TypeError, json.JSONDecodeError) as e:
        raise ConfigError("space json", str(text)[:40], f"JSON text written by space.to_json() ({e})") from e
    if not isinstance(doc, dict):
        raise ConfigError("space json", type(doc).__name__, "a JSON object written by space.to_json()")
    if doc.get("format", SPACE_JSON_FORMAT) != SPACE_JSON_FORMAT:
        raise ConfigError("space json format", doc.get("format"), SPACE_JSON_FORMAT)
    if "name" not in doc:
        raise ConfigError("space json name", None, sorted(SPACES))
    args = doc.get("args", {})
    if not isinstance(args, dict):
        raise ConfigError("space json args", type(args).__name__, "an object of constructor arguments")
    try:
        space = get_space(doc["name"], **args)
    except TypeError as e:
        raise ConfigError("space json args", sorted(args), f"arguments of qcompile.spaces.{doc['name']} ({e})") from e
    enc = doc.get("encoding")
    if enc is not None and doc["name"] == "spaceevo":
        from qcompile.spaces.hyperspace import encoding_of

        if encoding_of(space) != enc:
            raise ConfigError("space json encoding", enc, f"{encoding_of(space)} (the encoding of its args)")
    return space


__all__ = [
    "SPACES",
    "get_space",
    "from_dict",
    "from_json",
    "mobilenet_v2",
    "mobilenet_v3",
    "spaceevo",
    "StagedSpace",
    "StageSpec",
    "HeadSpec",
    "Supernet",
]
