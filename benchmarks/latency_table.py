"""Latency-table acceptance: predicted vs measured end-to-end latency on held-out random mixed-bit subnets of the
demo's space and of mobilenet_v2 at 224 (docs/latency.md), in three resumable phases:

    prepare   lower every library the tables and the validation need and save them under
              OUT/prep/<emitter key>/<space>/ (heavy, tolerates a loaded machine; `--sets fit,validate` skips the
              optional covering subnets)
    time      load and time them at `--threads N` on a quiet machine: the tables' distinct kernel workloads and
              every network, sampled in `--rounds` short round-robin rounds spread over the whole run (each round
              visits every item once, in a fresh random order, with `--calls` calls), so that slow drift of
              the host hits every item alike (search/latency/rounds.py); nothing is lowered
    report    fit each table from the timings (held-out subnets never enter the fit), predict the held-out
              subnets with `LatencyTable.predict`, score (+-10 %, +-5 %, RMSE) per space, thread count and
              statistic (rmin: median over rounds of the per-round minimum; median and min over all samples), and
              state the measurement's own reproducibility (even vs odd rounds); writes table_*.json, summary.json,
              scatter PNGs

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python -m benchmarks.latency_table prepare --out runs/latency
    .venv/bin/python -m benchmarks.latency_table time --threads 1 --out runs/latency
    .venv/bin/python -m benchmarks.latency_table time --threads 2 --out runs/latency
    .venv/bin/python -m benchmarks.latency_table report --out runs/latency

`build` is the older all-in-one run (lower, time and validate one subnet after another in one process).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import qcompile as qc
from qcompile.search.latency import LatencyTable
from qcompile.search.latency.table import _cpu_model, covering_configs, entry_ms
from qcompile.search.latency.validate import heldout_configs, scatter_plot, summarize, validate

log = logging.getLogger("benchmarks.latency_table")

#: the two validation spaces: tag -> (space name, resolution (None: the demo's), held-out subnets, covering cap,
#: fit subnets). Both covering sets are complete (every kernel/expand choice at every block position and
#: resolution: 18 subnets for the demo space, 9 for mobilenet_v2 at 224), so every held-out block is in a table.
SPACES = {"demo": ("demo", None, 100, 18, 6), "mbv2_224": ("mobilenet_v2", 224, 20, 9, 6)}
BITS = (2, 3, 4)


def demo_space():
    """The space `make demo` trains (qcompile.cli.demo.DemoSettings: mobilenet_v3, width 0.35, 24 and 32 px)."""
    from qcompile.cli.demo import DemoSettings

    s = DemoSettings()
    return qc.spaces.get_space(s.space, num_classes=10, width_mult=s.width_mult, resolutions=s.resolutions)


def get_space(name: str, resolution: int | None):
    """`demo`: the demo's space; otherwise the full qcompile space `name` (1000 classes) at `resolution`."""
    if name == "demo":
        return demo_space()
    return qc.spaces.get_space(name, num_classes=1000, resolutions=(resolution or 224,))


# -- prepare -----------------------------------------------------------------------------------------------------
def plan(tag: str, seed: int = 0) -> tuple[Any, list[dict]]:
    """The space of `tag` and its entries: {"name", "role" (cover/fit/validate), "config"}, in a fixed order (the
    covering and fit subnets `LatencyTable.build` would lower, then `heldout_configs`)."""
    name, res, n_val, max_cover, n_fit = SPACES[tag]
    space = get_space(name, res)
    cover = covering_configs(space, max_cover, seed, BITS)
    fits = [space.sample(seed=seed * 100_003 + 10_000 + i, bits=BITS) for i in range(n_fit)]
    entries = []
    for role, cfgs in (("cover", cover), ("fit", fits), ("validate", heldout_configs(space, n_val, bits=BITS))):
        for i, c in enumerate(cfgs):
            js = c.to_json()
            entries.append({"name": f"{role}_{i:03d}_{hashlib.sha1(js.encode()).hexdigest()[:8]}", "role": role,
                            "config": js})
    return space, entries


def prep_dir(out: Path, key: str | None = None) -> Path:
    """OUT/prep/<emitter key of this tree> (or of `key`)."""
    from qcompile.search.latency.libraries import emitter_key

    return out / "prep" / (key or emitter_key()["key"])


def _done(d: Path) -> bool:
    from qcompile.search.latency.libraries import saved

    return saved(d)


def _interleave(groups: dict[str, list]) -> list:
    """The items of every group in one list, alternating between the groups (one item of each in turn), so an
    interrupted run leaves the smaller sets (mobilenet_v2's 20 held-out subnets) complete first."""
    return [(t, e) for _, _, t, e in sorted((i, k, t, e) for k, (t, es) in enumerate(groups.items())
                                            for i, e in enumerate(es))]


