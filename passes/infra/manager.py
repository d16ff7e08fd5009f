"""PassManager: run passes in order with instruments (verifier, timing, change records, print-after)."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from torch import fx

from qcompile.errors import ConfigError, LoweringError, PassError
from qcompile.fx.verify import verify_graph
from qcompile.passes.infra.pass_base import Pass, PassResult
from qcompile.passes.infra.registry import parse_pipeline, pipeline_string, wrap_function

log = logging.getLogger(__name__)


@dataclass
class PassRecord:
    """What one pass did: name, spec, seconds, whether it modified the graph, node count before/after."""

    name: str
    spec: str
    seconds: float
    modified: bool
    nodes_before: int
    nodes_after: int


class PassInstrument:
    """Hooks around each pass (like tvm.ir.instrument.PassInstrument)."""

    def before(self, p: Pass, gm: fx.GraphModule) -> None:
        """Called before `p` runs."""

    def after(self, p: Pass, result: PassResult) -> None:
        """Called after `p` ran."""


class PrintAfter(PassInstrument):
    """Log `gm.code` after the named passes (all when `names` is empty)."""

    def __init__(self, *names: str) -> None:
        self.names = set(names)

    def after(self, p: Pass, result: PassResult) -> None:
        if not self.names or p.name in self.names:
            log.info("after %s:\n%s", p.spec(), result.graph_module.code)


@dataclass
class PassManager:
    """Runs `passes` (instances, classes, functions, or a pipeline string) in order.

    With `verify=True` the graph verifier runs after every pass. A plain function is wrapped into a
    pass class for this manager only (it is not registered, so it cannot shadow a registered name).

    Failures: a `LoweringError` or `ConfigError` a pass raises about its input keeps its type (callers
    catch them as before) and gets a note naming the pass, the passes before it and the reproducer;
    any other exception, and a graph the verifier rejects, becomes a `PassError` with that text. The
    reproducer file holds `gm.code` before the failing pass and the pipeline string.
    """

    passes: list = field(default_factory=list)
    verify: bool = True
    instruments: list[PassInstrument] = field(default_factory=list)
    records: list[PassRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.passes, str):
            self.passes = parse_pipeline(self.passes)
        resolved = []
        for p in self.passes:
            if isinstance(p, Pass):
                resolved.append(p)
            elif isinstance(p, str):
                resolved.extend(parse_pipeline(p))
            elif isinstance(p, type) and issubclass(p, Pass):
                resolved.append(p())
            elif callable(p):
                resolved.append(wrap_function(p)())
            else:
                raise PassError(f"PassManager: {p!r} is not a pass")
        self.passes = resolved

    @property
    def pipeline(self) -> str:
        return pipeline_string(self.passes)

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        return self.run(gm)

    def run(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        self.records = []
        for i, p in enumerate(self.passes):
            for ins in self.instruments:
                ins.before(p, gm)
            n_before = len(gm.graph.nodes)
            t0 = time.perf_counter()
            try:
                result = p.run(gm)
                if not isinstance(result, PassResult):
                    raise PassError(f"pass {p.name} returned {type(result).__name__}, expected PassResult")
                if self.verify:
                    verify_graph(result.graph_module)
            except Exception as e:
                err = self._failure(i, p, gm, e)
                if err is e:
                    raise
                raise err from e
            dt = time.perf_counter() - t0
            gm = result.graph_module
            modified |= result.modified
            self.records.append(PassRecord(p.name, p.spec(), dt, result.modified, n_before, len(gm.graph.nodes)))
            log.debug(
                "pass %s: %.3fs modified=%s nodes %d->%d", p.spec(), dt, result.modified, n_before, len(gm.graph.nodes)
            )
            for ins in self.instruments:
                ins.after(p, result)
        return PassResult(gm, modified)

    def _failure(self, i: int, p: Pass, gm: fx.GraphModule, e: Exception) -> Exception:
        before = pipeline_string(self.passes[:i]) or "(none)"
        repro = Path(tempfile.mkdtemp(prefix="qcompile-pass-failure-")) / "reproducer.py"
        repro.write_text(
            f"# pipeline: {self.pipeline}\n# failed pass: {p.spec()}\n# passes before: {before}\n"
            f"# graph before the failing pass:\n{gm.code}\n"
        )
        context = f"passes before it: {before}; reproducer with gm.code and the pipeline: {repro}"
        if isinstance(e, (LoweringError, ConfigError)):
            e.add_note(f"in pass '{p.spec()}'; {context}")
            log.info("pass %s failed: %s; %s", p.spec(), e, context)
            return e
        return PassError(f"pass '{p.spec()}' failed ({type(e).__name__}: {e}); {context}")

    def timing_table(self) -> str:
        rows = [f"{'pass':<28} {'seconds':>8} {'modified':>8} {'nodes':>11}"]
        for r in self.records:
            rows.append(f"{r.spec:<28} {r.seconds:8.4f} {r.modified!s:>8} {r.nodes_before:>5}->{r.nodes_after:<5}")
        return "\n".join(rows)
