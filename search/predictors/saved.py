"""The on-disk form shared by every accuracy predictor: a directory with `predictor.json` (format, kind, space,
options, held-out report) and `predictor.safetensors` (weights or tree arrays); no pickles, so a saved predictor
survives library upgrades."""

from __future__ import annotations

import json
import os
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


#: predictor kind (`predictor.json`'s `kind`) -> its class; each predictor module registers its own
#: (`register_kind`), so `load_predictor` reads every kind without importing any of them (an ensemble loads its
#: members through it)
_KINDS: dict[str, Any] = {}
#: files written before predictors named their kind are APQ MLPs
_DEFAULT_KIND = "mlp-accuracy-predictor"


def register_kind(kind: str, cls: Any) -> None:
    """Make `load_predictor` read directories whose `predictor.json` says `kind` with `cls.load`."""
    _KINDS[kind] = cls


def load_predictor(path: str | os.PathLike, space: Any = None) -> Any:
    """Any saved accuracy predictor (`predictor.json`'s `kind`): the MLP, an MLP ensemble, boosted trees or an
    ensemble of kinds (`EnsemblePredictor`); with `space`, one fitted for another space is refused."""
    path = Path(path)
    if not (path / JSON_FILE).is_file():
        raise CheckpointError(f"{path}: not a predictor directory (needs {JSON_FILE})")
    try:
        kind = json.loads((path / JSON_FILE).read_text()).get("kind")
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / JSON_FILE}: corrupt JSON ({e.msg})") from e
    cls = _KINDS.get(kind) or _KINDS[_DEFAULT_KIND]
    return cls.load(path, space=space)