def prepare(args: argparse.Namespace) -> int:
    """Lower and save every library, set by set in `--sets` order (default: the fit subnets, the held-out subnets,
    then the covering subnets), each set alternating between the spaces; skips what is on disk.

    The covering subnets come last because nothing needs them for the validation: the covering sets are
    complete (`SPACES`), so every kernel workload of a held-out subnet is one a covering subnet has, and `time`
    times it from whichever prepared library holds it; the overhead model is fit on the fit (and any covering)
    networks only."""
    from tqdm import tqdm

    from qcompile.search.latency.libraries import emitter_key, save_for_timing
    from qcompile.search.latency.workloads import skeleton_graph
    from qcompile.utils.io import atomic_write_text

    key = emitter_key()
    root = prep_dir(args.out, key["key"])
    spaces, entries = {}, {}
    for tag in args.spaces.split(","):
        spaces[tag], entries[tag] = plan(tag)
        atomic_write_text(root / tag / "plan.json", json.dumps({"space": spaces[tag].to_dict(),
                                                                "entries": entries[tag]}, indent=0))
    atomic_write_text(root / "key.json", json.dumps(key, indent=1))
    jobs = []
    for role in args.sets.split(","):
        if role not in ("fit", "validate", "cover"):
            raise qc.ConfigError("--sets", role, "a comma-separated list of fit, validate and cover")
        jobs += _interleave({t: [e for e in es if e["role"] == role] for t, es in entries.items()})
    i, n = (int(v) for v in args.shard.split("/"))
    if not 0 <= i < n:
        raise qc.ConfigError("--shard", args.shard, "i/n with 0 <= i < n (e.g. 0/2 and 1/2 in two processes)")
    jobs = [(t, e) for t, e in jobs[i::n] if not _done(root / t / e["name"])]
    for tag in entries:  # staging directories of an interrupted save (save_for_timing, Lowered.export)
        for stale in (root / tag).glob(".*.tmp*"):
            shutil.rmtree(stale, ignore_errors=True)
    log.info("prepare %s: %d libraries to lower (%s), key %s", root, len(jobs), args.sets, key["key"])
    for tag, e in tqdm(jobs, desc="prepare", unit="lib"):
        t0 = time.perf_counter()
        cfg = qc.SubnetConfig.from_json(e["config"])
        low = qc.lower(skeleton_graph(spaces[tag], cfg), "x86")
        save_for_timing(low, root / tag / e["name"])
        log.info("%s/%s: %d kernels, %.1f s", tag, e["name"], len(low.meta["kernels"]), time.perf_counter() - t0)
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    log.info("prepared: %s, %.1f MB", root, size / 1e6)
    return 0


def status(args: argparse.Namespace) -> int:
    """What `prepare` has on disk (per space and role), its size, and whether its key is this tree's."""
    from qcompile.search.latency.libraries import emitter_key

    here = emitter_key()["key"]
    for root in sorted((args.out / "prep").glob("*")):
        if not (root / "key.json").exists():
            continue
        size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        print(f"{root}  ({'this tree' if root.name == here else 'another emitter key'}, {size / 1e6:.0f} MB)")
        for tag in sorted(SPACES):
            p = root / tag / "plan.json"
            if not p.exists():
                continue
            es = json.loads(p.read_text())["entries"]
            counts = {r: (sum(_done(root / tag / e["name"]) for e in es if e["role"] == r),
                          sum(e["role"] == r for e in es)) for r in ("fit", "validate", "cover")}
            print(f"  {tag}: " + ", ".join(f"{r} {d}/{n}" for r, (d, n) in counts.items()))
        for t in sorted((root / "timings").glob("*/time_t*.runs.jsonl")):
            print(f"  timed: {t.parent.name}/{t.name.split('.')[0]}")
    return 0


# -- time --------------------------------------------------------------------------------------------------------
def _entries(root: Path, tags: list[str]) -> dict[str, list[dict]]:
    out = {}
    for tag in tags:
        p = root / tag / "plan.json"
        if not p.exists():
            raise qc.ConfigError("prepared space", str(p), "a directory written by `prepare` (run it first)")
        out[tag] = [e for e in json.loads(p.read_text())["entries"] if _done(root / tag / e["name"])]
    return out


