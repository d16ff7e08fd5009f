"""Subnet configurations: `SubnetConfig` (architecture) and `QuantPolicy` (per-layer bit-widths).

Both are frozen dataclasses: hashable, comparable, JSON round-trippable. Validation against a
search space lives in the space (`space.validate(cfg)`); this module validates only the shape of
the data (types, lengths) so that a bad JSON file fails with a `ConfigError` naming the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from qcompile.errors import ConfigError

FLOAT_BITS = 32
DEFAULT_BIT_CHOICES = (2, 3, 4, 8, 32)


@dataclass(frozen=True)
class QuantPolicy:
    """Per-layer-slot `(weight_bits, act_bits)`; 32 means float. One entry per quantizable slot of the space.

    Slots are the conv/linear layers of the largest network's elastic blocks (`space.layer_slots()`),
    so the policy has a fixed length per space (the encoding search needs); entries of layers a
    smaller subnet does not have are ignored by that subnet.
    """

    bits: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        try:
            norm = tuple((_int(w), _int(a)) for w, a in self.bits)
        except (TypeError, ValueError, OverflowError) as e:
            raise ConfigError("policy.bits", self.bits, "a sequence of (weight_bits, act_bits) pairs") from e
        object.__setattr__(self, "bits", norm)

    @classmethod
    def uniform(cls, num_slots: int, weight_bits: int, act_bits: int | None = None) -> QuantPolicy:
        a = weight_bits if act_bits is None else act_bits
        return cls(tuple((weight_bits, a) for _ in range(num_slots)))

    def __len__(self) -> int:
        return len(self.bits)

    def __getitem__(self, i: int) -> tuple[int, int]:
        return self.bits[i]

    @property
    def is_float(self) -> bool:
        return all(w == FLOAT_BITS and a == FLOAT_BITS for w, a in self.bits)

    def to_list(self) -> list[list[int]]:
        return [list(p) for p in self.bits]


def _int(v: Any) -> int:
    """An integral number as int; ValueError for bools, non-finite and fractional values."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        raise ValueError(f"not an integer: {v!r}")
    if int(v) != v:
        raise ValueError(f"not an integer: {v!r}")
    return int(v)


def _int_tuple(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigError(name, value, "a list of integers")
    out = []
    for v in value:
        if (isinstance(v, bool) or not isinstance(v, (int, float))
                or (isinstance(v, float) and not math.isfinite(v)) or int(v) != v):
            raise ConfigError(name, value, "a list of integers")
        out.append(int(v))
    return tuple(out)


def _num_tuple(name: str, value: Any) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigError(name, value, "a list of numbers")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
            raise ConfigError(name, value, "a list of finite numbers")
        out.append(int(v) if float(v).is_integer() else float(v))
    return tuple(out)


@dataclass(frozen=True)
class SubnetConfig:
    """One subnet of a search space: architecture plus quantization policy.

    - `resolution`: input height = width.
    - `depths`: active blocks per elastic stage (the first `d` blocks of the stage run).
    - `kernels`, `expands`: per block slot of the largest network (entries of inactive blocks are
      kept, so the encoding has a fixed length).
    - `widths`: per-stage output channels, in spaces that search widths (SpaceEvo), else None.
    - `channels`: per block slot middle channels, in spaces with APQ's fine-grained channels, else None.
    - `policy`: per-layer-slot bits, or None for a float subnet.
    """

    resolution: int
    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    expands: tuple[float, ...]
    widths: tuple[int, ...] | None = None
    channels: tuple[int, ...] | None = None
    policy: QuantPolicy | None = field(default=None)

    def __post_init__(self) -> None:
        if isinstance(self.resolution, bool) or not isinstance(self.resolution, int) or self.resolution < 1:
            raise ConfigError("resolution", self.resolution, "a positive integer")
        object.__setattr__(self, "depths", _int_tuple("depths", self.depths))
        object.__setattr__(self, "kernels", _int_tuple("kernels", self.kernels))
        object.__setattr__(self, "expands", _num_tuple("expands", self.expands))
        if self.widths is not None:
            object.__setattr__(self, "widths", _int_tuple("widths", self.widths))
        if self.channels is not None:
            object.__setattr__(self, "channels", _int_tuple("channels", self.channels))
        if self.policy is not None and not isinstance(self.policy, QuantPolicy):
            object.__setattr__(self, "policy", QuantPolicy(tuple(self.policy)))

    # -- derived -----------------------------------------------------------------------------------
    @property
    def is_float(self) -> bool:
        return self.policy is None or self.policy.is_float

    def with_policy(self, policy: QuantPolicy | None) -> SubnetConfig:
        return replace(self, policy=policy)

    def stable_hash(self) -> str:
        """A hash that is the same across processes and Python versions (sha256 of the canonical JSON)."""
        return hashlib.sha256(self.to_json(indent=None).encode()).hexdigest()[:16]

    # -- JSON ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["policy"] = None if self.policy is None else self.policy.to_list()
        for k in ("depths", "kernels", "expands", "widths", "channels"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any) -> SubnetConfig:
        if not isinstance(d, dict):
            raise ConfigError("config", type(d).__name__, "a JSON object")
        required = ("resolution", "depths", "kernels", "expands")
        for k in required:
            if k not in d:
                raise ConfigError(k, "<missing>", f"required keys: {', '.join(required)}")
        known = {"resolution", "depths", "kernels", "expands", "widths", "channels", "policy"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(unknown[0], d[unknown[0]], f"known keys: {', '.join(sorted(known))}")
        policy = d.get("policy")
        if policy is not None:
            if isinstance(policy, (str, bytes)) or not isinstance(policy, Sequence) or any(
                    isinstance(p, (str, bytes)) or not isinstance(p, Sequence) or len(p) != 2 for p in policy):
                raise ConfigError("policy", policy, "a list of [weight_bits, act_bits] pairs")
            policy = QuantPolicy(tuple(tuple(p) for p in policy))
        return cls(
            resolution=d["resolution"],
            depths=d["depths"],
            kernels=d["kernels"],
            expands=d["expands"],
            widths=d.get("widths"),
            channels=d.get("channels"),
            policy=policy,
        )

    @classmethod
    def from_json(cls, text: str) -> SubnetConfig:
        if isinstance(text, (bytes, bytearray)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as e:
                raise ConfigError("config", f"<binary data, byte {e.start}>", "UTF-8 JSON text") from e
        if not isinstance(text, str):
            raise ConfigError("config", type(text).__name__, "JSON text (str)")
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError("config", text[:40], f"valid JSON ({e.msg} at line {e.lineno})") from e
        except RecursionError as e:
            raise ConfigError("config", text[:40], "JSON nested less deeply") from e
        return cls.from_dict(d)

    def save(self, path: str | os.PathLike) -> Path:
        from qcompile.utils.io import atomic_write_text

        return atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> SubnetConfig:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("path", str(p), "an existing subnet JSON file")
        try:
            return cls.from_json(p.read_bytes())
        except ConfigError as e:
            raise ConfigError(f"{p}: {e.field}", e.value, e.allowed) from e
