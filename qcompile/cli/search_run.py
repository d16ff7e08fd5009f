"""`qcompile search RUN`: pick subnets of a trained run by search.

```
qcompile search RUN --algorithm nsga2|evolution|random|greedy-bits|coarse-to-fine \
    --objectives accuracy,bitops,latency:x86 [--predictor P] [--latency-table T] \
    [--constraint "latency<=0.4ms"] --evals N --seed S --out DIR
```

Objective names: `accuracy` (predicted, needs `--predictor`, a directory from `qcompile predictor fit`),
`bitops`, `qfa_flops`, `model_bits`, `macs`, `latency[:TARGET]` (predicted ms from `--latency-table`,
or a table built now for TARGET on this host). Constraints: `NAME<=LIMIT[UNIT]` for objectives to
minimise, `NAME>=LIMIT` for accuracy; latency units ms, us or s. The space comes from `RUN/run.json`
(RUN may also be a space name such as `mobilenet_v3` for cost-only searches). Writes `DIR/search.json`,
`DIR/pareto/NNN.json`, `DIR/pareto.png`; `qcompile extract RUN --config DIR/pareto/003.json` slices one.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcompile.errors import ConfigError

log = logging.getLogger("qcompile.search")

ALGORITHMS = ("nsga2", "evolution", "random", "greedy-bits", "coarse-to-fine")
COST_OBJECTIVES = ("bitops", "qfa_flops", "model_bits", "macs")
OBJECTIVE_NAMES = ("accuracy", *COST_OBJECTIVES, "latency")
_TIME_UNITS = {"ms": 1.0, "us": 1e-3, "s": 1e3, "": 1.0}
_CONSTRAINT = re.compile(r"^\s*([A-Za-z_]+(?::[\w.-]+)?)\s*(<=|>=)\s*([-+0-9.eE]+)\s*([A-Za-z%]*)\s*$")


@dataclass(frozen=True)
class Constraint:
    """One parsed `--constraint`: objective spec (`latency:x86`), operator and limit in the objective's unit."""

    spec: str
    op: str
    limit: float


def parse_objective_list(text: str) -> list[str]:
    """`"accuracy,bitops,latency:x86"` -> specs; unknown names raise `ConfigError`."""
    specs = [t.strip() for t in text.split(",") if t.strip()]
    if not specs:
        raise ConfigError("--objectives", text, f"a comma-separated list of {', '.join(OBJECTIVE_NAMES)}")
    for s in specs:
        name = s.split(":", 1)[0]
        if name not in OBJECTIVE_NAMES:
            raise ConfigError("--objectives", s, f"one of {', '.join(OBJECTIVE_NAMES)} (latency:TARGET)")
        if ":" in s and name != "latency":
            raise ConfigError("--objectives", s, "a target suffix only on latency (latency:x86)")
    if len({s.split(':')[0] for s in specs}) != len(specs):
        raise ConfigError("--objectives", text, "each objective once")
    return specs


def parse_constraint(text: str) -> Constraint:
    """`"latency<=0.4ms"`, `"bitops<=2e7"`, `"accuracy>=0.9"` -> `Constraint` (limit in ms for latency)."""
    m = _CONSTRAINT.match(text)
    if not m:
        raise ConfigError("--constraint", text, "NAME<=LIMIT[UNIT] or NAME>=LIMIT, e.g. latency<=0.4ms, bitops<=2e7")
    spec, op, num, unit = m.groups()
    name = spec.split(":", 1)[0]
    if name not in OBJECTIVE_NAMES:
        raise ConfigError("--constraint", text, f"a constraint on one of {', '.join(OBJECTIVE_NAMES)}")
    try:
        limit = float(num)
    except ValueError as e:
        raise ConfigError("--constraint", text, "a numeric limit such as 0.4 or 2e7") from e
    want = ">=" if name == "accuracy" else "<="
    if op != want:
        how = "maximised" if want == ">=" else "minimised"
        raise ConfigError("--constraint", text, f"{name}{want}LIMIT ({name} is {how})")
    if name == "latency":
        if unit not in _TIME_UNITS:
            raise ConfigError("--constraint", text, f"a latency unit among {', '.join(u for u in _TIME_UNITS if u)}")
        limit *= _TIME_UNITS[unit]
    elif unit not in ("", "%") or (unit == "%" and name != "accuracy"):
        raise ConfigError("--constraint", text, f"no unit on {name} (plain numbers, e.g. {name}<=2e7)")
    elif unit == "%":
        limit /= 100.0
    return Constraint(spec, op, limit)


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.replace(",", " ").split())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected integers like 2,3,4, got {text!r}") from e