def timing_items(root: Path, entries: dict[str, list[dict]], kernels_from: str = "all") -> list[dict]:
    """What `time` samples: each distinct kernel workload of the prepared libraries (of the cover/fit libraries
    only with `kernels_from="table"`), timed from the first library that has it, then every network; sorted,
    so the list (and a resumed run's item indices) depend only on what is on disk."""
    from qcompile.search.latency.workloads import workload_key

    kernels: dict[tuple, dict] = {}
    networks = []
    for tag, es in entries.items():
        for e in es:
            networks.append({"kind": "network", "space": tag, "entry": e["name"], "role": e["role"]})
            if e["role"] == "validate" and kernels_from == "table":
                continue
            meta = json.loads((root / tag / e["name"] / "metadata.json").read_text())
            for k in meta["kernels"]:
                wk = workload_key(k["workload"])
                if k["primfuncs"] and (tag, wk) not in kernels:
                    kernels[(tag, wk)] = {"kind": "kernel", "space": tag, "entry": e["name"], "wkey": wk,
                                          "workload": k["workload"], "primfuncs": list(k["primfuncs"])}
    return [kernels[k] for k in sorted(kernels)] + sorted(networks, key=lambda n: (n["space"], n["entry"]))


def _item_id(it: dict) -> str:
    return f"{it['kind']}|{it['space']}|{it.get('wkey') or it['entry']}"


def _done_rounds(path: Path) -> int:
    """Rounds complete in a `rounds_tN.jsonl` (one JSON line per round); a line cut by a kill is dropped."""
    if not path.exists():
        return 0
    text = path.read_text()
    if text and not text.endswith("\n"):  # interrupted mid-write: keep the complete rounds only
        from qcompile.utils.io import atomic_write_text

        text = text[: text.rfind("\n") + 1]
        atomic_write_text(path, text)
    return len(text.splitlines())


def time_phase(args: argparse.Namespace) -> int:
    """Time prepared libraries at `--threads` (nothing is lowered) in `--rounds` round-robin rounds
    (`search/latency/rounds.py`): each round visits every kernel workload and network once, in a fresh random
    order, with `--calls` calls (networks) or `--calls` windows of ~`--window-us` (kernels). One JSON line per
    round with every item's samples; resumable (a rerun continues at the next round with the same items and the
    same calls per kernel window)."""
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM's pool exists (backends/tvm/threads.py)
    if args.cpus:  # before TVM's pool exists: its workers inherit the set (and TVM binds them within it)
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    from tqdm import tqdm

    from qcompile.search.latency.libraries import SavedTimer, emitter_key
    from qcompile.search.latency.remote import kernel_evaluator, network_evaluator
    from qcompile.search.latency.rounds import run_rounds
    from qcompile.utils.io import atomic_write_text

    root = prep_dir(args.out, args.key)
    here = emitter_key()["key"]
    if root.name != here and not args.accept_key:
        raise qc.ConfigError("prepared libraries", root.name, f"libraries of this tree's emitter key {here} (run "
                             "`prepare` again, or pass --accept-key to time the old ones)")
    for name in ("rounds", "calls"):
        if getattr(args, name) < 1:
            raise qc.ConfigError(f"--{name}", getattr(args, name), "an integer >= 1")
    entries = _entries(root, args.spaces.split(","))
    if getattr(args, "subset", None):  # plumbing checks: the first K libraries of each space and role
        entries = {t: [e for e in es if sum(x["role"] == e["role"] for x in es[: es.index(e)]) < args.subset]
                   for t, es in entries.items()}
    run_dir = root / "timings" / args.run
    run_dir.mkdir(parents=True, exist_ok=True)
    items_path = run_dir / f"rounds_t{args.threads}.items.json"
    rounds_path = run_dir / f"rounds_t{args.threads}.jsonl"
    items = timing_items(root, entries, args.kernels_from)
    old = json.loads(items_path.read_text()) if items_path.exists() else None
    if old is not None:
        if [_item_id(i) for i in old["items"]] != [_item_id(i) for i in items] or old["calls"] != args.calls:
            raise qc.ConfigError("--run", args.run, f"a new run name: {items_path} holds another item list or "
                                 f"--calls {old['calls']} (the prepared libraries changed since it started)")
        items = old["items"]
    start = _done_rounds(rounds_path)
    log.info("time at %d thread(s): %d kernels, %d networks; rounds %d..%d of %d, %d calls per item and round; "
             "load %s", args.threads, sum(i["kind"] == "kernel" for i in items),
             sum(i["kind"] == "network" for i in items), start, args.rounds - 1, args.rounds, args.calls,
             os.getloadavg())
    if start >= args.rounds:
        return 0
    if os.getloadavg()[0] > 1.0:
        log.warning("load average %.1f on %d CPUs: other processes are running, the timings will measure them "
                    "too (this phase wants a quiet machine)", os.getloadavg()[0], os.cpu_count() or 0)
    timers: dict[tuple, SavedTimer] = {}
    fns = []
    for it in tqdm(items, desc="load", unit="item"):
        key = (it["space"], it["entry"])
        timer = timers.get(key)
        if timer is None:
            timer = timers[key] = SavedTimer(root / it["space"] / it["entry"], args.threads)
        if it["kind"] == "network":
            fns.append(network_evaluator(timer, args.calls))
            continue
        made = kernel_evaluator(timer, it["primfuncs"], args.window_us, args.calls, it.get("numbers"))
        if made is None:
            raise qc.LoweringError(f"{it['space']}/{it['entry']}", f"kernel {it['workload']['op']} has a PrimFunc "
                                   "the library does not define", "prepare the library again")
        fns.append(made[0])
        it["numbers"] = made[1]
    if old is None:
        atomic_write_text(items_path, json.dumps({"threads": args.threads, "calls": args.calls,
                                                  "window_us": args.window_us, "seed": args.seed, "items": items}))
    t0 = tr = time.perf_counter()
    with open(rounds_path, "a") as f:
        for r, samples in run_rounds(fns, args.rounds, args.seed, start, desc=f"time t{args.threads}"):
            f.write(json.dumps({"round": r, "t_s": round(time.perf_counter() - t0, 3), "unix": round(time.time(), 1),
                                "round_s": round(time.perf_counter() - tr, 3), "load1": os.getloadavg()[0],
                                "samples_ms": samples}) + "\n")
            f.flush()
            tr = time.perf_counter()
    took = time.perf_counter() - t0
    log.info("timed rounds %d..%d in %.1f s at %d thread(s), load %s", start, args.rounds - 1, took, args.threads,
             os.getloadavg())
    with open(run_dir / f"rounds_t{args.threads}.runs.jsonl", "a") as f:  # one line per (resumed) invocation
        f.write(json.dumps({"cpu": _cpu_model(), "threads": args.threads, "rounds": [start, args.rounds],
                            "seconds": round(took, 1), "load_end": os.getloadavg(),
                            "argv": vars(args) | {"out": str(args.out)},
                            "env": {k: v for k, v in os.environ.items() if k.startswith(("TVM_", "OMP_"))},
                            "affinity": sorted(os.sched_getaffinity(0))}) + "\n")
    return 0

