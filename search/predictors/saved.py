"""The on-disk form shared by every accuracy predictor: a directory with `predictor.json` (format, kind, space,
options, held-out report) and `predictor.safetensors` (weights or tree arrays); no pickles, so a saved predictor
survives library upgrades."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qcompile.errors import CheckpointError, ConfigError

FORMAT = 1
JSON_FILE = "predictor.json"
WEIGHTS_FILE = "predictor.safetensors"


def space_dict(space: Any) -> dict[str, Any]:
    """What a saved predictor records of its space (`space.to_dict()`, or its name)."""
    to_dict = getattr(space, "to_dict", None)
    return to_dict() if callable(to_dict) else {"name": getattr(space, "name", type(space).__name__)}


def read_doc(path: Path, kind: str, weights: bool = True) -> dict[str, Any]:
    """`predictor.json` of a saved predictor of `kind` (CheckpointError for a missing file, corrupt JSON, another
    format or kind); `weights`: the directory must also hold `predictor.safetensors`."""
    needed = (JSON_FILE, WEIGHTS_FILE) if weights else (JSON_FILE,)
    if not all((path / f).is_file() for f in needed):
        raise CheckpointError(f"{path}: not a predictor directory (needs {' and '.join(needed)})")
    try:
        doc = json.loads((path / JSON_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path / JSON_FILE}: corrupt JSON ({e})") from e
    if doc.get("format") != FORMAT or doc.get("kind") != kind:
        raise CheckpointError(f"{path / JSON_FILE}: not a {kind} of format {FORMAT} (kind {doc.get('kind')!r})")
    return doc


def saved_space(doc: dict[str, Any], space: Any, path: Path) -> Any:
    """The space a saved predictor is loaded for: `space` when it is the recorded one (ConfigError otherwise),
    else the recorded space rebuilt (`qcompile.spaces.from_dict`)."""
    if space is not None:
        if space_dict(space) != doc["space"]:
            raise ConfigError("predictor space", doc["space"], f"this space {space_dict(space)}",
                              f"{path} was fitted for another space")
        return space
    from qcompile.spaces import from_dict

    return from_dict(doc["space"])
