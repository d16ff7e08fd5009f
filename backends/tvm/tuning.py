"""Persistent tuning database: tune a kernel's schedule once, reuse it in every later lowering.

One JSON file per target under `$QCOMPILE_CACHE/tuning` (default `~/.cache/qcompile/tuning`), keyed by the
workload (what the schedule depends on: shapes and the intrinsic, never the weights). Because every subnet
of a supernet is built from the same few layer shapes, one tuning run serves all subnets ("tune once for
all"; OQA/QFA deploy many subnets of one supernet).

Two kinds of records share the database:

- `knobs` of qcompile's own schedules (tile sizes of the tensorized GEMM, depthwise variants), found by the
  tuners next to those kernels (`schedules.x86.tune`), which time every candidate on this machine through
  `pick_fastest` and keep the fastest; this module knows no schedule;
- `ms_tune_primfunc` runs TVM meta-schedule on any PrimFunc (e.g. an emitter fallback kernel) into a
  meta-schedule `JSONDatabase` kept next to it, and `ms_apply` compiles with its best trace.

A database that does not parse, has the wrong schema or fails its checksum is ignored with a warning
(moved aside to `*.corrupt`), never trusted. Writes go to a temporary file and `os.replace`, so a crash
cannot leave half a file. Processes share a database safely: every write takes an `fcntl` lock on
`<db>.lock`, re-reads the file and merges (the faster record of a workload wins), so no record is lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import tvm

from qcompile.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "cache_dir",
    "TuningDB",
    "database",
    "lookup",
    "pick_fastest",
    "time_func",
    "time_on",
    "pick_fastest_on",
    "ms_tune_primfunc",
    "ms_apply",
    "target_key",
]

SCHEMA = 1


def cache_dir() -> Path:
    """`$QCOMPILE_CACHE/tuning`, default `~/.cache/qcompile/tuning` (created on demand)."""
    root = os.environ.get("QCOMPILE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "qcompile")
    return Path(root) / "tuning"


def target_key(target: tvm.target.Target) -> str:
    """Stable short key of a target: its kind plus a hash of its canonical JSON (mcpu, mattr, cores...)."""
    text = str(target)  # canonical JSON of the target's attributes
    return f"{target.kind.name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def workload_key(workload: dict) -> str:
    """Canonical string of a workload dict (sorted keys, plain JSON)."""
    return json.dumps(workload, sort_keys=True, separators=(",", ":"))


def _checksum(records: dict) -> str:
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()


class TuningDB:
    """Records `workload -> {"knobs": {...}, "latency_us": float}` for one target, in one JSON file."""

    def __init__(self, target: tvm.target.Target, root: Path | None = None):
        self.target = target
        self.root = Path(root) if root is not None else cache_dir()
        self.path = self.root / f"{target_key(target)}.json"
        self.records: dict[str, dict] = self._load()

    def _load(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            ok = (
                isinstance(data, dict)
                and data.get("schema") == SCHEMA
                and isinstance(data.get("records"), dict)
                and data.get("checksum") == _checksum(data["records"])
            )
            if not ok:
                raise ValueError("schema or checksum mismatch")
            return data["records"]
        except (ValueError, OSError, UnicodeDecodeError) as e:
            bad = self.path.with_suffix(".corrupt")
            warnings.warn(
                f"tuning database {self.path} is corrupt ({e}); ignoring it (moved to {bad}); "
                "kernels use default schedules until re-tuned",
                RuntimeWarning,
                stacklevel=2,
            )
            log.warning("corrupt tuning database %s: %s", self.path, e)
            with contextlib.suppress(OSError):
                os.replace(self.path, bad)
            return {}

    def get(self, workload: dict) -> dict | None:
        """The record of `workload`, or None."""
        return self.records.get(workload_key(workload))

    @contextlib.contextmanager
    def _locked(self):
        """Exclusive `fcntl` lock on `<db>.lock`, shared by every process using this database file."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def put(self, workload: dict, knobs: dict, latency_us: float, *, extra: dict | None = None,
            replace: bool = False) -> None:
        """Store (or improve) a record: under the lock, merge with what other processes wrote, write atomically.

        `extra`: further fields of the record (e.g. `emulated`, `remote` of a remote timing); `replace`: store it
        even if the stored record is faster (a timing on real hardware replaces one under emulation: the two
        latencies are not comparable)."""
        key = workload_key(workload)
        rec = {**(extra or {}), "knobs": knobs, "latency_us": float(latency_us), "time": time.time()}
        with self._locked():
            merged = _merge(self._load(), self.records)
            old = merged.get(key)
            if old is None or replace or old["latency_us"] > rec["latency_us"]:
                merged[key] = rec
            self.records = merged
            self._write()

    def save(self) -> None:
        """Write the records, merged with the file's (other processes may have added some), atomically."""
        with self._locked():
            self.records = _merge(self._load(), self.records)
            self._write()

    def _write(self) -> None:
        from qcompile.utils.io import atomic_write_text

        data = {
            "schema": SCHEMA,
            "target": str(self.target),
            "records": self.records,
            "checksum": _checksum(self.records),
        }
        atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True))


