"""`qcompile latency-table build|show`: build a LatencyTable for a space on this machine, or print one."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["add_parser"]


def cmd_build(args: argparse.Namespace) -> int:
    from qcompile.cli.spaces import make_space as _make_space
    from qcompile.errors import ConfigError
    from qcompile.search.latency import LatencyTable
    from qcompile.search.latency.validate import heldout_configs, heldout_rows, scatter_plot, summarize, validate

    if args.lower_only and args.time_only:
        raise ConfigError("--lower-only/--time-only", "both", "at most one of them (neither: lower, then time)")
    qnet = None
    if args.run:
        from qcompile.artifacts import load_run

        space, qnet, _doc = load_run(args.run)
    else:
        space = _make_space(args, default_width=0.35, default_res=(24, 32))
    out = Path(args.out)
    boards = bool(args.remote or args.tracker)
    heldout = heldout_configs(space, args.validate) if args.validate else []
    phase = "lower" if args.lower_only else "time" if args.time_only else "all"
    old = LatencyTable.load(out) if out.exists() and phase != "lower" else None
    table = LatencyTable.build(space, args.target, args.threads, table=old, max_cover=args.max_cover,
                               n_fit=args.n_fit, qnet=qnet, path=out, libs=args.libs, remote=args.remote,
                               tracker=args.tracker, validate=[] if boards else heldout, phase=phase,
                               rounds=args.rounds, calls=args.calls, key=args.key, cpu_model=args.cpu_model)
    if phase == "lower":
        print(f"libraries saved under {args.libs or f'{out}.libs'}; time them with --time-only (nothing is lowered)")
        return 0
    print(table.summary())
    if args.validate:
        if boards:
            from qcompile.search.latency.remote import Boards

            session = Boards(args.remote, args.tracker, args.key, args.cpu_model).sessions()[0]
            rows = validate(table, heldout, repeat=args.repeat, session=session)
            print(json.dumps(summarize(rows), indent=1))
        else:
            rows = heldout_rows(table)
            ids = {c.to_json() for c in heldout}
            rows = [r for r in rows if r["config"] in ids]
            forest = [r["forest_kernels"] for r in rows if r["forest_kernels"] is not None]
            print(f"held-out subnets timed in the table's {table.keys.get('timing', {}).get('rounds', '?')} rounds "
                  f"({sum(forest)} of their kernels from the forest):")
            for name, key in (("rmin", "latency_ms"), ("median of all samples", "median_ms")):
                print(f"  measured = {name}: " + json.dumps(summarize([{**r, "measured_ms": r[key]} for r in rows])))
            from qcompile.search.latency.rounds import item_stats, split_reproducibility

            nets = [n for n in table.networks if n.get("role") == "validate" and n["config"] in ids
                    and n.get("rounds_ms")]
            print("  the measurement itself, rmin on even vs odd rounds (held-out networks): "
                  + json.dumps(split_reproducibility([item_stats(n["rounds_ms"]) for n in nets])))
        png = scatter_plot(rows, out.with_suffix(".png"))
        print(f"scatter plot: {png}")
    print(f"table written to {out}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from qcompile.search.latency import LatencyTable

    table = LatencyTable.load(args.table, check=False)
    print(table.summary())
    try:
        table.check()
        print("  usable on this machine")
    except Exception as e:  # noqa: BLE001 - show says why, does not fail
        print(f"  NOT usable here: {e}")
    return 0


def add_parser(sub: Any, space_args: Any) -> None:
    """Register `latency-table` on the `qcompile` subcommand parser (`space_args` adds --space etc.)."""
    lt = sub.add_parser("latency-table", help="build or show a latency table measured from our own kernels")
    lsub = lt.add_subparsers(dest="latency_command", required=True, metavar="ACTION")
    b = lsub.add_parser("build", help="time the kernels of a space on this machine (progress bar)")
    space_args(b)
    b.add_argument("--run", default=None, help="trained run directory (its space and weights)")
    b.add_argument("--target", default="x86", help="x86 (here) or arm_cpu (on boards: --remote or --tracker)")
    b.add_argument("--remote", default=None, metavar="HOST:PORT", help="time on the board behind this TVM RPC server")
    b.add_argument("--tracker", default=None, metavar="HOST:PORT", help="time on every free board of --key")
    b.add_argument("--key", default=None, help="device key of the boards registered with --tracker")
    b.add_argument("--cpu-model", default=None, help="the boards' CPU model (recorded in the table keys)")
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--out", required=True, help="table JSON (extended if it exists)")
    b.add_argument("--validate", type=int, default=0, metavar="K", help="measure K held-out subnets; writes OUT.png")
    b.add_argument("--repeat", type=int, default=60, help="end-to-end calls per validation measurement on boards "
                   "(here the held-out subnets are timed in the table's rounds)")
    b.add_argument("--max-cover", type=int, default=16)
    b.add_argument("--n-fit", type=int, default=4)
    b.add_argument("--rounds", type=int, default=40,
                   help="round-robin timing rounds (each visits every new kernel and network once)")
    b.add_argument("--calls", type=int, default=3, help="calls (kernels: windows) per item and round")
    b.add_argument("--libs", default=None, metavar="DIR", help="where the lowered libraries are saved (default "
                   "OUT.libs; one directory serves every --threads)")
    b.add_argument("--lower-only", action="store_true", help="lower and save the libraries of the table and of "
                   "--validate, time nothing (heavy; any load)")
    b.add_argument("--time-only", action="store_true", help="lower nothing: re-time every kernel and network from "
                   "the libraries saved by --lower-only (or an earlier build) in rounds (wants a quiet machine)")
    b.set_defaults(fn=cmd_build)
    s = lsub.add_parser("show", help="print a table's keys, size and fit")
    s.add_argument("table", help="latency table JSON (from `latency-table build --out`)")
    s.set_defaults(fn=cmd_show)
