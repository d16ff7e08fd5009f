"""Per-kernel time inside the network against each kernel alone (`Lowered.profile`, issue 20).

    TVM_NUM_THREADS=2 OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.network_profile \\
        /work/main/runs/peers/l6/mobilenet_v2/host_tuned --rebuild --out runs/s15a/mbv2_tuned --repeat 200

`LOWERED` is an exported lowering. With `--rebuild`, its integer program is lowered again by this checkout (same
target and thread count; the persistent tuning database is read, as by a tuned lowering, unless `--untuned`) and
exported to `--out` (reused when it is already there): libraries built before the profiling driver existed cannot
be profiled. Prints every driver call in network order (or the `--top` by delta), the sum of in-network minima,
the stamped network, the plain driver timed from Python and the kernels alone, at `--threads` threads.

`--compare NAME=DIR ...` instead interleaves libraries of the same network (each an export with the profiling
driver): outputs checked equal to the first library's, then `--rounds` rounds (order reversed every other round, a
50 ms pause before each library), each `--repeat` profiled + plain runs per library; prints per library the
plain driver's minimum and median of round minima and the stamped minimum, then the calls whose in-network minima
differ most between the first two libraries. `--env NAME:VAR=VALUE ...` sets a variable while library NAME is
loaded and bound, so one export can be compared under two runtime settings:

    TVM_NUM_THREADS=2 OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.network_profile --threads 2 --rounds 40 \\
        --compare old=DIR new=DIR --env new:QCOMPILE_HUGE_PAGES=1
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from benchmarks._common import environment


def _rebuilt(src: Path, out: Path, untuned: bool) -> Path:
    """`src`'s program lowered again by this checkout into `out` (kept when it already holds a lowering)."""
    from qcompile import api as qc

    if (out / "metadata.json").exists():
        return out
    low = qc.load(src)
    target, threads = low.meta["target"]["tvm"], low.meta.get("num_threads")
    if untuned:
        with tempfile.TemporaryDirectory(prefix="qcompile-empty-db-") as empty:
            os.environ["QCOMPILE_CACHE"] = empty  # default schedules: no record of the persistent database
            new = qc.lower(low.program, target=target, num_threads=threads)
            os.environ.pop("QCOMPILE_CACHE")
    else:
        new = qc.lower(low.program, target=target, num_threads=threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    return new.export(out)


def _bind_env(envs: list[str] | None, names: list[str]) -> dict[str, dict[str, str]]:
    """`--env NAME:VAR=VALUE` entries as {library name: {VAR: VALUE}}; `ConfigError` for a malformed entry or an
    unknown library name."""
    from qcompile.errors import ConfigError

    out: dict[str, dict[str, str]] = {}
    for e in envs or ():
        name, sep, assign = e.partition(":")
        var, eq, value = assign.partition("=")
        if not sep or not eq or not var:
            raise ConfigError("--env", e, "NAME:VAR=VALUE")
        if name not in names:
            raise ConfigError("--env", e, f"a library name of --compare: {names}")
        out.setdefault(name, {})[var] = value
    return out


def compare(specs: list[str], rounds: int, repeat: int, top: int, envs: list[str] | None = None) -> dict:
    """Interleaved network and per-call minima of the libraries `specs` (NAME=DIR; see the module docstring).
    `envs` (`NAME:VAR=VALUE`): environment variables set while library NAME is loaded and bound (its first call),
    e.g. `QCOMPILE_HUGE_PAGES=1`, to compare one library under two runtime settings."""
    import time

    import numpy as np

    from qcompile import api as qc
    from qcompile.backends.tvm.profile import Stamper

    parsed = [spec.partition("=")[::2] for spec in specs]
    env = _bind_env(envs, [n for n, _ in parsed])
    libs = {}
    outs = {}
    x = None
    for name, path in parsed:
        with environment(env.get(name, {})):
            libs[name] = qc.load(Path(path))
            if x is None:
                x = np.random.default_rng(0).standard_normal(libs[name].input_shape).astype(np.float32)
            outs[name] = libs[name](x)  # binds the driver under the library's settings
    want = next(iter(outs.values()))
    for k, low in libs.items():
        if not np.array_equal(outs[k], want) or not np.array_equal(low(x), want):
            raise AssertionError(f"{k}: output differs from {next(iter(libs))}'s")
    st = {k: Stamper(low) for k, low in libs.items()}
    for s in st.values():
        s.run(3)
    call_min = {k: [] for k in libs}
    stamped = {k: np.inf for k in libs}
    row_min = {k: np.full(len(s.names), np.inf) for k, s in st.items()}
    for r in range(rounds):
        for k in (list(libs) if r % 2 == 0 else list(libs)[::-1]):
            time.sleep(0.05)
            spans, secs = st[k].run(repeat)
            us = spans * (1e6 / st[k].hz)
            call_min[k].append(float(secs.min() * 1e6))
            stamped[k] = min(stamped[k], float(us.sum(axis=1).min()))
            row_min[k] = np.minimum(row_min[k], us.min(axis=0))
    res = {}
    for k in libs:
        res[k] = {"call_min_us": min(call_min[k]), "call_median_us": float(np.median(call_min[k])),
                  "stamped_min_us": stamped[k], "row_sum_us": float(row_min[k].sum()),
                  "calls": st[k].names, "call_minima_us": [float(v) for v in row_min[k]]}
        print(f"{k}: plain driver min {min(call_min[k]):.0f} us, median of round minima "
              f"{np.median(call_min[k]):.0f} us; stamped min {stamped[k]:.0f} us; sum of call minima "
              f"{row_min[k].sum():.0f} us")
    a, b = list(libs)[:2] if len(libs) > 1 else (None, None)
    if a is not None and st[a].names == st[b].names:
        d = row_min[b] - row_min[a]
        print(f"calls differing most ({b} - {a}, us):")
        for i in np.argsort(-np.abs(d))[:top]:
            print(f"  {i:3d} {st[a].names[i]:48} {row_min[a][i]:7.1f} {row_min[b][i]:7.1f} {d[i]:+6.1f}")
    print(f"outputs equal; {rounds} rounds x {repeat} runs; load average "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lowered", type=Path, nargs="?")
    ap.add_argument("--compare", nargs="+", default=None, metavar="NAME=DIR")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--env", nargs="+", default=None, metavar="NAME:VAR=VALUE",
                    help="with --compare: set VAR=VALUE while library NAME is loaded and bound")
    ap.add_argument("--json", type=Path, default=None, help="with --compare: write the results here")
    ap.add_argument("--rebuild", action="store_true", help="lower the export's program again into --out")
    ap.add_argument("--untuned", action="store_true", help="with --rebuild: default schedules, no database")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("TVM_NUM_THREADS", "1")))
    ap.add_argument("--repeat", type=int, default=100)
    ap.add_argument("--top", type=int, default=None, help="only the TOP calls by delta, largest first")
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM's pool exists
    from qcompile import api as qc

    if args.compare:
        res = compare(args.compare, args.rounds, args.repeat, args.top or 12, args.env)
        if args.json is not None:
            import json

            args.json.write_text(json.dumps(res, indent=1))
        return
    if args.lowered is None:
        ap.error("LOWERED or --compare is needed")
    path = args.lowered
    if args.rebuild:
        if args.out is None:
            ap.error("--rebuild needs --out")
        path = _rebuilt(path, args.out, args.untuned)
    low = qc.load(path)
    low.num_threads = args.threads
    prof = low.profile(repeat=args.repeat)
    print(f"== {path}: {args.threads} thread(s); load average "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print(prof.table(top=args.top))


if __name__ == "__main__":
    main()