def _space_of(run: str):
    from qcompile.spaces import SPACES, from_dict, get_space

    p = Path(run)
    if (p / "run.json").is_file():
        return from_dict(json.loads((p / "run.json").read_text())["space"])
    if run in SPACES:
        return get_space(run, num_classes=10, width_mult=0.35, resolutions=(24, 32))
    raise ConfigError("RUN", run, "a run directory with run.json (qcompile train --out RUN) or a space name")


def build_objective(spec: str, space, args) -> Any:
    """The `Objective` for one spec; missing pieces (predictor, latency table) raise `ConfigError`."""
    import qcompile.search as qs

    name, _, target = spec.partition(":")
    if name in COST_OBJECTIVES:
        return getattr(qs.objectives, name)(space)
    if name == "accuracy":
        if not args.predictor:
            raise ConfigError("--predictor", None, "a predictor directory (qcompile predictor fit) for accuracy")
        cls = getattr(qs, "AccuracyPredictor", None)
        if cls is None:
            raise ConfigError("accuracy", args.predictor, "qs.AccuracyPredictor, not in this build yet")
        from qcompile.search.predictors import load_predictor

        return qs.objectives.accuracy(load_predictor(args.predictor, space=space))
    # latency
    table_cls = getattr(qs, "LatencyTable", None)
    factory = getattr(qs.objectives, "latency", None)
    if table_cls is None or factory is None:
        raise ConfigError("latency", spec, "qs.LatencyTable, not in this build yet; use bitops meanwhile")
    if args.latency_table:
        table = table_cls.load(args.latency_table)
    else:
        log.info("building a latency table for %s on this host (pass --latency-table to reuse one)", target or "x86")
        table = table_cls.build(space, target=target or "x86", num_threads=1)
    return factory(table)


def _command_line(args) -> str:
    """The command that reproduces this search (from the parsed arguments, not `sys.argv`)."""
    argv = ["qcompile", "search", str(args.run), "--algorithm", args.algorithm, "--objectives", args.objectives]
    for c in args.constraint or []:
        argv += ["--constraint", c]
    for flag, v in (("--predictor", args.predictor), ("--latency-table", args.latency_table),
                    ("--pop-size", args.pop_size)):
        if v is not None:
            argv += [flag, str(v)]
    argv += ["--bits", ",".join(map(str, args.bits)), "--evals", str(args.evals), "--seed", str(args.seed),
             "--out", str(args.out)]
    return " ".join(shlex.quote(a) for a in argv)


def _greedy_bits(args, space, objectives, constraints):
    """Retraining-free greedy bits (Eq. 9) on one architecture: a one-config `SearchResult`."""
    from itertools import islice

    import qcompile.search as qs
    from qcompile.artifacts import load_run
    from qcompile.config import SubnetConfig
    from qcompile.data import load_dataset
    from qcompile.search.algorithms._common import Evaluator

    fn = getattr(qs, "greedy_bits", None)
    if fn is None:
        raise ConfigError("--algorithm", "greedy-bits", "nsga2, evolution, random or coarse-to-fine "
                          "(qs.greedy_bits is not in this build yet)")
    budgets = [(o, lim) for o, lim in constraints if o.direction == "min"]
    if not budgets:
        raise ConfigError("--constraint", None, "a cost budget for greedy-bits, e.g. bitops<=2e7")
    cost, budget = budgets[0]
    space, qnet, doc = load_run(args.run)
    arch = space.validate(SubnetConfig.load(args.arch)) if args.arch else space.largest()
    data = load_dataset(doc.get("data", "digits") if isinstance(doc.get("data"), str) else "digits",
                        resolution=arch.resolution, in_channels=space.in_channels)
    batches = list(islice(data.train.loader(64, shuffle=True, seed=args.seed, resolution=arch.resolution), 8))
    cfg = fn(qnet, arch, batches, budget=budget, cost=cost, bits=args.bits)
    ev = Evaluator(objectives, constraints, 1)
    ev.evaluate([cfg])
    return ev.result("greedy-bits", args.seed, {"bits": list(args.bits), "arch": arch.to_dict(),
                                                 "budget": {cost.name: budget}, "batches": len(batches)},
                     space)


