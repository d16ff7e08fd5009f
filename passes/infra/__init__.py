"""Pass infrastructure: Pass, PassResult, PassManager, registry and pipeline strings, instruments."""

from qcompile.passes.infra.manager import PassInstrument, PassManager, PassRecord, PrintAfter
from qcompile.passes.infra.pass_base import Pass, PassResult
from qcompile.passes.infra.registry import (
    get_pass,
    load_pass_module,
    parse_pipeline,
    pipeline_string,
    register,
    registered,
)

__all__ = [
    "Pass",
    "PassResult",
    "PassManager",
    "PassInstrument",
    "PassRecord",
    "PrintAfter",
    "register",
    "registered",
    "get_pass",
    "load_pass_module",
    "parse_pipeline",
    "pipeline_string",
]
