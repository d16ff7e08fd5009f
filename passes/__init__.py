"""Graph passes over torch.fx (one file per pass) and their infrastructure (`qcompile.passes.infra`)."""

from qcompile.passes.infra import (
    Pass,
    PassInstrument,
    PassManager,
    PassResult,
    PrintAfter,
    get_pass,
    load_pass_module,
    parse_pipeline,
    pipeline_string,
    register,
    registered,
)

__all__ = ["Pass", "PassInstrument", "PassManager", "PassResult", "PrintAfter", "get_pass", "load_pass_module",
           "parse_pipeline", "pipeline_string", "register", "registered"]