# -- report ------------------------------------------------------------------------------------------------------
def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def load_timings(run_dir: Path) -> dict[int, dict]:
    """Every thread count timed in `run_dir`: {threads: {"protocol", "items", "load1", "time_phase_s"}}, each
    item a dict (kind, space, entry, role / wkey + workload) with its samples grouped by round (`rounds_ms`), all
    samples (`samples_ms`) and `rounds.item_stats`.

    Round-robin runs (`rounds_tN.jsonl`) have one group per round. Runs of the older burst protocol
    (`time_tN.jsonl`: each network in two passes of >= 50 consecutive calls, each kernel once) are read with
    one group per pass, so their `rmin` is the mean of the two passes' minima and even vs odd is pass 1 vs 2."""
    import re

    from qcompile.search.latency.rounds import item_stats

    out: dict[int, dict] = {}
    for p in sorted(run_dir.glob("rounds_t*.jsonl")):
        m = re.fullmatch(r"rounds_t(\d+)\.jsonl", p.name)
        if m is None or not (run_dir / f"rounds_t{m.group(1)}.items.json").exists():
            continue
        items = json.loads((run_dir / f"rounds_t{m.group(1)}.items.json").read_text())["items"]
        rounds = _rows(p)
        if not rounds:
            continue
        for i, it in enumerate(items):
            it["rounds_ms"] = [r["samples_ms"][i] for r in rounds]
        out[int(m.group(1))] = {"protocol": f"{len(rounds)} round-robin rounds", "items": items,
                                "load1": [min(r["load1"] for r in rounds), max(r["load1"] for r in rounds)],
                                "time_phase_s": rounds[-1]["t_s"]}
    for p in sorted(run_dir.glob("time_t*.jsonl")):
        m = re.fullmatch(r"time_t(\d+)\.jsonl", p.name)
        if m is None or int(m.group(1)) in out:
            continue
        rows = _rows(p)
        by: dict[tuple, dict] = {}
        for r in rows:
            k = (r["kind"], r["space"], r.get("wkey") or r["entry"])
            it = by.setdefault(k, {f: r[f] for f in ("kind", "space", "entry", "role", "wkey", "workload") if f in r})
            it.setdefault("passes", {})[r["pass"]] = r["samples_ms"]
        items = []
        for it in by.values():
            passes = it.pop("passes")
            it["rounds_ms"] = [passes[q] for q in sorted(passes)]
            items.append(it)
        out[int(m.group(1))] = {"protocol": "bursts (passes)", "items": items,
                                "load1": [min(r["load1"] for r in rows), max(r["load1"] for r in rows)],
                                "time_phase_s": max(r["t_s"] for r in rows)}
    for v in out.values():
        for it in v["items"]:
            it["samples_ms"] = [x for r in it["rounds_ms"] for x in r]
            it.update(item_stats(it["rounds_ms"]))
    return out


