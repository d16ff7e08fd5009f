"""`LatencyTable`: network latency of any subnet from qcompile's own int8 kernels, timed on this machine.

Model (OFA/APQ lookup tables, Cai et al. 2020 / Wang et al. 2020, at nn-Meter's kernel granularity,
Zhang et al. 2021): latency(cfg) = a * sum_k t(k) + b * (number of kernels) + c, over the kernels `k`
that `kernel_workloads` says `qc.lower` emits for cfg. `t(k)` is the kernel's timed latency when the table has
it (`latency_ms`: `rmin`, the round-robin statistic of `rounds.py`, for tables built locally; `median_ms` of a
burst for older tables and RPC boards; `entry_ms` reads either), else the kernel-level random-forest predictor
(`predictor.py`).
a, b, c (scale, per-kernel and per-call overhead of the Relax VM) are fit by non-negative least
squares on whole networks timed end to end. SpaceEvo (Table 7) reports such predictors at 92.5 % of
models within +-10 % on Intel VNNI.

A table records what its numbers depend on (`keys`): target and its TVM dict, CPU model, LLVM mcpu and
features, thread count, tuning database state, qcompile and TVM versions; `check()` refuses a table
measured elsewhere with a `ConfigError` naming what differs. JSON only, raw samples kept, written
atomically; `build(..., table=old)` extends a table and re-times nothing it already has.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qcompile.config import SubnetConfig
from qcompile.errors import ConfigError
from qcompile.search.latency.libraries import package_version
from qcompile.search.latency.predictor import KernelPredictor
from qcompile.search.latency.remote import (
    Boards,
    LocalTimer,
    Recorded,
    RemoteTimer,
    network_samples,
    primfunc_samples,
)
from qcompile.search.latency.workloads import (
    group_workloads,
    kernel_workloads,
    skeleton_graph,
    space_key,
    workload_key,
)

log = logging.getLogger(__name__)

__all__ = ["LatencyTable", "machine_keys", "covering_configs", "entry_ms", "TABLE_FORMAT"]

TABLE_FORMAT = 1
#: keys that must agree between a table and the machine using it (thread count is checked separately)
CHECKED_KEYS = ("target", "cpu_model", "mcpu", "mattr", "qcompile", "tvm", "emitter")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _tuning_state(spec: Any) -> dict:
    """Tuning database path, record count and content hash (the kernels' schedules depend on it)."""
    try:
        from qcompile.backends.tvm.tuning import TuningDB

        db = TuningDB(spec.target())
        data = db.path.read_bytes() if db.path.exists() else b""
        n = len(json.loads(data).get("records", {})) if data else 0
        return {"records": n, "sha1": hashlib.sha1(data).hexdigest()[:12] if data else None}
    except Exception as e:  # noqa: BLE001 - a missing/corrupt DB means untuned kernels
        log.debug("tuning state unavailable: %s", e)
        return {"records": 0, "sha1": None}


def machine_keys(target: Any = "x86", num_threads: int = 1, boards: Boards | Recorded | None = None) -> dict:
    """What a table's numbers depend on, for this machine and `target`, or for the RPC `boards` (their CPU model
    as the caller recorded it in `Boards.cpu_model`; `remote` says where the kernels were timed)."""
    from qcompile.backends.tvm.targets import resolve_target

    spec = resolve_target(target, num_threads)
    if boards is None and not spec.native:
        raise ConfigError("target", target, "a target that runs on this machine, or boards reached through TVM "
                          "RPC (remote='host:port' or tracker='host:port' with key=...): timings under qemu are "
                          "emulation and never enter a table")
    from qcompile.search.latency.libraries import emitter_key

    t = spec.tvm_target
    # the emitter key changes with any source that can change a kernel, so a table of older kernels is refused
    # even at an unchanged version number (a stale table once predicted 0.325 ms for a 0.174 ms subnet)
    return {"target": spec.name, "emitter": emitter_key(spec.name)["key"], "tvm_target": t,
            "cpu_model": boards.cpu_model if boards else _cpu_model(),
            "mcpu": t.get("mcpu", ""), "mattr": sorted(t.get("mattr", [])), "num_threads": int(num_threads),
            "tuning": _tuning_state(spec), "qcompile": package_version("qcompile"),
            "tvm": package_version("apache-tvm"),
            "remote": boards.where if boards else None}


def covering_configs(space: Any, max_configs: int = 32, seed: int = 0,
                     bits: Sequence[int] | None = (2, 3, 4)) -> list[SubnetConfig]:
    """Subnets whose blocks together take every (kernel, expand/channels, width) choice at every block position
    and resolution: one subnet per combination of choice indices, all blocks at that combination, every stage at
    its largest depth (block shapes do not depend on depth). More than `max_configs`: a seeded sample."""
    import itertools
    import random

    genes = space.genes()
    fields = [f for f in ("widths", "kernels", "expands", "channels") if any(g.field == f for g in genes)]
    counts = [max(len(g.choices) for g in genes if g.field == f) for f in fields]
    combos = list(itertools.product(*[range(c) for c in counts]))
    out = []
    rng = random.Random(seed)
    for r in space.resolutions:
        for combo in combos:
            idx = dict(zip(fields, combo))

            def pick(g: Any, r: int = r, idx: dict = idx) -> Any:
                if g.field == "resolution":
                    return r
                if g.field == "depths":
                    return max(g.choices)
                return g.choices[idx[g.field] % len(g.choices)]

            cfg = space._make(pick, None, None)  # noqa: SLF001 - the space's own config constructor
            if bits is not None:
                policy = space.sample(seed=rng.randrange(1 << 30), bits=bits).policy
                cfg = cfg.with_policy(policy)
            out.append(space.validate(cfg) or cfg)
    if len(out) > max_configs:
        out = rng.sample(out, max_configs)
    return out


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def entry_ms(entry: dict) -> float:
    """The latency (ms) a table uses for a kernel or network entry: `latency_ms` (the statistic named by
    `stat`, `rmin` for round-robin timings) when present, else `median_ms` (burst timings: tables written
    before the round-robin protocol, and RPC boards)."""
    return float(entry["latency_ms"] if "latency_ms" in entry else entry["median_ms"])


def _library_dir(libs: Path, cfg: SubnetConfig) -> Path:
    """Where `build` saves the library of `cfg` (one directory per config)."""
    return Path(libs) / hashlib.sha1(_config_id(cfg).encode()).hexdigest()[:16]


def _config_id(cfg: SubnetConfig) -> str:
    """Canonical form of a config (key of a network in a table and of its saved library)."""
    return json.dumps(json.loads(cfg.to_json()), sort_keys=True)


#: seconds between two writes of the timing phase's side file (each write fsyncs: 20-120 ms for 300 items at
#: 1-60 rounds on the shared 2-vCPU VM at load 7.7), so an interruption loses at most this much timing
SIDE_FILE_EVERY_S = 2.0


def rounds_file(path: str | os.PathLike | None, libs: Path | None) -> Path | None:
    """Where `build`'s timing phase keeps its completed rounds while it runs: beside the table (`<path>.rounds.json`),
    else in the libraries' directory; None (not resumable) for a build with neither."""
    if path is not None:
        return Path(f"{path}.rounds.json")
    return None if libs is None else Path(libs) / "rounds.json"


def _item_id(kind: str, what: Any) -> str:
    """A timed item's identity in the side file: a kernel's workload key, a network's config and role."""
    if kind == "kernel":
        return f"kernel:{what[0]}"
    cfg, role, _n = what
    return f"network:{role}:{_config_id(cfg)}"


def _resumed_rounds(side: Path | None, ident: dict) -> list:
    """The completed rounds of an interrupted timing phase in `side`, if it timed the same items with the same
    calls, window and seed (`ident`); else [] (a start from round 0, said in the log)."""
    if side is None or not side.exists():
        return []
    try:
        doc = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as e:
        log.warning("%s: unreadable (%s); timing from round 0", side, e)
        return []
    if {k: doc.get(k) for k in ident} != ident:
        log.warning("%s: rounds of other items or settings; timing from round 0", side)
        return []
    rounds = doc.get("rounds", [])
    if not all(isinstance(r, list) and len(r) == len(ident["items"]) for r in rounds):
        log.warning("%s: malformed rounds; timing from round 0", side)
        return []
    return rounds


class LatencyTable:
    """Kernel latencies (raw samples) + whole-network measurements + the fitted overhead model."""

    def __init__(self, space: Any, keys: dict, kernels: dict | None = None, networks: list | None = None,
                 blocks: dict | None = None, fit: dict | None = None) -> None:
        self.space = space
        self.keys = keys
        # workload key -> {"workload", "rounds_ms", "samples_ms", "latency_ms", "stat"} (burst: "median_ms")
        self.kernels: dict[str, dict] = kernels or {}
        self.networks: list[dict] = networks or []  # {"config", "role", "rounds_ms", "samples_ms", "latency_ms", ...}
        self.blocks: dict[str, list[str]] = blocks or {}  # block memo key -> workload keys
        self.fit_params: dict = fit or {"scale": 1.0, "per_kernel_ms": 0.0, "per_call_ms": 0.0}
        self._block_cache: dict[str, tuple[float, int]] = {}
        self._predictor: KernelPredictor | None = None
        self._median: dict[str, float] = {k: entry_ms(v) for k, v in self.kernels.items()}
        self._restore_blocks()

    def _restore_blocks(self) -> None:
        """Block sums from the persisted block memo (a loaded table predicts seen blocks without the emitter)."""
        self._block_cache.clear()
        for k, wkeys in self.blocks.items():
            self._block_cache[k] = (sum(self._kernel_ms(json.loads(wk), wk) for wk in wkeys), len(wkeys))

    # -- identity -----------------------------------------------------------------------------------
    @property
    def num_threads(self) -> int:
        return int(self.keys["num_threads"])

    @property
    def target(self) -> str:
        return str(self.keys["target"])

    def check(self, target: Any = None, num_threads: int | None = None, space: Any = None,
              boards: Boards | None = None) -> None:
        """Raise `ConfigError` naming every key that differs from this machine, or from `boards` for a table timed
        through RPC (its CPU model as recorded; without `boards`, the recorded one), and the given space/threads."""
        if boards is None and self.keys.get("remote"):  # the boards are not here: their CPU as recorded
            boards = Recorded(cpu_model=self.keys["cpu_model"], where=self.keys["remote"])
        here = machine_keys(target or self.target, num_threads or self.num_threads, boards)
        diffs = [f"{k}: table {self.keys.get(k)!r}, here {here[k]!r}" for k in CHECKED_KEYS
                 if self.keys.get(k) != here[k]]
        if num_threads is not None and int(num_threads) != self.num_threads:
            diffs.append(f"num_threads: table {self.num_threads}, asked {num_threads}")
        if space is not None and space_key(space) != space_key(self.space):
            diffs.append(f"space: table {space_key(self.space)}, asked {space_key(space)}")
        if diffs:
            raise ConfigError("latency table", "; ".join(diffs),
                              "a table measured on this CPU, target, thread count, space and qcompile version "
                              "(rebuild it: qcompile latency-table build)")

    # -- prediction -----------------------------------------------------------------------------------
    def _kernel_ms(self, w: dict, key: str | None = None) -> float:
        key = key or workload_key(w)
        ms = self._median.get(key)
        if ms is not None:
            return ms
        if self._predictor is None:
            self._refit_predictor()
        return self._predictor.predict(w)  # type: ignore[union-attr]

    def _refit_predictor(self) -> None:
        ws = [v["workload"] for v in self.kernels.values()]
        ms = [entry_ms(v) for v in self.kernels.values()]
        if not ws:
            raise ConfigError("latency table", "no timed kernels", "build the table first (LatencyTable.build)")
        self._predictor = KernelPredictor(seed=0).fit(ws, ms)

    def kernel_sum(self, cfg: SubnetConfig) -> tuple[float, int]:
        """(sum of kernel latencies in ms, number of kernels) of `cfg`, memoised per block."""
        from qcompile.search.latency.workloads import block_keys

        keys = [repr(k) for k in block_keys(self.space, cfg).values()]
        total, n = 0.0, 0
        groups = None
        for k in keys:
            hit = self._block_cache.get(k)
            if hit is None:
                if groups is None:
                    groups = group_workloads(self.space, cfg, self.target, self.num_threads)
                if groups is None:  # not block-structured: the whole config, unmemoised
                    ws = kernel_workloads(self.space, cfg, self.target, self.num_threads)
                    return sum(self._kernel_ms(w) for w in ws), len(ws)
                ws = groups[k]
                wkeys = [workload_key(w) for w in ws]
                self.blocks[k] = wkeys
                hit = (sum(self._kernel_ms(w, wk) for w, wk in zip(ws, wkeys)), len(ws))
                self._block_cache[k] = hit
            total += hit[0]
            n += hit[1]
        return total, n

    def predict(self, cfg: SubnetConfig) -> float:
        """Predicted end-to-end latency (ms) of subnet `cfg` lowered for this table's target and threads."""
        self.space.validate(cfg)
        s, n = self.kernel_sum(cfg)
        f = self.fit_params
        return float(f["scale"] * s + f["per_kernel_ms"] * n + f["per_call_ms"])

    def predict_many(self, cfgs: Sequence[SubnetConfig]) -> np.ndarray:
        return np.array([self.predict(c) for c in cfgs], dtype=np.float64)

    # -- fitting ----------------------------------------------------------------------------------------
    def fit(self, roles: Sequence[str] = ("cover", "fit")) -> dict:
        """Fit scale (>= 0), per-kernel (any sign: isolated timings carry the timer's per-call cost, which the
        network does not pay) and per-call overhead (>= 0) by bounded relative least squares on timed networks."""
        from scipy.optimize import lsq_linear

        rows, ys = [], []
        for net in self.networks:
            if net.get("role") not in roles:
                continue
            cfg = SubnetConfig.from_json(net["config"])
            s, n = self.kernel_sum(cfg)
            rows.append([s, n, 1.0])
            ys.append(entry_ms(net))
        if len(rows) < 3:
            log.warning("only %d networks timed: overhead model not fit (sum of kernels)", len(rows))
            return self.fit_params
        A, y = np.array(rows), np.array(ys)
        # relative least squares: each network weighs by 1/latency
        wgt = 1.0 / y
        res = lsq_linear(A * wgt[:, None], y * wgt, bounds=([0.0, -np.inf, 0.0], [np.inf, np.inf, np.inf]))
        coef = res.x
        self.fit_params = {"scale": float(coef[0]), "per_kernel_ms": float(coef[1]), "per_call_ms": float(coef[2]),
                           "networks": len(rows)}
        return self.fit_params

    # -- building ---------------------------------------------------------------------------------------
    @classmethod
    def build(cls, space: Any, target: Any = "x86", num_threads: int = 1, *, table: LatencyTable | None = None,
              max_cover: int = 16, n_fit: int = 4, bits: Sequence[int] | None = (2, 3, 4), seed: int = 0,
              qnet: Any = None, validate: Sequence[SubnetConfig] = (), phase: str = "all", rounds: int = 40,
              calls: int = 3, network_repeat: int = 100, kernel_window_us: float = 50.0, kernel_repeat: int = 25,
              progress: bool = True, path: str | os.PathLike | None = None, libs: str | os.PathLike | None = None,
              remote: str | None = None, tracker: str | None = None, key: str | None = None,
              cpu_model: str | None = None) -> LatencyTable:
        """Time the kernels of a covering set of subnets (`covering_configs`) plus `n_fit` random subnets, and
        fit the overhead model on their end-to-end latencies. `table`: extend it (what it has is not re-timed,
        a second build of the same space is a lookup). `qnet`: a trained quantized supernet (else random weights:
        the kernels and their speed do not depend on the weight values on VNNI hosts). `validate`: held-out
        subnets timed end to end in the same rounds, stored with role "validate" (never in the fit, their kernels
        are not timed; `validate.heldout_rows` scores them).

        Here (no boards) the build runs in two phases. First each subnet the table lacks is lowered and its
        library written to `libs` (`save_for_timing`; default `<path>.libs/`, a temporary directory without
        `path`), under the emitter key of this tree (`libraries.emitter_key`: a library lowered by another
        emitter is never timed) and one directory per config: an interrupted build resumes without lowering
        again. Then every new kernel workload and every network of this build whose library is in `libs` (the
        new ones and, so the fit sees one measurement window, those timed before) are timed together in `rounds`
        round-robin rounds (`rounds.run_rounds`, the loop the validation benchmark runs: each round visits every
        item once in a fresh seeded order, `calls` end-to-end calls per network, `calls` windows of
        ~`kernel_window_us` per kernel), after one untimed warm-up round. A host whose speed drifts over seconds
        then moves every item alike, where one burst per subnet measured each at its own moment. Each entry
        keeps its samples by round (`rounds_ms`) and `latency_ms` = `rmin` (median over rounds of the per-round
        minimum, `rounds.round_stat`). The timing phase is resumable too: after a round, at most every
        `SIDE_FILE_EVERY_S` seconds, the rounds so far are written atomically to a side file next to the table
        (`rounds_file`: `<path>.rounds.json`, else `<libs>/rounds.json`; none for a temporary `libs`), and a build
        interrupted in the rounds resumes at the next round, with the orders an uninterrupted one would have used,
        when the side file was written for the same items, calls, window and seed (else it starts again from round
        0). The side file goes once the table is saved.

        `phase` splits the two for a quiet-window measurement: "lower" only lowers and saves the libraries of
        the plan (and of `validate`) that `libs` lacks, under any load, and returns `table` untimed; "time"
        lowers nothing (a missing library is a `ConfigError`) and re-times every kernel and network of the plan
        from the saved libraries, replacing what `table` held for them; "all" (default) does both, timing only
        what is new.

        `remote="host:port"` times on the board behind a TVM RPC server, `tracker="host:port"` with `key` on
        every free board of that key (subnets spread over them; the libraries are cross-compiled here);
        `cpu_model` names the boards' CPU for the keys (required with either). Boards keep the burst protocol of
        `add_lowered` (`network_repeat` calls, `kernel_repeat` windows per subnet, right after its lowering, median
        kept): their libraries live on the board only for the RPC session that uploaded them."""
        from tqdm import tqdm

        if int(num_threads) < 1:
            raise ConfigError("num_threads", num_threads, "a positive thread count")
        for name, v in (("rounds", rounds), ("calls", calls)):
            if int(v) < 1:
                raise ConfigError(name, v, "an integer >= 1 (round-robin rounds, calls per item and round)")
        if phase not in ("all", "lower", "time"):
            raise ConfigError("phase", phase, "'all' (lower what is new, then time it), 'lower' or 'time'")
        boards = None
        if remote is not None or tracker is not None:
            boards = Boards(remote=remote, tracker=tracker, key=key, cpu_model=cpu_model)
            if phase != "all" or validate:
                raise ConfigError("phase" if phase != "all" else "validate", phase if phase != "all" else
                                  f"{len(validate)} subnets", "phase='all' and no validate subnets with boards "
                                  "(their libraries live on the board only for one RPC session; score held-out "
                                  "subnets with validate.validate)")
        if phase != "all" and libs is None and path is None:
            raise ConfigError("libs", None, f"a directory (or `path`) for phase={phase!r}: the libraries must "
                              "outlive the call that lowers them")
        keys = machine_keys(target, num_threads, boards)
        if table is None:
            table = cls(space, keys)
        else:
            table.check(target, num_threads, space, boards)
        done = {_config_id(SubnetConfig.from_json(n["config"])) for n in table.networks}
        cover = covering_configs(space, max_cover, seed, bits)
        fits = [space.sample(seed=seed * 100_003 + 10_000 + i, bits=bits) for i in range(n_fit)]
        plan = [(c, "cover") for c in cover] + [(c, "fit") for c in fits] + [(c, "validate") for c in validate]
        todo = [(c, r) for c, r in plan if _config_id(c) not in done]
        t0 = time.perf_counter()
        side = None  # the timing phase's completed rounds, while it runs (`rounds_file`)
        timing = dict(network_repeat=network_repeat, kernel_window_us=kernel_window_us, kernel_repeat=kernel_repeat)
        if boards is not None:
            table._time_on_boards(todo, boards, target, num_threads, qnet, progress, path, timing)
        elif todo or phase != "all":  # else every subnet of the plan is in the table: a lookup
            import tempfile

            from qcompile.search.latency.libraries import emitter_key, saved

            with contextlib.ExitStack() as stack:
                user_libs = libs is not None
                if libs is None:
                    libs = (Path(f"{path}.libs") if path is not None else
                            Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qcompile-lt-"))))
                libs = Path(libs) / emitter_key(target)["key"]
                if phase == "time":
                    missing = [c for c, _ in plan if not saved(_library_dir(libs, c))]
                    if missing:
                        raise ConfigError("libs", str(libs), f"a saved library for every subnet of the plan "
                                          f"({len(missing)} of {len(plan)} missing, e.g. "
                                          f"{_library_dir(libs, missing[0]).name}): run phase='lower' "
                                          "(`--lower-only`) with the same settings first")
                else:
                    lower = plan if phase == "lower" else todo
                    for cfg, _role in tqdm(lower, desc="latency table: lower", disable=not progress, unit="subnet"):
                        table._lower_saved(cfg, target, num_threads, qnet, libs)
                if phase != "lower":
                    # this build's networks with a library here: the new ones and those timed by an earlier build
                    nets = [(c, r, _library_dir(libs, c)) for c, r in plan if saved(_library_dir(libs, c))]
                    side = rounds_file(path, libs if user_libs else None)
                    table._time_rounds(nets, rounds, calls, kernel_window_us, seed, progress,
                                       retime=phase == "time", side=side)
                    table.keys = {**table.keys, "timing": {"protocol": "rounds", "stat": "rmin",
                                                           "rounds": int(rounds), "calls": int(calls),
                                                           "window_us": float(kernel_window_us)}}
        if phase == "lower":
            log.info("latency table: %d libraries lowered and saved in %.0f s (not timed: phase='lower')",
                     len(plan), time.perf_counter() - t0)
            return table
        table._predictor = None
        table._restore_blocks()
        table.fit()
        for net in table.networks:  # every timed network's blocks into the saved memo: a reloaded table (a second
            table.kernel_sum(SubnetConfig.from_json(net["config"]))  # build, held-out scoring) predicts them fast
        table.keys = {**table.keys, "build_seconds": round(time.perf_counter() - t0 + table.keys.get(
            "build_seconds", 0.0), 1)}
        if path is not None:
            table.save(path)
        if side is not None:  # the rounds are in the table now
            side.unlink(missing_ok=True)
        log.info("latency table: %d kernels, %d networks, fit %s", len(table.kernels), len(table.networks),
                 table.fit_params)
        return table

    def measure(self, cfg: SubnetConfig, repeat: int = 100, qnet: Any = None, session: Any = None) -> list[float]:
        """Lower `cfg` (skeleton weights unless `qnet`) and time `main` end to end: `repeat` calls (ms), here or on
        the board behind an RPC `session`."""
        from qcompile import api as qc

        ig = skeleton_graph(self.space, cfg, qnet=qnet)
        low = qc.lower(ig, self.target, num_threads=self.num_threads)
        timer = LocalTimer(low) if session is None else RemoteTimer(low, session, "rpc")
        return [float(x) for x in network_samples(timer, repeat)]

    def _lower_saved(self, cfg: SubnetConfig, target: Any, num_threads: int, qnet: Any, libs: Path) -> Path:
        """Lower `cfg` and write its library to `libs` (`save_for_timing`), unless a complete one is there."""
        from qcompile import api as qc
        from qcompile.search.latency.libraries import save_for_timing, saved

        d = _library_dir(libs, cfg)
        if saved(d):
            return d
        low = qc.lower(skeleton_graph(self.space, cfg, qnet=qnet), target, num_threads=num_threads)
        return save_for_timing(low, d)

    def _time_rounds(self, nets: list, rounds: int, calls: int, window_us: float, seed: int,
                     progress: bool, retime: bool = False, side: Path | None = None) -> None:
        """Time the saved libraries `nets` ([(cfg, role, dir)]) end to end and every kernel workload of the
        cover and fit ones that the table lacks (all of them with `retime`), in round-robin rounds (`build`'s
        docstring); store `rmin` and the rounds. With `side`, the completed rounds are written there (at most
        every `SIDE_FILE_EVERY_S`) and a run interrupted earlier with the same items resumes from them
        (`_resumed_rounds`)."""
        from qcompile.search.latency.libraries import SavedTimer
        from qcompile.search.latency.remote import kernel_evaluator, network_evaluator
        from qcompile.search.latency.rounds import round_stat, run_rounds
        from qcompile.search.latency.workloads import remember
        from qcompile.utils.io import atomic_write_text

        items: list[tuple[str, Any, Any]] = []  # (kind, key or (cfg, role, n_kernels), callable)
        seen: set[str] = set()
        timers = []  # the loaded libraries stay alive while their evaluators run
        for cfg, role, d in nets:
            self.space.validate(cfg)
            timer = SavedTimer(d, self.num_threads)
            timers.append(timer)
            kernels = timer.low.meta["kernels"]
            # the lowering's own kernel list fills the block memo: fit() and predict() of these blocks skip the
            # slow kernel_workloads path (they are equal: tests/search/test_latency.py)
            remember(self.space, cfg, kernels, self.target, self.num_threads)
            items.append(("network", (cfg, role, len(kernels)), network_evaluator(timer, calls)))
            if role not in ("cover", "fit"):  # held out: only its end-to-end latency is measured
                continue
            for k in kernels:
                wkey = workload_key(k["workload"])
                if (wkey in self.kernels and not retime) or wkey in seen or not k["primfuncs"]:
                    continue
                made = kernel_evaluator(timer, list(k["primfuncs"]), window_us, calls)
                if made is None:
                    log.warning("kernel %s not timed (%s not in %s)", k["workload"]["op"], k["primfuncs"], d)
                    continue
                seen.add(wkey)
                items.append(("kernel", (wkey, k["workload"]), made[0]))
        log.info("timing %d kernel workloads and %d networks in %d rounds of %d calls, load %s",
                 len(seen), len(nets), rounds, calls, os.getloadavg())
        ident = {"items": [_item_id(kind, what) for kind, what, _ in items], "calls": int(calls),
                 "window_us": float(window_us), "seed": int(seed)}
        done = _resumed_rounds(side, ident)[: int(rounds)]  # done[r][i]: item i's samples of round r
        if done:
            log.info("resuming the timing at round %d of %d (%s)", len(done), rounds, side)
        t0 = time.perf_counter()
        if len(done) < rounds:
            for fn in (f for _, _, f in items):  # warm-up round (thread pool, caches), not kept
                fn()
            last = time.perf_counter()
            for _r, got in run_rounds([f for _, _, f in items], rounds, seed, start=len(done), progress=progress,
                                      desc="latency table: time"):
                done.append(got)
                if side is not None and time.perf_counter() - last >= SIDE_FILE_EVERY_S:
                    atomic_write_text(side, json.dumps({**ident, "rounds": done}))
                    last = time.perf_counter()
        samples = [[r[i] for r in done] for i in range(len(items))]
        log.info("timed %d rounds in %.1f s, load %s", rounds, time.perf_counter() - t0, os.getloadavg())
        by_config = {_config_id(SubnetConfig.from_json(n["config"])): i for i, n in enumerate(self.networks)}
        for (kind, what, _), rs in zip(items, samples):
            entry = {"rounds_ms": rs, "samples_ms": [x for r in rs for x in r], "stat": "rmin",
                     "latency_ms": round_stat(rs, "rmin")}
            if kind == "kernel":
                wkey, w = what
                self.kernels[wkey] = {"workload": w, **entry}
                self._median[wkey] = entry["latency_ms"]
                continue
            cfg, role, n = what
            net = {"config": cfg.to_json(), "role": role, **entry, "kernels": n}
            i = by_config.get(_config_id(cfg))
            if i is None:
                self.networks.append(net)
            else:  # timed again in this window: the new measurement replaces the old one
                self.networks[i] = net
        self._predictor = None
        self._restore_blocks()

    def _time_on_boards(self, todo: list, boards: Boards, target: Any, num_threads: int, qnet: Any, progress: bool,
                        path: str | os.PathLike | None, timing: dict) -> None:
        """Lower each subnet here (cross-compiled), time it on the next free board: one worker thread per RPC
        session, so k boards time k subnets at once while this process lowers the next."""
        import queue
        import threading
        from concurrent.futures import ThreadPoolExecutor

        from tqdm import tqdm

        from qcompile import api as qc

        sessions = boards.sessions()
        free: queue.Queue = queue.Queue()
        for s in sessions:
            free.put(s)
        lock = threading.Lock()
        bar = tqdm(total=len(todo), desc=f"latency table ({len(sessions)} board(s))", disable=not progress,
                   unit="subnet")

        def time_on_board(cfg: SubnetConfig, role: str, low: Any) -> None:
            sess = free.get()
            try:
                self.add_lowered(cfg, low, role, session=sess, where=boards.where, lock=lock, **timing)
            finally:
                free.put(sess)
            with lock:
                if path is not None:
                    self.save(path)
                bar.update(1)

        slots = threading.BoundedSemaphore(len(sessions))  # at most one lowered subnet waiting per board

        def release_after(cfg: SubnetConfig, role: str, low: Any) -> None:
            try:
                time_on_board(cfg, role, low)
            finally:
                slots.release()

        with ThreadPoolExecutor(max_workers=len(sessions)) as pool:
            futures = []
            for cfg, role in todo:
                slots.acquire()
                low = qc.lower(skeleton_graph(self.space, cfg, qnet=qnet), target, num_threads=num_threads)
                futures.append(pool.submit(release_after, cfg, role, low))
            for f in futures:
                f.result()  # a board's error surfaces here
        bar.close()

    def add_lowered(self, cfg: SubnetConfig, low: Any, role: str = "fit", network_repeat: int = 100,
                    kernel_window_us: float = 50.0, kernel_repeat: int = 25, *, session: Any = None,
                    where: str = "rpc", lock: Any = None) -> None:
        """Time the kernels of a lowered `cfg` the table lacks, and the network end to end (`role`: "cover" and
        "fit" networks enter `fit()`, others such as "validate" do not); on the board behind an RPC `session`
        when given (`lock` guards the table when several boards add at once).

        Burst protocol: `network_repeat` consecutive calls and `kernel_repeat` windows right after the lowering,
        median kept (`median_ms`). `build` uses it for RPC boards only; here it times the round-robin rounds of
        `_time_rounds`, whose `rmin` reproduces on a host whose speed drifts (`rounds.py`)."""
        import contextlib

        from qcompile.search.latency.workloads import remember

        self.space.validate(cfg)
        if int(low.num_threads or 0) != self.num_threads:
            raise ConfigError("lowered num_threads", low.num_threads, f"{self.num_threads} (the table's)")
        # the lowering's own kernel list fills the block memo: fit() and predict() of these blocks skip the slow
        # kernel_workloads path (they are equal: tests/search/test_latency.py)
        remember(self.space, cfg, low.meta["kernels"], self.target, self.num_threads)
        timer = LocalTimer(low) if session is None else RemoteTimer(low, session, where)
        guard = lock if lock is not None else contextlib.nullcontext()
        network_samples(timer, 5)  # warm up: thread pool, caches
        new = {}
        for k in low.meta["kernels"]:
            w = k["workload"]
            key = workload_key(w)
            if key in self.kernels or key in new or not k["primfuncs"]:
                continue
            new[key] = (w, list(k["primfuncs"]))
        timed = primfunc_samples(timer, sorted({f for _, fs in new.values() for f in fs}), kernel_window_us,
                                 kernel_repeat)
        net = network_samples(timer, network_repeat)
        with guard:
            for key, (w, fs) in new.items():
                if not all(f in timed for f in fs):
                    log.warning("kernel %s not timed (%s)", w["op"], fs)
                    continue
                samples = [sum(v) for v in zip(*(timed[f] for f in fs))]
                self.kernels[key] = {"workload": w, "samples_ms": samples, "median_ms": _median(samples)}
                self._median[key] = _median(samples)
            self._predictor = None
            self._restore_blocks()
            self.networks.append({"config": cfg.to_json(), "role": role, "samples_ms": net,
                                  "median_ms": _median(net), "kernels": len(low.meta["kernels"])})

    # -- persistence ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": TABLE_FORMAT, "space": self.space.to_dict(), "keys": self.keys, "fit": self.fit_params,
                "kernels": list(self.kernels.values()), "networks": self.networks, "blocks": self.blocks}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table as JSON (raw samples included), atomically."""
        from qcompile.utils.io import atomic_write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=0))

    @classmethod
    def load(cls, path: str | os.PathLike, *, check: bool = True) -> LatencyTable:
        """Read a saved table; with `check` (default) refuse one measured on another CPU/target/version."""
        from qcompile.spaces import get_space

        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise ConfigError("latency table path", str(path), "an existing table JSON") from e
        except json.JSONDecodeError as e:
            raise ConfigError("latency table", f"{path}: not JSON ({e})", "a file written by LatencyTable.save") from e
        if not isinstance(d, dict) or d.get("format") != TABLE_FORMAT:
            raise ConfigError("latency table format", d.get("format") if isinstance(d, dict) else type(d).__name__,
                              f"format {TABLE_FORMAT} (a file written by LatencyTable.save)")
        space = get_space(d["space"]["name"], **d["space"].get("args", {}))
        kernels = {workload_key(k["workload"]): k for k in d["kernels"]}
        t = cls(space, d["keys"], kernels, d.get("networks", []), d.get("blocks", {}), d.get("fit"))
        if check:
            t.check()
        return t

    def summary(self) -> str:
        k = self.keys
        nets = [n for n in self.networks]
        lines = [f"latency table: space {self.space!r}", f"  target {k['target']} ({k['cpu_model']}, mcpu "
                 f"{k['mcpu']}, {len(k['mattr'])} features), {k['num_threads']} thread(s), tuning {k['tuning']}",
                 f"  qcompile {k['qcompile']}, tvm {k['tvm']}, built in {k.get('build_seconds', '?')} s",
                 f"  {len(self.kernels)} timed kernel workloads, {len(nets)} timed networks ("
                 + ", ".join(f"{sum(n.get('role') == r for n in nets)} {r}" for r in sorted({n.get("role")
                                                                                           for n in nets})) + ")",
                 f"  fit: latency = {self.fit_params['scale']:.3f} * sum(kernels) + "
                 f"{1e3 * self.fit_params['per_kernel_ms']:.2f} us * n_kernels + "
                 f"{1e3 * self.fit_params['per_call_ms']:.1f} us"]
        return "\n".join(lines)
