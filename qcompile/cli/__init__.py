"""The `qcompile` command line: the commands on top of the public API (ARCHITECTURE.md, "Repository layout").

`app` builds the parser and dispatches each subcommand; the other modules hold one command family each
(`demo`, `train_run`, `bench_run`, `search_run`, `predictor`, `evolve_space`) or what they share
(`errors`: one-line errors and exit codes; `spaces`: the space a command's options name).
"""

from qcompile.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