def table_from_timings(space: Any, threads: int, kernel_items: list[dict], net_items: list[dict],
                       stat: str = "rmin_ms") -> LatencyTable:
    """A `LatencyTable` of `space` from timed items (`load_timings`): the kernels and the cover/fit networks,
    each at statistic `stat`, fit on those networks."""
    from qcompile.search.latency.table import machine_keys
    from qcompile.search.latency.workloads import workload_key

    kernels = {}
    for r in kernel_items:
        kernels[workload_key(r["workload"])] = {"workload": r["workload"], "samples_ms": r["samples_ms"],
                                                "latency_ms": float(r[stat]), "stat": stat.removesuffix("_ms")}
    nets = [{"config": r["config"], "role": r["role"], "samples_ms": r["samples_ms"], "latency_ms": float(r[stat]),
             "stat": stat.removesuffix("_ms"), "kernels": None} for r in net_items if r["role"] in ("cover", "fit")]
    table = LatencyTable(space, machine_keys("x86", threads), kernels, nets, {}, None)
    table.fit()
    return table


def _coverage(space: Any, entries: list[dict]) -> dict:
    """Whether the covering subnets hold every block (memo key: position, resolution, choices, widths, bit
    classes) of the held-out subnets, from the configs alone; the held-out kernels timed from their own libraries
    are then the workloads a table built from the covering set would hold."""
    from qcompile.search.latency.workloads import block_keys

    cover = {repr(k) for e in entries if e["role"] == "cover"
             for k in block_keys(space, qc.SubnetConfig.from_json(e["config"])).values()}
    held = {repr(k) for e in entries if e["role"] == "validate"
            for k in block_keys(space, qc.SubnetConfig.from_json(e["config"])).values()}
    return {"heldout_blocks": len(held), "in_covering_set": len(held & cover)}


def _design(kernels: list[dict], timed: dict[str, float]) -> list[float]:
    """Features of one network for the overhead models: [sum of scheduled (x86_*) kernel medians, sum of
    TE-emitted (naive: float islands, LUTs, (de)quantize) kernel medians, count of each, 1]."""
    from qcompile.search.latency.workloads import workload_key

    f = [0.0, 0.0, 0.0, 0.0, 1.0]
    for k in kernels:
        naive = k["strategy"] == "naive"
        f[1 if naive else 0] += timed.get(workload_key(k["workload"]), 0.0)
        f[3 if naive else 2] += 1.0
    return f


#: overhead models over `_design` features: (columns, which coefficients are >= 0); the first is `LatencyTable.fit`
OVERHEAD_MODELS = {
    "scale_kernel_call": (lambda f: [f[0] + f[1], f[2] + f[3], f[4]], (True, False, True)),
    "per_strategy_kernel_term": (lambda f: [f[0] + f[1], f[2], f[3], f[4]], (True, False, False, True)),
    "per_strategy_scale": (lambda f: [f[0], f[1], f[2] + f[3], f[4]], (True, True, False, True)),
}


def _lsq(A: Any, y: Any, nonneg: tuple) -> Any:
    """Relative least squares (each network weighs 1/latency), coefficients flagged in `nonneg` >= 0."""
    import numpy as np
    from scipy.optimize import lsq_linear

    w = 1.0 / y
    lo = np.array([0.0 if n else -np.inf for n in nonneg])
    return lsq_linear(A * w[:, None], y * w, bounds=(lo, np.full(A.shape[1], np.inf))).x


