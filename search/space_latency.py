"""Q-T latency of any candidate space from our INT8 kernels timed on this host (SpaceEvo Sec. 3.3).

SpaceEvo scores spaces with kernel-level INT8 latency predictors (Sec. 3.3, Table 7; nn-Meter, Zhang
et al. 2021: predict per *kernel*, the unit left after fusion). A `LatencyTable` is built for one
space, so it cannot price the other candidates of a hyperspace. This module adapts it:

- **Kernel costs** (`KernelCosts`): one `LatencyTable` per block type of the hyperspace, each over that
  block's *probe space* (`Hyperspace.probe_space`: the block in every stage over each stage's whole width
  range, so it holds every candidate's stages). Their timed kernels are pooled: a kernel's cost is its
  timed median when some table timed that exact workload, else the per-kernel-type random forest
  (`KernelPredictor`) fitted on all of them; a network costs `a * sum(kernels) + b * n_kernels + c`
  with (a, b, c) fit by bounded relative least squares on every timed network of the tables (the
  `LatencyTable` model, pooled).
- **Kernel lists** (`KernelLatencyModel.part_ms`): the fused kernels `qc.lower` emits for a subnet
  (`structural_groups`, the emitter's dry walk as in `qcompile.search.kernel_workloads`) split into the
  parts the Q-T scorer memoises: "fixed" (stem + residual-stem stage, plus the per-call cost c),
  "stage1".."stageN", "head".
  A dry walk costs about a second, so the lists are cached per (probe space, config) in JSON shards
  (`kernels/<space>.json`, written atomically every few configs: an interrupted build resumes).
- **Structural kernel lists** (`structural_groups`): `to_integer` leaves out the requantization between two
  quantizers whose calibrated (scale, zero point) coincide. On the random-weight skeleton the lists are
  planned on, two *distinct* quantizers coincide only by accident of its values (e.g. a quantizer reading
  another's codes through a mean over a 1x1 map coincides when the data hold an exact 0), so the same
  stage got a different kernel list in a block type's probe space than in a candidate space. The lists
  here are planned with every distinct quantizer's scale moved by its own factor of 1 + O(1e-6): a
  requantization is left out only between points of the same quantizer, a property of the architecture.

Everything lives in one cache directory (next to the block-wise NSR table by default): the timing
tables `latency_<block>.json`, `kernel_costs.json` (the pooled fit, reused while the tables are
unchanged) and the kernel-list shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qcompile.config import SubnetConfig
from qcompile.errors import ConfigError
from qcompile.search.latency import KernelPredictor, LatencyTable, covering_configs, kernel_workloads, machine_keys
from qcompile.search.latency.table import entry_ms
from qcompile.search.latency.workloads import block_keys, space_key, workload_key
from qcompile.spaces.hyperspace import Hyperspace

#: names of a subnet's latency parts: "fixed" (stem, residual-stem stage, per-call cost), "stage1".."stageN", "head"
FIXED, HEAD = "fixed", "head"

log = logging.getLogger(__name__)

COSTS_FORMAT = "qcompile.spaceevo-kernel-costs/1"
KERNELS_FORMAT = "qcompile.spaceevo-kernel-lists/2"
#: a timed network whose median exceeds its fastest call by this factor was mostly preempted: not fit on
PREEMPTED_RATIO = 3.0
#: machine facts a kernel list depends on (strategy and GEMM mode selection)
_LIST_KEYS = ("target", "mcpu", "mattr", "qcompile", "tvm")

__all__ = ["TimingSettings", "KernelCosts", "KernelLatencyModel", "costs_key", "group_part", "structural_groups",
           "COSTS_FORMAT", "KERNELS_FORMAT"]


@dataclass(frozen=True)
class TimingSettings:
    """How much of each block type's probe space is timed (`LatencyTable.build` arguments).

    `max_cover` covering subnets (every kernel/expand/width choice index at every block position) and
    `n_fit` random subnets per block type, 8-bit (the Q-T score prices INT8 subnets), `num_threads`
    threads."""

    max_cover: int = 2
    n_fit: int = 1
    num_threads: int = 1
    bits: tuple[int, ...] = (8,)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_cover < 1 or self.n_fit < 0:
            raise ConfigError("TimingSettings max_cover/n_fit", (self.max_cover, self.n_fit),
                              "max_cover >= 1, n_fit >= 0")
        if self.num_threads < 1:
            raise ConfigError("num_threads", self.num_threads, ">= 1")


def costs_key(table_shas: dict[str, str], settings: TimingSettings, target: str) -> dict:
    """The key under which `kernel_costs.json` keeps a fit, in its JSON form (the settings' tuples come back from
    the file as lists, so a key compared before that round trip would never match and the fit would rerun)."""
    return json.loads(json.dumps({"tables": table_shas, "settings": asdict(settings), "target": target}))


def group_part(group: Any) -> str:
    """The Q-T latency part of a kernel group of `block_keys` ("stem", (stage, block), "head")."""
    if group == "stem" or (isinstance(group, tuple) and group[0] == 0):
        return FIXED
    if group == "head":
        return HEAD
    return f"stage{group[0]}"


def structural_groups(space, cfg: SubnetConfig, target: str = "x86", num_threads: int = 1) -> dict[Any, list[dict]]:
    """Kernel group ("stem", (stage, block), "head") -> the workloads `qc.lower` emits for `cfg` on the skeleton
    supernet (`search.latency.workloads`: seeded random weights, two-image calibration), planned with every
    distinct activation quantizer's scale moved by its own relative 1e-6 step, so that `to_integer` leaves out
    a requantization only where producer and consumer share a quantizer, never where two calibrated scales
    coincide by accident of the random values (module docstring). One dry walk (about a second)."""
    import torch

    from qcompile import api as qc
    from qcompile.backends.tvm.emitter import plan_kernels
    from qcompile.passes.to_integer import to_integer
    from qcompile.quant.base import ActQuantizer
    from qcompile.search.latency import workloads as wl

    space.validate(cfg)
    sub = qc.extract(wl._skeleton(space), cfg)
    g = torch.Generator().manual_seed(0)
    qc.calibrate(sub, [torch.randn(2, space.in_channels, cfg.resolution, cfg.resolution, generator=g)])
    quantizers = [m for m in sub.modules() if isinstance(m, ActQuantizer)]
    try:
        for k, m in enumerate(quantizers):
            def moved(bits=None, _m=m, _f=1.0 + 1e-6 * (k + 1)):
                scale, zp = type(_m).qparams(_m, bits)
                return scale * _f, zp

            m.qparams = moved  # instance attribute: shadows the method for this walk only
        ig = to_integer(sub, check_overflow=False, verify=False, copy_input=False)
        records = plan_kernels(ig, wl._resolve(target, num_threads).target())
    finally:
        for m in quantizers:
            m.__dict__.pop("qparams", None)
    return wl._split(records)


def _sha(text: str | bytes, n: int = 16) -> str:
    return hashlib.sha1(text.encode() if isinstance(text, str) else text).hexdigest()[:n]


class KernelCosts:
    """Cost (ms) of kernel workloads pooled from several `LatencyTable`s: timed median, else the forest."""

    def __init__(self, kernels: dict[str, dict[str, Any]], fit: dict[str, float], seed: int = 0) -> None:
        if not kernels:
            raise ConfigError("kernel costs", "no timed kernels", "latency tables with timed kernels")
        self.kernels = kernels
        self.fit_params = dict(fit)
        self._ms: dict[str, float] = {k: entry_ms(v) for k, v in kernels.items()}
        self.predictor = KernelPredictor(seed=seed).fit([v["workload"] for v in kernels.values()],
                                                        [entry_ms(v) for v in kernels.values()])

    @classmethod
    def pool(cls, tables: list[LatencyTable]) -> KernelCosts:
        """Kernels of all `tables`; a workload timed by several: `rmin` over their pooled rounds
        (`rounds.round_stat`) when every table timed it in rounds, else the median of its pooled samples
        (burst timings); no fit yet."""
        from qcompile.search.latency.rounds import round_stat

        samples: dict[str, list[float]] = {}
        rounds: dict[str, list | None] = {}
        work: dict[str, dict] = {}
        for t in tables:
            for k, v in t.kernels.items():
                work.setdefault(k, v["workload"])
                samples.setdefault(k, []).extend(float(x) for x in v["samples_ms"])
                rs = rounds.setdefault(k, [])
                rounds[k] = rs + list(v["rounds_ms"]) if rs is not None and "rounds_ms" in v else None
        kernels = {k: {"workload": work[k], **({"latency_ms": round_stat(rounds[k], "rmin"), "stat": "rmin"}
                                               if rounds[k] else {"median_ms": float(np.median(samples[k]))})}
                   for k in sorted(work)}
        return cls(kernels, {"scale": 1.0, "per_kernel_ms": 0.0, "per_call_ms": 0.0, "networks": 0})

    def kernel_ms(self, w: dict, key: str | None = None) -> float:
        """One kernel's cost (ms): its timed median, else the kernel-type forest's prediction (memoised)."""
        key = key or workload_key(w)
        ms = self._ms.get(key)
        if ms is None:
            ms = self._ms[key] = self.predictor.predict(w)
        return ms

    def kernels_ms(self, workloads: list[dict]) -> float:
        """a * sum of kernel costs + b * number of kernels (a part of a network, without the per-call c)."""
        f = self.fit_params
        return float(f["scale"] * sum(self.kernel_ms(w) for w in workloads) + f["per_kernel_ms"] * len(workloads))

    def network_ms(self, workloads: list[dict]) -> float:
        """Predicted end-to-end latency (ms) of a network made of `workloads`."""
        return self.kernels_ms(workloads) + float(self.fit_params["per_call_ms"])

    def fit(self, tables: list[LatencyTable], target: str, num_threads: int) -> dict[str, float]:
        """Fit (a >= 0, b, c >= 0) on every timed network of `tables` (relative least squares, as
        `LatencyTable.fit`, with the pooled kernel costs). A network whose median is more than
        `PREEMPTED_RATIO` times its fastest call was mostly preempted (a loaded machine) and is left out."""
        from scipy.optimize import lsq_linear

        rows, ys, dropped = [], [], 0
        for t in tables:
            for net in t.networks:
                if net.get("role") not in ("cover", "fit"):
                    continue
                if entry_ms(net) > PREEMPTED_RATIO * min(net.get("samples_ms") or [entry_ms(net)]):
                    dropped += 1
                    continue
                ws = kernel_workloads(t.space, SubnetConfig.from_json(net["config"]), target, num_threads)
                rows.append([sum(self.kernel_ms(w) for w in ws), len(ws), 1.0])
                ys.append(entry_ms(net))
        if dropped:
            log.warning("%d timed network(s) left out of the fit: median > %g x fastest call (preempted)", dropped,
                        PREEMPTED_RATIO)
        if len(rows) < 3:
            log.warning("only %d timed networks: latency = sum of kernel costs (no overhead fit)", len(rows))
            return self.fit_params
        A, y = np.array(rows), np.array(ys)
        res = lsq_linear(A / y[:, None], np.ones_like(y), bounds=([0.0, -np.inf, 0.0], [np.inf, np.inf, np.inf]))
        self.fit_params = {"scale": float(res.x[0]), "per_kernel_ms": float(res.x[1]), "per_call_ms": float(res.x[2]),
                           "networks": len(rows), "preempted_networks": dropped}
        return self.fit_params


class KernelLatencyModel:
    """Latency model of the Q-T score (`space_evolution.LatencyModel`) from our INT8 kernels.

    `part_ms(space, cfg)`: the cost of each part of `cfg`'s kernel list (cached per space and config);
    `predict(space, cfg)`: their sum, the cost of the whole of `structural_groups(space, cfg)` (tested
    against that list priced directly).
    """

    def __init__(self, costs: KernelCosts, target: str = "x86", num_threads: int = 1,
                 cache_dir: str | Path | None = None, save_every: int = 10) -> None:
        self.costs, self.target, self.num_threads = costs, target, int(num_threads)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.save_every = int(save_every)
        here = machine_keys(target, num_threads)
        self._list_key = {k: here[k] for k in _LIST_KEYS}
        self._shards: dict[str, dict[str, Any]] = {}
        self._dirty: dict[str, int] = {}
        self.dry_walks = 0  # kernel lists computed (not cached) by this instance

    # -- kernel lists per part ----------------------------------------------------------------------
    def _shard_path(self, sid: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / "kernels" / f"{sid}.json"

    def _shard(self, space) -> tuple[str, dict[str, Any]]:
        sid = _sha(space_key(space))
        if sid not in self._shards:
            doc = {"format": KERNELS_FORMAT, "key": self._list_key, "space": space.to_dict(), "workloads": [],
                   "configs": {}}
            path = self._shard_path(sid)
            if path is not None and path.is_file():
                old = json.loads(path.read_text())
                if old.get("format") == KERNELS_FORMAT and old.get("key") == self._list_key:
                    doc = old
                else:
                    diff = [k for k in _LIST_KEYS if (old.get("key") or {}).get(k) != self._list_key[k]]
                    log.warning("kernel lists %s were made for another %s: recomputed", path, diff or "format")
            doc["_index"] = {workload_key(w): i for i, w in enumerate(doc["workloads"])}
            self._shards[sid] = doc
        return sid, self._shards[sid]

    def part_workloads(self, space, cfg: SubnetConfig) -> dict[str, list[dict]]:
        """Part name -> the kernels of that part of `cfg`, in program order (cached)."""
        sid, doc = self._shard(space)
        ck = cfg.to_json()
        hit = doc["configs"].get(ck)
        if hit is None:
            groups = structural_groups(space, cfg, self.target, self.num_threads)
            if set(groups) != set(block_keys(space, cfg)):
                raise ConfigError("space", getattr(space, "name", space),
                                  "a space whose kernels group by stage and block (stages_i_blocks_j node names)")
            self.dry_walks += 1
            hit = {}
            for g in block_keys(space, cfg):
                idx = hit.setdefault(group_part(g), [])
                for w in groups[g]:
                    wk = workload_key(w)
                    if wk not in doc["_index"]:
                        doc["_index"][wk] = len(doc["workloads"])
                        doc["workloads"].append(w)
                    idx.append(doc["_index"][wk])
            doc["configs"][ck] = hit
            self._dirty[sid] = self._dirty.get(sid, 0) + 1
            if self._dirty[sid] >= self.save_every:
                self._save(sid)
        return {p: [doc["workloads"][i] for i in idx] for p, idx in hit.items()}

    def _save(self, sid: str) -> None:
        path = self._shard_path(sid)
        self._dirty[sid] = 0
        if path is None:
            return
        from qcompile.utils.io import atomic_write_text

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({k: v for k, v in self._shards[sid].items() if k != "_index"}))

    def flush(self) -> None:
        """Write every kernel-list shard with unsaved configs."""
        for sid, n in list(self._dirty.items()):
            if n:
                self._save(sid)

    def known_configs(self, space) -> list[SubnetConfig]:
        """The configs of `space` whose kernel lists are cached (priced without a dry walk)."""
        _, doc = self._shard(space)
        return [SubnetConfig.from_json(c) for c in doc["configs"]]

    # -- LatencyModel -------------------------------------------------------------------------------
    def part_ms(self, space, cfg: SubnetConfig) -> dict[str, float]:
        out = {p: self.costs.kernels_ms(ws) for p, ws in self.part_workloads(space, cfg).items()}
        out[FIXED] = out.get(FIXED, 0.0) + float(self.costs.fit_params["per_call_ms"])
        return out

    def predict(self, space, cfg: SubnetConfig) -> float:
        """End-to-end latency (ms) of `cfg`: the sum of its parts (kernel lists cached like the parts')."""
        return float(sum(self.part_ms(space, cfg).values()))

    def describe(self) -> str:
        f = self.costs.fit_params
        return (f"INT8 kernels timed on this host ({self.target}, {self.num_threads} thread(s); "
                f"{len(self.costs.kernels)} timed kernel workloads, random forest per kernel type for the rest; "
                f"latency = {f['scale']:.3f} x "
                f"sum(kernels) + {1e3 * f['per_kernel_ms']:.2f} us x n_kernels + {1e3 * f['per_call_ms']:.1f} us)")

    # -- building -----------------------------------------------------------------------------------
    @classmethod
    def build_or_load(cls, cache_dir: str | Path, hyper: Hyperspace, target: str = "x86", *, num_threads: int = 1,
                      settings: TimingSettings | None = None, progress: bool = False) -> KernelLatencyModel:
        """Time each block type's probe space once (`cache_dir/latency_<block>.json`, resumable per subnet),
        pool the kernels, fit the network model (`kernel_costs.json`, reused while the tables are unchanged)."""
        from qcompile.utils.io import atomic_write_text

        settings = settings or TimingSettings(num_threads=num_threads)
        if settings.num_threads != num_threads:
            raise ConfigError("num_threads", num_threads, f"{settings.num_threads} (TimingSettings.num_threads)")
        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        tables, shas = [], {}
        for block in hyper.blocks:
            space = hyper.probe_space(block, hyper.resolutions[-1:])
            path = cache / f"latency_{block}.json"
            old = LatencyTable.load(path) if path.is_file() else None
            want = len(covering_configs(space, settings.max_cover, settings.seed, settings.bits)) + settings.n_fit
            if old is None or len(old.networks) < want:
                log.info("timing our INT8 kernels of %s (%s): %d subnets", block, path, want)
                old = LatencyTable.build(space, target, settings.num_threads, table=old, max_cover=settings.max_cover,
                                         n_fit=settings.n_fit, bits=settings.bits, seed=settings.seed,
                                         progress=progress, path=path)
            tables.append(old)
            shas[block] = _sha(path.read_bytes())
        costs = KernelCosts.pool(tables)
        cpath = cache / "kernel_costs.json"
        doc = json.loads(cpath.read_text()) if cpath.is_file() else {}
        want_key = costs_key(shas, settings, target)
        if doc.get("format") == COSTS_FORMAT and doc.get("key") == want_key:
            costs.fit_params = doc["fit"]
        else:
            costs.fit(tables, target, settings.num_threads)
            atomic_write_text(cpath, json.dumps({"format": COSTS_FORMAT, "key": want_key, "fit": costs.fit_params},
                                                indent=1))
        log.info("kernel costs: %d timed kernels from %d tables, fit %s", len(costs.kernels), len(tables),
                 costs.fit_params)
        return cls(costs, target, settings.num_threads, cache)