def _valid_record(rec: Any) -> bool:
    lat = rec.get("latency_us") if isinstance(rec, dict) else None
    return isinstance(rec, dict) and isinstance(rec.get("knobs"), dict) and isinstance(lat, (int, float)) \
        and not isinstance(lat, bool) and np.isfinite(lat)


def _merge(a: dict[str, dict], b: dict[str, dict]) -> dict[str, dict]:
    """Union of two record sets; where both have a workload, the faster record wins."""
    out = {k: v for k, v in a.items() if _valid_record(v)}
    for k, v in b.items():
        if _valid_record(v) and (k not in out or v["latency_us"] < out[k]["latency_us"]):
            out[k] = v
    return out


_DB_CACHE: dict[tuple[str, str], TuningDB] = {}


def database(target: tvm.target.Target) -> TuningDB:
    """One in-memory DB per (cache dir, target) per process; re-read when the file changed."""
    key = (str(cache_dir()), target_key(target))
    db = _DB_CACHE.get(key)
    mtime = db.path.stat().st_mtime if db is not None and db.path.exists() else None
    if db is None or getattr(db, "_mtime", None) != mtime:
        db = TuningDB(target)
        db._mtime = db.path.stat().st_mtime if db.path.exists() else None  # type: ignore[attr-defined]
        _DB_CACHE[key] = db
    return db


def lookup(workload: dict, target: tvm.target.Target, knob_type: type) -> Any:
    """The stored record of `workload` as `knob_type(**knobs)`, or None (absent, or not valid knobs)."""
    rec = database(target).get(workload)
    if rec is None:
        return None
    try:
        return knob_type(**rec["knobs"])
    except (TypeError, ConfigError) as e:
        log.warning("ignoring bad tuning record for %s: %s", workload, e)
        return None


#: rounds in which `pick_fastest` re-times its finalists (the three fastest and the first candidate)
FINAL_ROUNDS = 5
#: another candidate replaces the first (the untuned default) only when its minimum is this much lower: minima of
#: interleaved rounds of one kernel differ by about 1 % between runs here (docs/peers.md, session 12)
KEEP_FIRST_MARGIN = 0.02


def pick_fastest(libs: list[tuple[Any, Any]], args: list, number: int, repeat: int, what: dict, *,
                 lib_args: list[list] | None = None, threads: int | None = None,
                 stats: dict | None = None) -> tuple[Any, float]:
    """The fastest `(knobs, lib)` and its time in seconds, timed at `threads` (TVM's pool, `threads.pool_threads`; the
    thread count the lowering runs at, so that a tile that wins on one core but splits badly over two is not kept;
    None: the pool as it is).

    Every candidate is timed in `repeat` interleaved rounds of `number` single calls (each round visits all of them,
    starting one further each time), then the three fastest and the first in `FINAL_ROUNDS` more rounds; each keeps
    its minimum. On a shared machine a burst of load hits the candidates of one round alike, and a minimum is the
    kernel's own speed (a mean includes waits for a descheduled worker). The first candidate wins unless another
    is `KEEP_FIRST_MARGIN` faster. `lib_args`: one argument list per lib where their operands differ
    (depthwise weight layouts), else `args` for all. `stats`, if given, receives `first_us` (the first candidate's
    minimum: the untuned default's, as the tuners order them), `candidates` and `threads` (the pool's count while
    timing)."""
    from qcompile.backends.tvm.threads import pool_threads

    if not libs:
        raise ConfigError("candidates", [], "at least one candidate schedule")
    per_lib = lib_args if lib_args is not None else [args] * len(libs)
    with pool_threads(threads) as got:
        evs = [_evaluator(lib, number) for _, lib in libs]
        best = [float("inf")] * len(libs)

        def rounds(idx: list[int], n: int) -> None:
            for r in range(n):
                for i in idx[r % len(idx):] + idx[: r % len(idx)]:
                    best[i] = min(best[i], float(min(evs[i](*per_lib[i]).results)))

        rounds(list(range(len(libs))), max(1, repeat))
        # the first candidate (the untuned default) always gets the final rounds: one burst of load during its
        # first rounds (a worker thread descheduled by a busier process) must not hand the record to another tile
        finalists = sorted({0, *sorted(range(len(libs)), key=lambda i: best[i])[:3]})
        rounds(finalists, FINAL_ROUNDS)
    for i, (kn, _) in enumerate(libs):
        log.debug("tune %s %s: %.1f us at %d thread(s)", what, kn, best[i] * 1e6, got)
    i = min(finalists, key=lambda j: best[j])
    if best[i] > best[0] * (1 - KEEP_FIRST_MARGIN):
        i = 0  # not clearly faster than the default: keep the default (tuning never makes a kernel slower)
    log.info("tuned %s: %s %.1f us, first candidate %.1f us (%d timed at %d thread(s))", what, libs[i][0],
             best[i] * 1e6, best[0] * 1e6, len(libs), got)
    if stats is not None:
        stats.update(first_us=best[0] * 1e6, candidates=len(libs), threads=got)
    return libs[i][0], best[i]


