"""`ProgramMeta`: what an IntegerGraph was built from, written once by `lower-to-integer`.

The backends read it through `program_meta(ig)` only: the TVM library's `metadata.json`
(`config`, `policy`, `input`), the ONNX model's `qcompile.*` properties and the static input shape of
both come from here. It is stored in `IntegerGraph.program_meta` in its JSON form (`to_dict`), so it
survives `IntegerGraph.save` / `load`; keys it does not define (e.g. `synthetic` of the benchmark
models) are kept in `extra`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import fx

from qcompile.config import QuantPolicy, SubnetConfig
from qcompile.errors import ConfigError
from qcompile.quant.flavour import check_flavour

__all__ = ["ProgramMeta", "program_meta"]

_KEYS = ("config", "policy", "input_shape", "pad_codes", "float_islands", "pipeline", "flavour")


@dataclass(frozen=True)
class ProgramMeta:
    """The subnet config (and its policy), the NCHW input shape, the padding code of each padded
    integer conv (node name -> code `floor(z + beta + 1/2)`, BatchQuant Eq. 5), the float islands,
    the pass pipeline that produced the program (set by `to_integer`) and the quantization flavour
    (`qcompile.quant.flavour`: "fixed-point" epilogues or the float32 epilogues of "qdq")."""

    config: SubnetConfig | None = None
    input_shape: tuple[int, ...] | None = None
    pad_codes: tuple[tuple[str, int], ...] = ()
    float_islands: tuple[str, ...] = ()
    pipeline: str = ""
    flavour: str = "fixed-point"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_flavour(self.flavour, "program_meta.flavour")
        if self.input_shape is not None:
            shape = tuple(int(s) for s in self.input_shape)
            if not shape or min(shape) < 1:
                raise ConfigError("input_shape", self.input_shape, "positive sizes, e.g. (N, C, H, W)")
            object.__setattr__(self, "input_shape", shape)

    @property
    def policy(self) -> QuantPolicy | None:
        return None if self.config is None else self.config.policy

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the keys of `IntegerGraph.program_meta`)."""
        d = dict(self.extra)
        d.update(
            config=None if self.config is None else self.config.to_dict(),
            policy=None if self.policy is None else self.policy.to_list(),
            input_shape=None if self.input_shape is None else list(self.input_shape),
            pad_codes=dict(self.pad_codes),
            float_islands=list(self.float_islands),
            pipeline=self.pipeline,
            flavour=self.flavour,
        )
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProgramMeta:
        cfg = d.get("config")
        if cfg is not None:
            try:
                cfg = SubnetConfig.from_dict(cfg)
            except ConfigError as e:
                raise ConfigError("program_meta.config", cfg, "a SubnetConfig dict (SubnetConfig.to_dict())",
                                  str(e)) from e
        return cls(
            config=cfg,
            input_shape=None if d.get("input_shape") is None else tuple(d["input_shape"]),
            pad_codes=tuple((str(k), int(v)) for k, v in dict(d.get("pad_codes") or {}).items()),
            float_islands=tuple(d.get("float_islands") or ()),
            pipeline=str(d.get("pipeline") or ""),
            flavour=str(d.get("flavour") or "fixed-point"),
            extra={k: v for k, v in d.items() if k not in _KEYS},
        )


def program_meta(ig: fx.GraphModule, input_shape: Sequence[int] | None = None) -> ProgramMeta:
    """The `ProgramMeta` of an IntegerGraph; `input_shape`, when given, overrides the recorded one.

    Graphs built by hand (no recorded shape) fall back to the input placeholder's `tensor_meta`
    (ShapeProp), then to `(1, C, r, r)` from a recorded config's resolution and `in_channels`
    (default 3). `input_shape` stays None when none of these is known.
    """
    meta = ProgramMeta.from_dict(getattr(ig, "program_meta", None) or {})
    shape = tuple(input_shape) if input_shape is not None else meta.input_shape
    if shape is None:
        for n in ig.graph.nodes:
            if n.op != "placeholder":
                continue
            for known in (n.meta.get("tensor_meta"), n.meta.get("val")):
                if known is not None and hasattr(known, "shape"):
                    shape = tuple(int(s) for s in known.shape)
                    break
            break
    if shape is None:
        res = meta.config.resolution if meta.config is not None else meta.extra.get("resolution")
        if res:
            shape = (1, int(meta.extra.get("in_channels", 3)), int(res), int(res))
    if shape == meta.input_shape:
        return meta
    return dataclasses.replace(meta, input_shape=shape)
