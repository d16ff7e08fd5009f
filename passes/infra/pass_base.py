"""Pass and PassResult: the unit of graph transformation (modelled on torch.fx.passes.infra and tvm.ir.transform).

A pass is a frozen dataclass whose fields are its options, with a kebab-case class attribute
`name` and `run(gm) -> PassResult`. Analyses only write `node.meta` and return `modified=False`.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar

from torch import fx


@dataclass
class PassResult:
    """What a pass returns: the (possibly new) graph module and whether it changed anything."""

    graph_module: fx.GraphModule
    modified: bool

    @property
    def gm(self) -> fx.GraphModule:
        return self.graph_module


@dataclass(frozen=True)
class Pass:
    """Base class of passes. Subclasses are frozen dataclasses; fields are options."""

    name: ClassVar[str] = "pass"

    def run(self, gm: fx.GraphModule) -> PassResult:  # pragma: no cover - interface
        raise TypeError(f"{type(self).__name__} must implement run(gm)")

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        return self.run(gm)

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def spec(self) -> str:
        """This pass as a pipeline string element: `name{opt=value other=1,2}` (defaults omitted).

        Options are separated by spaces and tuple items by commas (xDSL's syntax), so
        `parse_pipeline(p.spec())` gives a pass equal to `p`.
        """
        opts = []
        for f in fields(self):
            v = getattr(self, f.name)
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            if default is not v and default != v:
                opts.append(f"{f.name}={_fmt(v)}")
        return self.name + ("{" + " ".join(opts) + "}" if opts else "")


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, (tuple, list)):
        return ",".join(_fmt(x) for x in v)
    return str(v)