def cmd_search(args) -> int:
    import qcompile.search as qs

    space = _space_of(args.run)
    specs = parse_objective_list(args.objectives)
    cons = [parse_constraint(c) for c in args.constraint or []]
    if args.evals < 1:
        raise ConfigError("--evals", args.evals, "an integer >= 1")
    built: dict[str, Any] = {}

    def objective(spec: str):
        key = spec.split(":")[0]
        if key not in built:
            built[key] = build_objective(spec, space, args)
        return built[key]

    objectives = [objective(s) for s in specs]
    constraints = [(objective(c.spec), c.limit) for c in cons]
    bits = args.bits
    common = dict(n_evals=args.evals, seed=args.seed, bits=bits, progress=not args.no_progress)
    alg = args.algorithm
    if alg == "nsga2":
        opts = {} if args.pop_size is None else {"pop_size": args.pop_size}
        res = qs.nsga2(space, objectives, constraints=constraints, **common, **opts)
    elif alg == "random":
        res = qs.random_search(space, objectives, constraints=constraints, **common)
    elif alg == "coarse-to-fine":
        res = qs.coarse_to_fine(space, objectives, constraints=constraints, **common)
    elif alg == "evolution":
        opts = {} if args.pop_size is None else {"population": args.pop_size, "parents": max(1, args.pop_size // 4)}
        res = qs.evolution(space, objectives, constraints=constraints, **common, **opts)
    else:
        res = _greedy_bits(args, space, objectives, constraints)
    res.command = _command_line(args)
    out = res.save(args.out)
    best = res.best
    vals = ", ".join(f"{o.name}={res.F[res.best_index, j]:.6g}" for j, o in enumerate(res.objectives))
    print(f"{alg}: {res.n_evals} evaluations, {len(res.pareto)} on the Pareto front; "
          f"hypervolume {res.hypervolume():.6g} (ref {[float(v) for v in res.ref_point]})")
    print(f"best: {vals} (hash {best.stable_hash()}) -> {out}/pareto/000.json")
    return 0


def add_parser(sub) -> None:
    """Register `qcompile search` on the CLI's subparsers."""
    s = sub.add_parser("search", help="search subnets of a run for objectives and constraints (Pareto set)")
    s.add_argument("run", help="run directory from `qcompile train` (or a space name for cost-only search)")
    s.add_argument("--algorithm", default="nsga2", choices=ALGORITHMS)
    s.add_argument("--objectives", default="accuracy,bitops",
                   help=f"comma-separated, first is the main one: {', '.join(OBJECTIVE_NAMES)} (latency:TARGET)")
    s.add_argument("--predictor", default=None, help="accuracy predictor directory (qcompile predictor fit)")
    s.add_argument("--latency-table", default=None, help="latency table JSON (LatencyTable.save)")
    s.add_argument("--constraint", action="append", default=None, metavar="EXPR",
                   help='e.g. "latency<=0.4ms", "bitops<=2e7", "accuracy>=0.9" (repeatable)')
    s.add_argument("--evals", type=int, default=2000, help="hard cap on objective evaluations")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--bits", type=_ints, default=(2, 3, 4), help="bit choices of the policy, e.g. 2,3,4")
    s.add_argument("--arch", default=None, help="greedy-bits: architecture JSON (default: the largest)")
    s.add_argument("--pop-size", type=int, default=None, help="population (default suits --evals)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--out", required=True, help="output directory (search.json, pareto/, pareto.png)")
    s.set_defaults(fn=cmd_search)


__all__ = ["add_parser", "cmd_search", "parse_constraint", "parse_objective_list", "Constraint"]