def overhead_models(fit_rows: list, fit_y: list, val_rows: list, val_y: list) -> dict:
    """Each model of `OVERHEAD_MODELS`: leave-one-out relative error on the fit networks (what would justify a
    larger model, chosen without the held-out subnets) and, for information, its held-out scores."""
    import numpy as np

    out = {}
    y = np.array(fit_y, dtype=float)
    vy = np.array(val_y, dtype=float)
    for name, (cols, nonneg) in OVERHEAD_MODELS.items():
        A = np.array([cols(r) for r in fit_rows], dtype=float).reshape(-1, len(nonneg))
        if len(y) < len(nonneg) + 2:
            continue
        loo = [abs(A[i] @ _lsq(np.delete(A, i, 0), np.delete(y, i), nonneg) - y[i]) / y[i] for i in range(len(y))]
        coef = _lsq(A, y, nonneg)
        rel = (np.abs(np.array([cols(r) for r in val_rows], dtype=float) @ coef - vy) / vy) if len(vy) else vy
        out[name] = {"coef": coef.tolist(), "fit_loo_mape": float(np.mean(loo)),
                     "heldout_within_10pct": float(np.mean(rel <= 0.10)) if len(rel) else None,
                     "heldout_within_5pct": float(np.mean(rel <= 0.05)) if len(rel) else None,
                     "heldout_mape": float(np.mean(rel)) if len(rel) else None}
    return out


def report(args: argparse.Namespace) -> int:
    """Fit, predict and score every (space, thread count) that `time` produced, once per statistic of
    `rounds.STATISTICS`: `rmin` (the round-robin statistic; its table, scatter and validation rows are written)
    and the burst-era `median` and `min`, so the statistics can be compared on the same samples."""
    from qcompile.search.latency.rounds import STATISTICS, split_reproducibility
    from qcompile.search.latency.workloads import kernel_workloads, remember, workload_key

    root = prep_dir(args.out, args.key)
    out = args.out / f"report_{args.run}"
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"cpu": _cpu_model(), "machine": platform.node(), "prep": str(root),
                     "key": json.loads((root / "key.json").read_text()), "results": {}, "workloads": {}}
    metas: dict[tuple, list] = {}
    for threads, run in sorted(load_timings(root / "timings" / args.run).items()):
        for tag in args.spaces.split(","):
            plan_d = json.loads((root / tag / "plan.json").read_text())
            cfg_of = {e["name"]: e["config"] for e in plan_d["entries"]}
            space, _ = plan(tag)
            kitems = [r for r in run["items"] if r["space"] == tag and r["kind"] == "kernel"]
            nitems = [dict(r, config=cfg_of[r["entry"]]) for r in run["items"]
                      if r["space"] == tag and r["kind"] == "network"]
            if not nitems:
                continue
            # the block memo from the libraries' own kernel lists (equal to kernel_workloads: spot-checked below)
            for r in nitems:
                if (tag, r["entry"]) not in metas:
                    metas[(tag, r["entry"])] = json.loads((root / tag / r["entry"] / "metadata.json").read_text())[
                        "kernels"]
                remember(space, qc.SubnetConfig.from_json(r["config"]), metas[(tag, r["entry"])], "x86", threads)
            if tag not in summary["workloads"]:
                names = sorted(r["entry"] for r in nitems if r["role"] == "validate")[: args.check_workloads]
                eq = [kernel_workloads(space, qc.SubnetConfig.from_json(cfg_of[n]), "x86", threads, memo=False)
                      == [k["workload"] for k in metas[(tag, n)]] for n in names]
                summary["workloads"][tag] = {"checked": len(eq), "equal": sum(eq),
                                             **_coverage(space, plan_d["entries"])}
            res: dict = {"threads": threads, "protocol": run["protocol"], "kernels_timed": len(kitems),
                         "load1": run["load1"], "time_phase_s": run["time_phase_s"]}
            fits = [r for r in nitems if r["role"] in ("cover", "fit")]
            vals = [r for r in nitems if r["role"] == "validate"]
            for stat in (f"{s}_ms" for s in STATISTICS):
                table = table_from_timings(space, threads, kitems, nitems, stat)
                val, untimed = [], 0
                for r in vals:
                    untimed += sum(workload_key(k["workload"]) not in table.kernels for k in metas[(tag, r["entry"])])
                    val.append({"config": r["config"], "predicted_ms": table.predict(qc.SubnetConfig.from_json(
                        r["config"])), "measured_ms": r[stat], "rounds": len(r["rounds_ms"]),
                        **({"measured_even_ms": r["even"][stat], "measured_odd_ms": r["odd"][stat]}
                           if r["even"] else {})})
                s = {"fit": table.fit_params, "heldout_kernels_from_forest": untimed, **summarize(val)}
                timed = {k: entry_ms(v) for k, v in table.kernels.items()}
                s["overhead_models"] = overhead_models(
                    [_design(metas[(tag, r["entry"])], timed) for r in fits], [r[stat] for r in fits],
                    [_design(metas[(tag, r["entry"])], timed) for r in vals], [r[stat] for r in vals])
                # the measurement's own floor: the statistic on the even vs on the odd rounds (held-out networks;
                # kernels alike, since the table's sums carry their noise)
                s["reproducibility"] = split_reproducibility(vals, stat.removesuffix("_ms"))
                s["reproducibility_kernels"] = split_reproducibility(kitems, stat.removesuffix("_ms"))
                res[stat.removesuffix("_ms")] = s
                if stat == "rmin_ms" and val:
                    table.save(out / f"table_{tag}_t{threads}.json")
                    scatter_plot(val, out / f"scatter_{tag}_t{threads}.png",
                                 title=f"{tag}, {threads} thread(s), rmin: n={s['n']}, "
                                       f"10%: {100 * s.get('within_10pct', 0):.0f}%, "
                                       f"5%: {100 * s.get('within_5pct', 0):.0f}%")
                    with open(out / f"validation_{tag}_t{threads}.jsonl", "w") as f:
                        f.writelines(json.dumps(r) + "\n" for r in val)
            summary["results"][f"{tag}_t{threads}"] = res
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    print(comparison_table(summary))
    return 0