def _evaluator(lib: Any, number: int) -> Any:
    """`number` single calls of `lib`'s `main` per evaluation, each timed on its own."""
    return lib.mod.time_evaluator("main", tvm.cpu(), number=1, repeat=max(1, number), min_repeat_ms=0)


def time_func(lib: Any, args: list, number: int, repeat: int) -> float:
    """Fastest of `number * repeat` single calls: on a shared machine the minimum is the kernel's own
    speed, means include waits for a descheduled worker thread."""
    ev = lib.mod.time_evaluator("main", tvm.cpu(), number=1, repeat=number * repeat, min_repeat_ms=0)
    return float(min(ev(*args).results))


def time_on(mod: Any, dev: Any, args: list, number: int, repeat: int) -> float:
    """`time_func` for any module and device, e.g. a library loaded on a TVM RPC session (`sess.load_module`,
    `sess.cpu()`): the fastest of `number * repeat` single calls of `main`, timed where the module lives."""
    ev = mod.time_evaluator("main", dev, number=1, repeat=number * repeat, min_repeat_ms=0)
    return float(min(ev(*args).results))


def pick_fastest_on(dev: Any, mods: list[tuple[Any, Any]], args: list, number: int, repeat: int,
                    what: dict) -> tuple[Any, float]:
    """`pick_fastest` for `(knobs, module)` pairs loaded on `dev` (a remote device through RPC): every candidate
    timed, then the three fastest re-timed in interleaved rounds; the best minimum wins."""
    if not mods:
        raise ConfigError("candidates", [], "at least one candidate schedule")
    timed = []
    for kn, mod in mods:
        t = time_on(mod, dev, args, number, repeat)
        log.debug("tune %s %s: %.1f us", what, kn, t * 1e6)
        timed.append([t, kn, mod])
    timed.sort(key=lambda r: r[0])
    finalists = timed[:3]
    for _ in range(3):
        for row in finalists:
            row[0] = min(row[0], time_on(row[2], dev, args, number, 1))
    t, kn, _ = min(finalists, key=lambda r: r[0])
    return kn, t


# ----------------------------------------------------------------------------------------------
# meta-schedule (generic kernels): same cache root, one JSONDatabase per target


def _ms_dir(target: tvm.target.Target) -> Path:
    return cache_dir() / f"ms-{target_key(target)}"


def _ms_database(target: tvm.target.Target) -> Any:
    """The meta-schedule JSONDatabase of a target; files that do not parse line by line are set aside."""
    from tvm.s_tir import meta_schedule as ms

    d = _ms_dir(target)
    d.mkdir(parents=True, exist_ok=True)
    wl, rec = d / "database_workload.json", d / "database_tuning_record.json"
    for f in (wl, rec):
        if not f.exists():
            continue
        try:
            for line in f.read_text().splitlines():
                if line.strip():
                    json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            warnings.warn(f"meta-schedule database {f} is corrupt ({e}); ignoring it", RuntimeWarning, stacklevel=2)
            for g in (wl, rec):
                if g.exists():
                    os.replace(g, g.with_suffix(".corrupt"))
            break
    return ms.database.JSONDatabase(path_workload=str(wl), path_tuning_record=str(rec))


def ms_tune_primfunc(func: tvm.tirx.PrimFunc, target: tvm.target.Target, max_trials: int = 32) -> Any:
    """Meta-schedule tune one PrimFunc into the persistent database (LocalBuilder with 1 worker: 2 cores).

    Returns the compiled module built with the best schedule found.
    """
    from tvm.s_tir import meta_schedule as ms

    db = _ms_database(target)
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    work = cache_dir() / "ms-work"
    work.mkdir(parents=True, exist_ok=True)
    ms.tune_tir(
        mod,
        target,
        str(work),
        max_trials_global=max_trials,
        num_trials_per_iter=min(16, max_trials),
        builder=ms.builder.LocalBuilder(max_workers=1),
        database=db,
        # the default XGBoost cost model needs `xgboost`, which is not a dependency (CI failed without it)
        cost_model="random",
    )
    return ms_apply(func, target)


def ms_apply(func: tvm.tirx.PrimFunc, target: tvm.target.Target) -> Any:
    """Compile `func` with its best meta-schedule record if the database has one, else unscheduled."""
    from tvm.s_tir import meta_schedule as ms

    db = _ms_database(target)
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    sch = ms.tir_integration.compile_tir(db, mod, target)
    if sch is None:
        log.info("no meta-schedule record for this workload on %s; building unscheduled", target)
        return tvm.compile(mod, target=target)
    return tvm.compile(sch.mod, target=target)
