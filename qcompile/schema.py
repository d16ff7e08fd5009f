"""Schemas of qcompile's JSON artifacts (run.json, subnet.json, lowered metadata.json), with a format version.

`check(doc, SCHEMA, where)` raises `CheckpointError` naming the file and the key path, what was found
and what is expected, before any code indexes into the document. A schema is a dict
`key -> (expected, required)`: `expected` is a type, a tuple of types (`type(None)` allows null) or a
nested schema dict (the value must be an object checked recursively). Unknown keys are allowed
(newer writers may add some). The `format` key is the version: documents written before versions were
recorded (no `format`) load as version 1; a newer version than this qcompile reads is refused.
"""

from __future__ import annotations

import math
from typing import Any

from qcompile.errors import CheckpointError

NoneType = type(None)
Spec = dict[str, tuple[Any, bool]]

#: the newest format version of each artifact this qcompile writes and reads
RUN_FORMAT = 1
SUBNET_FORMAT = 1
LOWERED_FORMAT = 1

SPACE: Spec = {"name": (str, True), "args": (dict, False)}

RUN: Spec = {
    "format": (int, False),
    "space": (SPACE, True),
    "quantize": ((dict, NoneType), False),
    "data": (str, False),
    "phases": (list, False),
    "train": (dict, False),
}

SUBNET: Spec = {
    "format": (int, False),
    "config": (dict, True),
    "space": (SPACE, True),
    "quantize": ((dict, NoneType), False),
    "calibrated": (bool, True),
    "source": ((str, NoneType), False),
    "state_sha256": (str, False),
}

_SHAPE = {"shape": (list, True), "dtype": (str, True)}
LOWERED: Spec = {
    "format": (int, False),
    "target": ({"name": (str, True), "tvm": (dict, True), "arch": (str, True),
                "cross_cxx": ((str, NoneType), False)}, True),
    "input": (_SHAPE, True),
    "output": (_SHAPE, True),
    "kernels": (list, True),
    "signatures": (dict, False),
    "driver": ((dict, NoneType), False),
    "config": ((dict, NoneType), False),
    "policy": ((list, NoneType), False),
    "num_threads": ((int, NoneType), False),
    "library": ({"size": (int, True), "sha256": (str, True), "machine": (str, False)}, False),
}


def _type_name(expected: Any) -> str:
    if isinstance(expected, dict):
        return "an object"
    types = expected if isinstance(expected, tuple) else (expected,)
    names = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
             bool: "true/false", NoneType: "null"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _ok(value: Any, expected: Any) -> bool:
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in types:
        return False  # JSON true is not an integer here
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, types)


def check(doc: Any, spec: Spec, where: str, current_format: int | None = None, _prefix: str = "") -> dict:
    """Validate `doc` against `spec`; returns it. `where` names the file in the error."""
    if not isinstance(doc, dict):
        raise CheckpointError(f"{where}: {_prefix or 'document'} is {type(doc).__name__}, expected an object "
                              "(the file is corrupt or not a qcompile artifact; regenerate it)")
    if current_format is not None:
        fmt = doc.get("format", 1)
        if isinstance(fmt, bool) or not isinstance(fmt, int) or fmt < 1:
            raise CheckpointError(f"{where}: format {fmt!r} is not a version number (regenerate the artifact)")
        if fmt > current_format:
            raise CheckpointError(f"{where}: format {fmt} is newer than this qcompile reads ({current_format}) "
                                  "(upgrade qcompile or regenerate the artifact)")
    for key, (expected, required) in spec.items():
        name = f"{_prefix}{key}"
        if key not in doc:
            if required:
                raise CheckpointError(f"{where}: key {name!r} is missing (the file is incomplete or not a "
                                      "qcompile artifact; regenerate it)")
            continue
        value = doc[key]
        if isinstance(expected, dict):
            check(value, expected, where, None, f"{name}.")
        elif not _ok(value, expected):
            raise CheckpointError(f"{where}: key {name!r} is {value!r:.60}, expected {_type_name(expected)} "
                                  "(regenerate the artifact)")
    return doc