def comparison_table(summary: dict) -> str:
    """The report's figures as a Markdown table: per space, thread count and statistic, the held-out score and
    the measurement's own reproducibility (even vs odd rounds)."""
    lines = ["| space, threads | protocol | statistic | n | measured median ms | held-out +-10 % / +-5 % / RMSE ms | "
             "reproducibility (even vs odd) +-10 % / +-5 % / median diff | kernels: +-10 % / +-5 % |",
             "|---|---|---|---:|---:|---|---|---|"]
    for key, res in summary["results"].items():
        for stat in ("rmin", "median", "min"):
            s = res.get(stat)
            if not s or not s.get("n"):
                continue
            rp, rk = s["reproducibility"], s["reproducibility_kernels"]
            rep = (f"{100 * rp['within_10pct']:.0f} % / {100 * rp['within_5pct']:.0f} % / "
                   f"{100 * rp['median_rel_diff']:.1f} %") if rp.get("n") else "-"
            kern = f"{100 * rk['within_10pct']:.0f} % / {100 * rk['within_5pct']:.0f} %" if rk.get("n") else "-"
            lines.append(f"| {key} | {res['protocol']} | {stat} | {s['n']} | {s['measured_median_ms']:.3f} | "
                         f"{100 * s['within_10pct']:.0f} % / {100 * s['within_5pct']:.0f} % / {s['rmse_ms']:.4f} | "
                         f"{rep} | {kern} |")
    return "\n".join(lines)


# -- build (all in one process) ----------------------------------------------------------------------------------
def reproducibility(table: LatencyTable, rows: list[dict], k: int, repeat: int) -> dict:
    """Measure the first `k` validated subnets again: relative difference between the two medians."""
    diffs = []
    for r in rows[:k]:
        again = statistics.median(table.measure(qc.SubnetConfig.from_json(r["config"]), repeat=repeat))
        diffs.append(abs(again - r["measured_ms"]) / r["measured_ms"])
    if not diffs:
        return {"n": 0}
    return {"n": len(diffs), "median_rel_diff": statistics.median(diffs),
            "within_10pct": sum(d <= 0.10 for d in diffs) / len(diffs),
            "within_5pct": sum(d <= 0.05 for d in diffs) / len(diffs)}


def build(args: argparse.Namespace) -> int:
    """Lower, time and validate one subnet after another in this process (no quiet window needed to start)."""
    out = args.out / (f"t{args.threads}" if args.space == "demo" else f"{args.space}_{args.resolution or 224}_t"
                                                                      f"{args.threads}")
    out.mkdir(parents=True, exist_ok=True)
    tpath = out / "table.json"
    space = get_space(args.space, args.resolution)
    old = LatencyTable.load(tpath) if tpath.exists() else None
    t0 = time.perf_counter()
    table = LatencyTable.build(space, "x86", args.threads, table=old, max_cover=args.max_cover, n_fit=args.n_fit,
                               path=tpath)
    build_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    LatencyTable.build(space, "x86", args.threads, table=table, max_cover=args.max_cover, n_fit=args.n_fit)
    lookup_s = time.perf_counter() - t1
    log.info("%s\nbuild %.1f s (this call), second build %.2f s", table.summary(), build_s, lookup_s)
    rows_path = out / "validation.jsonl"
    done = _rows(rows_path)
    for r in done:  # measured before (table-independent): predicted again with this table
        r["predicted_ms"] = table.predict(qc.SubnetConfig.from_json(r["config"]))
    seen = {r["config"] for r in done}
    cfgs = [c for c in heldout_configs(space, args.validate) if c.to_json() not in seen]
    budget = None if args.budget_min is None else 60 * args.budget_min
    rows = done + validate(table, cfgs, args.repeat, budget_s=budget, out_jsonl=rows_path)
    summary = {"cpu": _cpu_model(), "machine": platform.node(), "threads": args.threads, "mcpu": table.keys["mcpu"],
               "table_build_s_total": table.keys.get("build_seconds"), "second_build_s": round(lookup_s, 3),
               "kernels": len(table.kernels), "networks": len(table.networks), "fit": table.fit_params,
               **summarize(rows)}
    summary["load_average"] = list(os.getloadavg())
    if args.repeat_measure:
        summary["reproducibility"] = reproducibility(table, rows, args.repeat_measure, args.repeat)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    scatter_plot(rows, out / "scatter.png")
    print(json.dumps(summary, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, default=Path("runs/latency"))
    common.add_argument("--spaces", default=",".join(SPACES), help=f"comma-separated, of {sorted(SPACES)}")
    common.add_argument("--key", default=None, help="emitter key of the prepared libraries (default: this tree's)")
    common.add_argument("--run", default="quiet", help="name of the timing run (time writes, report reads "
                        "OUT/prep/KEY/timings/RUN/; report writes OUT/report_RUN/)")
    p = sub.add_parser("prepare", parents=[common], help="lower and save every library (heavy)")
    p.add_argument("--shard", default="0/1", help="i/n: lower every n-th library from the i-th (n processes on an "
                   "idle machine with n cores; each lowering is single-threaded)")
    p.add_argument("--sets", default="fit,validate,cover", help="which subnets, in this order: fit (random, for "
                   "the overhead fit), validate (held out), cover (covering set, optional: see prepare())")
    t = sub.add_parser("time", parents=[common], help="time the prepared libraries (quiet machine)")
    t.add_argument("--threads", type=int, required=True)
    t.add_argument("--rounds", type=int, default=60, help="round-robin rounds over all kernels and networks "
                   "(search/latency/rounds.py; even vs odd rounds give the reproducibility)")
    t.add_argument("--calls", type=int, default=3, help="calls per network (kernels: timing windows) and round; "
                   "the per-round minimum is kept, the median over rounds estimates the latency")
    t.add_argument("--window-us", type=float, default=50.0, help="length of one kernel timing window")
    t.add_argument("--kernels-from", choices=("all", "table"), default="all",
                   help="time the distinct kernel workloads of all prepared libraries (default; the same workloads "
                        "as the complete covering sets, see prepare()) or of the cover/fit libraries only")
    t.add_argument("--cpus", default=None, help="comma-separated CPU ids to run on (e.g. 1 for a 1-thread run "
                   "kept off the CPU that takes the interrupts); default: all")
    t.add_argument("--accept-key", action="store_true", help="time libraries prepared under another emitter key")
    t.add_argument("--seed", type=int, default=0, help="the rounds' random orders")
    t.add_argument("--subset", type=int, default=None, metavar="K", help="time only the first K libraries of each "
                   "space and role (a plumbing check of the protocol, not a measurement)")
    sub.add_parser("status", parents=[common], help="what prepare has on disk")
    r = sub.add_parser("report", parents=[common], help="fit, predict and score what `time` measured")
    r.add_argument("--check-workloads", type=int, default=3, metavar="K",
                   help="held-out subnets per space whose kernel_workloads (slow path) are compared with the "
                        "kernels of their libraries")
    b = sub.add_parser("build", help="all in one process (lower, time, validate)")
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--space", default="demo", help="demo (the demo's space) or a qcompile space name, e.g. "
                   "mobilenet_v2 (full width, 1000 classes)")
    b.add_argument("--resolution", type=int, default=None, help="input resolution of a named space (224)")
    b.add_argument("--repeat-measure", type=int, default=0, metavar="K",
                   help="measure the first K held-out subnets again (reproducibility of the measurement)")
    b.add_argument("--validate", type=int, default=100, help="held-out subnets to measure")
    b.add_argument("--repeat", type=int, default=60, help="end-to-end calls per measurement (median)")
    b.add_argument("--budget-min", type=float, default=None, help="stop validating after this many minutes")
    b.add_argument("--max-cover", type=int, default=16)
    b.add_argument("--n-fit", type=int, default=4)
    b.add_argument("--out", type=Path, default=Path("runs/latency"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return {"prepare": prepare, "status": status, "time": time_phase, "report": report, "build": build}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
