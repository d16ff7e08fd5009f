"""SpaceEvo: search the search space (SpaceEvo Sec. 3.2-3.3, Algorithm 1, Eq. 2).

- **Q-T score** (Eq. 2, the paper's, not the authors' code's variant): for latency constraints
  T1..Tn, `Q(A, T1..Tn) = sum_i Q(A, Ti)` with `Q(A, Ti) = E[Acc_int8(alpha)]` over the *top-tier*
  subnets alpha of space A with `LAT(alpha) < Ti`: we sample `n_samples` subnets of A (5k in the
  paper), keep those under Ti and average the accuracy proxy of the best `top_k` (20 in the paper).
  A constraint no sampled subnet meets contributes 0. Accuracy proxy: the inverse of the subnet's
  INT8 loss, the sum of its stages' NSR from the block-wise lookup table (Sec. 3.3: "we inverse the
  measured loss to approximate the quantized accuracy"). The scoring subnet keeps the stem and the
  residual-stem stage at their largest (they are not searched); Stage1-6 come from table entries
  whose width lies in the candidate's windows.
- **Latency**: `latency_model(target, kind)` is the one function to swap: "kernels" (default), our
  INT8 kernels timed on this host (`space_latency.KernelLatencyModel`), or "mac", `MacLatencyModel`, a
  MAC-count stand-in (say which one a result used: `model.describe()`). A model prices the parts of a
  subnet (`part_ms`: fixed, stage1..stageN, head), so a subnet's latency is precomputed per stage entry
  and input width, chaining the pairs of all stages into few priced subnets (`_block_latency`).
- **Aging evolution** (Algorithm 1) and a random-search baseline over spaces: bounded, deduplicated
  (an encoding is evaluated at most once per run), seeded, resumable (state JSON written atomically),
  and never stalls: a child that is already known is re-mutated at another stage, then replaced by an
  unseen random space, within `max_tries`.
"""

from __future__ import annotations

import json
import logging
import random
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from qcompile.config import SubnetConfig
from qcompile.errors import ConfigError
from qcompile.search.cost import layers
from qcompile.search.space_latency import FIXED, HEAD
from qcompile.spaces.hyperspace import CandidateSpace, Hyperspace
from qcompile.spaces.spaceevo import VNNI_BLOCKS

log = logging.getLogger(__name__)

STATE_FORMAT = "qcompile.spaceevo-state/1"
#: hyperspaces smaller than this are enumerated when random draws keep hitting known spaces
ENUMERATE_BELOW = 20_000


# --------------------------------------------------------------------------------------------------
# latency
# --------------------------------------------------------------------------------------------------




class LatencyModel(Protocol):
    def predict(self, space, cfg: SubnetConfig) -> float: ...

    def part_ms(self, space, cfg: SubnetConfig) -> dict[str, float]: ...

    def describe(self) -> str: ...


def layer_part(name: str) -> str:
    """The latency part of a layer of a SpaceEvo space (`qcompile.search.cost.layers` names)."""
    if name == "stem" or name.startswith("stages.0."):
        return FIXED
    if name.startswith("stages."):
        return f"stage{name.split('.')[1]}"
    return HEAD


@dataclass(frozen=True)
class MacLatencyModel:
    """Stand-in INT8 latency (ms) from MAC counts: dense conv, depthwise conv and linear throughputs plus
    a fixed cost per layer. Coefficients are rough figures for an AVX-512 VNNI core, not measurements
    of our kernels; depthwise is slower per MAC, as SpaceEvo Sec. 2 observes for INT8."""

    dense_gmacs: float = 20.0
    depthwise_gmacs: float = 2.0
    linear_gmacs: float = 5.0
    per_layer_ms: float = 0.004

    def layer_ms(self, layer) -> float:
        if layer.kind == "linear":
            rate = self.linear_gmacs
        elif layer.groups > 1 and layer.groups == layer.in_ch:
            rate = self.depthwise_gmacs
        else:
            rate = self.dense_gmacs
        return layer.macs / (rate * 1e6) + self.per_layer_ms

    def predict(self, space, cfg: SubnetConfig) -> float:
        return float(sum(self.layer_ms(layer) for layer in layers(space, cfg)))

    def part_ms(self, space, cfg: SubnetConfig) -> dict[str, float]:
        out: dict[str, float] = {}
        for layer in layers(space, cfg):
            part = layer_part(layer.name)
            out[part] = out.get(part, 0.0) + self.layer_ms(layer)
        return out

    def describe(self) -> str:
        return (f"MAC stand-in (dense {self.dense_gmacs} GMAC/s, depthwise {self.depthwise_gmacs}, "
                f"linear {self.linear_gmacs}, {self.per_layer_ms} ms/layer)")


LATENCY_KINDS = ("kernels", "mac")


def latency_model(target: str = "x86", kind: str = "kernels", *, cache_dir: str | Path | None = None,
                  hyper: Hyperspace | None = None, num_threads: int = 1, progress: bool = False,
                  timing=None) -> LatencyModel:
    """The latency predictor Q-T scores use (the one place to swap it).

    `kind="kernels"` (default): our INT8 kernels timed on this host (`space_latency.KernelLatencyModel`:
    every subnet priced by the fused kernels `qc.lower` emits for it, SpaceEvo Sec. 3.3 / nn-Meter), its
    timing tables and kernel lists cached in `cache_dir` (built once, resumable; minutes). `kind="mac"`:
    `MacLatencyModel`, the MAC-count stand-in (no timing). `timing`: `space_latency.TimingSettings`
    (subnets timed per block type).
    """
    if target not in ("x86", "arm_cpu"):
        raise ConfigError("target", target, ("x86", "arm_cpu"))
    if kind not in LATENCY_KINDS:
        raise ConfigError("latency", kind, LATENCY_KINDS)
    if kind == "mac":
        return MacLatencyModel()
    if cache_dir is None:
        raise ConfigError("latency cache_dir", None, "a directory for the kernel timing tables (kind='kernels')")
    from qcompile.search.space_latency import KernelLatencyModel
    from qcompile.spaces.hyperspace import digits_hyperspace

    return KernelLatencyModel.build_or_load(cache_dir, hyper or digits_hyperspace(), target,
                                            num_threads=num_threads, settings=timing, progress=progress)


# --------------------------------------------------------------------------------------------------
# Q-T score
# --------------------------------------------------------------------------------------------------


def subnet_config(space, hyper: Hyperspace, rows: Sequence[dict[str, Any]], int8: bool = True) -> SubnetConfig:
    """The SubnetConfig of `space` (a candidate or probe space of `hyper`) whose Stage1-6 are table `rows`;
    stem and residual-stem stage at their largest, inactive block slots at the smallest choice."""
    base = space.largest()
    widths = list(base.widths)
    depths = list(base.depths)
    kernels, expands = list(base.kernels), list(base.expands)
    for s, row in enumerate(rows, start=1):
        k = space.config_stages.index(s)
        widths[k + 1] = int(row["width"])
        depths[k] = int(row["depth"])
        for b in range(space.stages[s].max_depth):
            slot = space.block_slot(s, b)
            if b < row["depth"]:
                kernels[slot], expands[slot] = row["kernels"][b], row["expands"][b]
            else:
                kernels[slot], expands[slot] = min(space.stages[s].kernels), min(space.stages[s].expands)
    cfg = SubnetConfig(resolution=base.resolution, depths=tuple(depths), kernels=tuple(kernels),
                       expands=tuple(expands), widths=tuple(widths))
    return space.validate(cfg.with_policy(space.uniform_policy(8) if int8 else None))


@dataclass
class _StageData:
    rows: list[dict[str, Any]]
    nsr: np.ndarray
    widths: np.ndarray
    lat: np.ndarray  # [entry, previous-stage width index]


#: how a stage's latency is priced over its input widths: every one, or the smallest and largest with linear
#: interpolation between them (the first layer's cost grows about linearly with its input channels)
INPUT_WIDTHS = ("all", "ends")


class QTScorer:
    """Q-T score (SpaceEvo Eq. 2) of candidate spaces from a lookup table and a latency model; memoised.

    `input_widths="ends"` prices each stage entry at its smallest and largest input width only and
    interpolates linearly in between: 2 instead of up to 8 priced input widths per entry, for latency
    models that cost a dry lowering per priced subnet (`KernelLatencyModel`); "all" (default) is exact.
    """

    def __init__(
        self,
        table,
        constraints: Sequence[float],
        latency: LatencyModel | None = None,
        *,
        n_samples: int = 1000,
        top_k: int = 20,
        seed: int = 0,
        input_widths: str = "all",
    ) -> None:
        cons = tuple(float(t) for t in constraints)
        if input_widths not in INPUT_WIDTHS:
            raise ConfigError("input_widths", input_widths, INPUT_WIDTHS)
        self.input_widths = input_widths
        if not cons or any(not np.isfinite(t) or t <= 0 for t in cons):
            raise ConfigError("constraints", constraints, "one or more positive latencies in ms")
        if n_samples < 1 or top_k < 1:
            raise ConfigError("n_samples/top_k", (n_samples, top_k), "integers >= 1")
        self.table, self.constraints = table, cons
        self.hyper: Hyperspace = table.hyper
        self.latency: LatencyModel = latency if latency is not None else MacLatencyModel()
        self.n_samples, self.top_k, self.seed = int(n_samples), int(top_k), int(seed)
        self._stage: dict[tuple[int, str], _StageData] = {}
        self._probes: dict[str, Any] = {}
        self._cache: dict[str, float] = {}
        # stem + residual-stem stage, per Stage1 block type (priced with that block's probe subnets)
        self._fixed_ms: dict[str, float] = {}
        # the head's kernels depend on the last stage's block type, entry and input width: with input width ==
        # output width its first block keeps a residual add, whose output rescale the emitter groups with the head.
        # Memoised per (block type, last-stage entry, input-width index) from the subnets that price that pair
        self._head_ms: dict[tuple[str, int, int], float] = {}

    def settings(self) -> dict[str, Any]:
        return {"constraints": list(self.constraints), "n_samples": self.n_samples, "top_k": self.top_k,
                "seed": self.seed, "latency": self.latency.describe(), "input_widths": self.input_widths,
                "table": self.table.key}

    # -- precomputation ----------------------------------------------------------------------------
    def _probe(self, block: str):
        if block not in self._probes:
            self._probes[block] = self.hyper.probe_space(block, self.hyper.resolutions[-1:])
        return self._probes[block]

    def _prev_widths(self, s: int) -> tuple[int, ...]:
        return (max(self.hyper.first_widths),) if s == 1 else self.hyper.stages[s - 2].widths

    def _rows(self, s: int, block: str) -> list[dict[str, Any]]:
        rows = self.table.entries[s][block] if s in self.table.entries and block in self.table.entries[s] else []
        if not rows:
            raise ConfigError("lookup table", f"Stage{s} {block}", "a table with entries for every stage and block")
        return rows

    def _stage_data(self, s: int, block: str) -> _StageData:
        if (s, block) not in self._stage:
            self._block_latency(block)
        return self._stage[(s, block)]

    def _block_latency(self, block: str) -> None:
        """Latency of every (Stage s entry, input width) of `block`, for all stages at once.

        A stage's latency depends only on its own entry and its input width (the previous stage's
        width), so one subnet prices one pair per stage: subnets are chained greedily so that each
        stage takes a pair not yet priced, its width chosen to feed a width the next stage still needs.
        This keeps the number of priced subnets near the largest stage's (entries x input widths),
        which matters for latency models that cost a dry lowering per subnet (`KernelLatencyModel`).
        """
        n = self.hyper.n_stages
        rows = {s: self._rows(s, block) for s in range(1, n + 1)}
        prev = {s: self._prev_widths(s) for s in range(1, n + 1)}
        lat = {s: np.full((len(rows[s]), len(prev[s])), np.nan) for s in rows}
        pending = {s: {(i, j) for i in range(len(rows[s])) for j in self._priced_cols(s, rows[s][i])} for s in rows}
        space = self._probe(block)
        self._harvest(space, block, rows, prev, pending, lat)
        while any(pending.values()):
            chain, priced, c_in = [], [], prev[1][0]
            for s in range(1, n + 1):
                j = prev[s].index(c_in)
                need: dict[int, int] = {}
                if s < n:
                    for _, jj in pending[s + 1]:
                        need[prev[s + 1][jj]] = need.get(prev[s + 1][jj], 0) + 1
                todo = sorted(i for i, jj in pending[s] if jj == j)
                if todo:
                    i = max(todo, key=lambda i: (need.get(int(rows[s][i]["width"]), 0), -i))
                    chain.append(rows[s][i])
                    priced.append((s, i, j))
                else:  # feeder: the stage at its largest, at the width the next stage needs most
                    w = max(self.hyper.stages[s - 1].widths, key=lambda w: (need.get(w, 0), -w))
                    chain.append(dict(self._largest_row(s, block), width=w))
                c_in = int(chain[-1]["width"])
            cfg = subnet_config(space, self.hyper, chain)
            parts = self.latency.part_ms(space, cfg)
            self._record(block, parts, priced, lat, pending, n)
        for s in rows:
            if self.input_widths == "ends" and len(prev[s]) > 2:
                w = np.asarray(prev[s], dtype=np.float64)
                t = (w - w[0]) / (w[-1] - w[0])
                interp = lat[s][:, :1] + (lat[s][:, -1:] - lat[s][:, :1]) * t[None, :]
                lat[s] = np.where(np.isnan(lat[s]), interp, lat[s])  # priced pairs keep their exact price
            self._stage[(s, block)] = _StageData(rows[s], np.array([r["nsr"] for r in rows[s]], dtype=np.float64),
                                                 np.array([r["width"] for r in rows[s]]), lat[s])
        if self.input_widths == "ends":
            # an unpriced input width differs from the entry's width (those are priced): no residual, so the head
            # is the one after a priced input width that also differs (one of the two ends does)
            for i, r in enumerate(rows[n]):
                for j in range(len(prev[n])):
                    if (block, i, j) not in self._head_ms:
                        other = next(k for k in (0, len(prev[n]) - 1) if prev[n][k] != int(r["width"]))
                        self._head_ms[(block, i, j)] = self._head_ms[(block, i, other)]

    def _priced_cols(self, s: int, row: dict[str, Any]) -> list[int]:
        """Input-width indices at which a Stage s entry is priced: all, or ("ends") the smallest and largest plus,
        in a stride-1 stage, the entry's own width (input == output width: the first block keeps a residual add,
        a step that interpolation would miss)."""
        prev = self._prev_widths(s)
        if self.input_widths == "all":
            return list(range(len(prev)))
        own = {j for j, c in enumerate(prev) if c == int(row["width"]) and self.hyper.stages[s - 1].stride == 1}
        return sorted({0, len(prev) - 1} | own)

    def _record(self, block: str, parts: dict[str, float], priced, lat, pending, n: int) -> None:
        """Store the parts of one priced subnet: its (stage, entry, input width) pairs, the head after its last
        stage's pair, the fixed part for its Stage1 block type (the same in every subnet: checked)."""
        for s, i, j in priced:
            lat[s][i, j] = parts.get(f"stage{s}", 0.0)
            pending[s].discard((i, j))
            if s == n:
                self._head_ms[(block, i, j)] = float(parts.get(HEAD, 0.0))
        fixed = float(parts.get(FIXED, 0.0))
        old = self._fixed_ms.setdefault(block, fixed)
        if abs(old - fixed) > 1e-9 * max(abs(old), 1e-12):
            raise ConfigError("latency model", f"fixed part {fixed} ms != {old} ms for Stage1 {block}",
                              "a stem + residual-stem price that does not depend on Stage1-6")

    def _harvest(self, space, block: str, rows, prev, pending, lat) -> None:
        """Price pending pairs from subnets the latency model has already priced (`known_configs`, e.g. a cache
        filled by an earlier run with other settings): a stage whose entry and input width match a pending pair."""
        known = getattr(self.latency, "known_configs", None)
        if known is None:
            return

        def key(r) -> tuple:
            return (int(r["width"]), int(r["depth"]), tuple(int(k) for k in r["kernels"][: r["depth"]]),
                    tuple(float(e) for e in r["expands"][: r["depth"]]))

        index = {s: {key(r): i for i, r in enumerate(rows[s])} for s in rows}
        for cfg in known(space):
            priced = []
            for s in rows:
                k = space.config_stages.index(s)
                d = int(cfg.depths[k])
                slots = [space.block_slot(s, b) for b in range(d)]
                i = index[s].get(key({"width": cfg.widths[k + 1], "depth": d,
                                      "kernels": [cfg.kernels[x] for x in slots],
                                      "expands": [cfg.expands[x] for x in slots]}))
                c_in = int(cfg.widths[k])
                if i is not None and c_in in prev[s] and (i, prev[s].index(c_in)) in pending[s]:
                    priced.append((s, i, prev[s].index(c_in)))
            if priced:
                self._record(block, self.latency.part_ms(space, cfg), priced, lat, pending, len(rows))

    def _largest_row(self, s: int, block: str) -> dict[str, Any]:
        st = self.hyper.stages[s - 1]
        d = max(st.depths)
        return {"width": max(st.widths), "depth": d, "kernels": [max(self.hyper.kernels)] * d,
                "expands": [max(VNNI_BLOCKS[block][0])] * d}

    def _fixed(self, block: str) -> float:
        """Stem + residual-stem stage (at their largest) latency before a Stage1 of type `block`, with the
        model's per-call cost."""
        if block not in self._fixed_ms:
            self._block_latency(block)
        return self._fixed_ms[block]

    def _head(self, block: str, entry: int, col: int) -> float:
        """Head latency after a last stage of type `block` at table entry `entry` and input width index `col`
        (priced with that stage)."""
        if (block, entry, col) not in self._head_ms:
            self._block_latency(block)
        return self._head_ms[(block, entry, col)]

    # -- scoring -----------------------------------------------------------------------------------
    def sample(self, cand: CandidateSpace) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """`n_samples` subnets of `cand`: per-stage entry indices (into the window's rows), loss, latency (ms)."""
        if cand.hyper != self.hyper:
            raise ConfigError("candidate hyperspace", cand.hyper.name, f"{self.hyper.name} (the table's)")
        rng = np.random.default_rng([self.seed, zlib.crc32(cand.encoding.encode())])
        loss = np.zeros(self.n_samples)
        lat = np.full(self.n_samples, self._fixed(cand.block_names[0]))
        picks, prev_w = [], None
        for s in range(1, self.hyper.n_stages + 1):
            sd = self._stage_data(s, cand.block_names[s - 1])
            ok = np.flatnonzero(np.isin(sd.widths, cand.stage_widths(s - 1)))
            if ok.size == 0:
                raise ConfigError(f"lookup table Stage{s} {cand.block_names[s - 1]}", cand.stage_widths(s - 1),
                                  "widths the table sampled")
            idx = ok[rng.integers(ok.size, size=self.n_samples)]
            picks.append(idx)
            loss += sd.nsr[idx]
            if s == 1:
                col = np.zeros(self.n_samples, dtype=int)
            else:
                col = np.searchsorted(np.array(self._prev_widths(s)), prev_w)
            lat += sd.lat[idx, col]
            prev_w = sd.widths[idx]
        last, n = cand.block_names[-1], self.hyper.n_stages
        heads = np.array([[self._head(last, i, j) for j in range(len(self._prev_widths(n)))]
                          for i in range(len(self._stage_data(n, last).rows))])
        lat += heads[picks[-1], col]
        return picks, loss, lat

    def rows(self, cand: CandidateSpace, picks: list[np.ndarray], i: int) -> list[dict[str, Any]]:
        return [self._stage_data(s, cand.block_names[s - 1]).rows[int(picks[s - 1][i])]
                for s in range(1, self.hyper.n_stages + 1)]

    def per_constraint(self, cand: CandidateSpace) -> list[float]:
        """Q(A, Ti) for each constraint (Eq. 2)."""
        _, loss, lat = self.sample(cand)
        acc = 1.0 / loss
        out = []
        for t in self.constraints:
            a = np.sort(acc[lat < t])[::-1][: self.top_k]
            out.append(float(a.mean()) if a.size else 0.0)
        return out

    def score(self, cand: CandidateSpace) -> float:
        """Q(A, T1..Tn) = sum_i Q(A, Ti) (Eq. 2); memoised per encoding."""
        enc = cand.encoding
        if enc not in self._cache:
            self._cache[enc] = float(sum(self.per_constraint(cand)))
        return self._cache[enc]


# --------------------------------------------------------------------------------------------------
# search over spaces
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvolutionSettings:
    """Algorithm 1 sizes: N spaces in total, population P, sample S (paper: 5000, 500, 125)."""

    n_spaces: int = 500
    population: int = 50
    sample: int = 12
    seed: int = 0
    max_tries: int = 50

    def __post_init__(self) -> None:
        if self.n_spaces < 1:
            raise ConfigError("n_spaces", self.n_spaces, ">= 1")
        if not 1 <= self.population <= self.n_spaces:
            raise ConfigError("population", self.population, f"1..n_spaces ({self.n_spaces})")
        if not 1 <= self.sample <= self.population:
            raise ConfigError("sample", self.sample, f"1..population ({self.population})")
        if self.max_tries < 1:
            raise ConfigError("max_tries", self.max_tries, ">= 1")


@dataclass
class SpaceSearchResult:
    """Every evaluated space in order: encoding, Q-T score, origin (init/block/width/random/fill)."""

    method: str
    history: list[dict[str, Any]] = field(default_factory=list)
    exhausted: bool = False

    @property
    def scores(self) -> np.ndarray:
        return np.array([h["score"] for h in self.history], dtype=np.float64)

    @property
    def best_so_far(self) -> np.ndarray:
        return np.maximum.accumulate(self.scores) if self.history else np.zeros(0)

    @property
    def best(self) -> dict[str, Any]:
        if not self.history:
            raise ConfigError("history", "empty", "at least one evaluated space")
        return max(self.history, key=lambda h: (h["score"], -h["i"]))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "exhausted": self.exhausted, "history": self.history}


def _jsonable_state(st: tuple) -> list:
    return [st[0], list(st[1]), st[2]]


def _restore_state(st: list) -> tuple:
    return (st[0], tuple(st[1]), st[2])


class _Run:
    def __init__(self, scorer: QTScorer, method: str, n_spaces: int, seed: int, max_tries: int) -> None:
        self.scorer, self.n, self.max_tries = scorer, n_spaces, max_tries
        self.rng = random.Random(seed)
        self.result = SpaceSearchResult(method)
        self.seen: set[str] = set()

    def done(self) -> bool:
        return len(self.result.history) >= self.n or self.result.exhausted

    def add(self, cand: CandidateSpace, origin: str, cycle: int) -> dict[str, Any]:
        assert cand.encoding not in self.seen
        self.seen.add(cand.encoding)
        h = {"i": len(self.result.history), "encoding": cand.encoding, "score": self.scorer.score(cand),
             "origin": origin, "cycle": cycle}
        self.result.history.append(h)
        return h

    def random_unseen(self) -> CandidateSpace | None:
        """A random space not evaluated yet: `max_tries` draws, then (small hyperspaces) an enumeration."""
        h = self.scorer.hyper
        for _ in range(self.max_tries):
            c = h.random(self.rng)
            if c.encoding not in self.seen:
                return c
        if h.size() > ENUMERATE_BELOW:
            return None
        import itertools

        per_stage = [[(b, w) for b in range(len(h.blocks)) for w in range(st.n_windows)] for st in h.stages]
        unseen = []
        for combo in itertools.product(*per_stage):
            c = CandidateSpace(h, tuple(b for b, _ in combo), tuple(w for _, w in combo))
            if c.encoding not in self.seen:
                unseen.append(c)
        return self.rng.choice(unseen) if unseen else None


def random_search_spaces(scorer: QTScorer, n_spaces: int, seed: int = 0, max_tries: int = 50) -> SpaceSearchResult:
    """Baseline: `n_spaces` distinct random spaces of the hyperspace (bounded tries)."""
    run = _Run(scorer, "random", n_spaces, seed, max_tries)
    while not run.done():
        c = run.random_unseen()
        if c is None:
            run.result.exhausted = True
            break
        run.add(c, "random", len(run.result.history))
    return run.result


def aging_evolution(
    scorer: QTScorer,
    settings: EvolutionSettings,
    *,
    state_path: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: int = 50,
    stop_after_cycles: int | None = None,
    progress: bool = False,
) -> SpaceSearchResult:
    """Algorithm 1: random population of P; each cycle the best of S random members is the parent, child 1
    mutates its block type and child 2 its width window at one random stage; both join, the oldest two leave.

    Stops after `settings.n_spaces` distinct evaluated spaces (hard cap). With `state_path` the run's
    state is written atomically every `checkpoint_every` cycles and at the end; `resume` continues it
    (the state's key must match). `stop_after_cycles` ends early after that many cycles (tests, budgets).
    """
    from tqdm import tqdm

    h = scorer.hyper
    run = _Run(scorer, "evolution", settings.n_spaces, settings.seed, settings.max_tries)
    key = {"settings": asdict(settings), "scorer": scorer.settings()}
    population: list[str] = []
    cycle = 0
    if resume:
        if state_path is None or not Path(state_path).is_file():
            raise ConfigError("resume", state_path, "an existing evolution state file")
        st = json.loads(Path(state_path).read_text())
        if st.get("format") != STATE_FORMAT:
            raise ConfigError(f"{state_path} format", st.get("format"), STATE_FORMAT)
        from qcompile.train.blockwise import check_key

        check_key(st["key"], json.loads(json.dumps(key)), str(state_path))
        run.rng.setstate(_restore_state(st["rng"]))
        run.result.history = st["history"]
        run.result.exhausted = st.get("exhausted", False)
        run.seen = {x["encoding"] for x in run.result.history}
        for x in run.result.history:  # the memo: scores are deterministic, but this avoids recomputing
            scorer._cache.setdefault(x["encoding"], x["score"])
        population, cycle = st["population"], st["cycle"]

    def save() -> None:
        if state_path is None:
            return
        from qcompile.utils.io import atomic_write_text

        doc = {"format": STATE_FORMAT, "key": key, "rng": _jsonable_state(run.rng.getstate()),
               "population": population, "cycle": cycle, "history": run.result.history,
               "exhausted": run.result.exhausted}
        atomic_write_text(state_path, json.dumps(doc))

    bar = tqdm(total=settings.n_spaces, initial=len(run.result.history), desc="aging evolution", unit="space",
               disable=not progress)
    # line 1: initial population (distinct random spaces)
    while len(population) < settings.population and not run.done():
        c = run.random_unseen()
        if c is None:
            run.result.exhausted = True
            break
        population.append(run.add(c, "init", 0)["encoding"])
        bar.update(1)
    score_of = {x["encoding"]: x["score"] for x in run.result.history}
    cycles_here = 0
    while not run.done():
        if stop_after_cycles is not None and cycles_here >= stop_after_cycles:
            break
        cycle += 1
        cycles_here += 1
        # line 3: parent = best of S random members
        parent = h.from_encoding(max(run.rng.sample(population, settings.sample), key=lambda e: score_of[e]))
        stage = run.rng.randrange(h.n_stages)
        for kind in ("block", "width"):  # lines 4-7
            if run.done():
                break
            child = _fresh_child(run, parent, kind, stage)
            origin = kind
            if child is None:
                child, origin = run.random_unseen(), "fill"
            if child is None:
                run.result.exhausted = True
                break
            rec = run.add(child, origin, cycle)
            score_of[rec["encoding"]] = rec["score"]
            population.append(rec["encoding"])
            bar.update(1)
        # line 8: the oldest leave (as many as joined, so the population keeps size P)
        del population[: max(0, len(population) - settings.population)]
        if cycle % checkpoint_every == 0:
            save()
    bar.close()
    save()
    if run.result.exhausted:
        log.warning("aging evolution: no unseen space found in %d tries; stopped at %d spaces",
                    settings.max_tries, len(run.result.history))
    return run.result


def _fresh_child(run: _Run, parent: CandidateSpace, kind: str, stage: int) -> CandidateSpace | None:
    """Mutate `parent` (block type or width window) at `stage`; if the child is known, at other random stages."""
    n = parent.hyper.n_stages
    for t in range(run.max_tries):
        s = stage if t == 0 else run.rng.randrange(n)
        child = parent.mutate_block(run.rng, s) if kind == "block" else parent.mutate_width(run.rng, s)
        if child is not None and child.encoding not in run.seen:
            return child
    return None


# --------------------------------------------------------------------------------------------------
# public entry
# --------------------------------------------------------------------------------------------------


def evolve_space(
    constraints: Sequence[float] = (0.2, 0.3, 0.5),
    *,
    table=None,
    table_path: str | Path | None = None,
    hyper: Hyperspace | None = None,
    data: str = "digits",
    target: str = "x86",
    n_spaces: int = 500,
    population: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    cycles: int | None = None,
    latency: LatencyModel | None = None,
    latency_kind: str = "kernels",
    latency_dir: str | Path | None = None,
    n_samples: int = 1000,
    top_k: int = 20,
    bkd_settings=None,
    state_path: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
):
    """Search the hyperspace for the space with the highest Q-T score (SpaceEvo Algorithm 1, Eq. 2).

    `table`: a `LookupTable`; else `table_path` is reused or built by block-wise distillation on `data`
    (`qcompile.train.blockwise.build_or_load_table`; minutes). Population and sample default to the
    paper's ratios (P = N/10, S = P/4); with `cycles` (as the CLI), P defaults to max(4, cycles/4) and
    N = P + 2 cycles. Latency: `latency`, else `latency_model(target, latency_kind)` with its kernel timing
    cache in `latency_dir` (default: `latency/` next to `table_path`). Returns the best space (a `StagedSpace`,
    `.to_json()`), with `.candidate` (its `CandidateSpace`), `.qt_score` and `.history` (the
    `SpaceSearchResult`) attached.
    """
    from qcompile.spaces.hyperspace import digits_hyperspace

    if table is None:
        from qcompile.train.blockwise import build_or_load_table

        if table_path is None:
            raise ConfigError("table", None, "a LookupTable or table_path (built there once, then reused)")
        table = build_or_load_table(table_path, hyper or digits_hyperspace(), data, seed=0,
                                    settings=bkd_settings, progress=progress)
    elif hyper is not None and hyper != table.hyper:
        raise ConfigError("hyper", hyper.name, f"{table.hyper.name} (the table's hyperspace)")
    if cycles is not None:
        if cycles < 1:
            raise ConfigError("cycles", cycles, ">= 1")
        pop = population or max(4, cycles // 4)
        n_spaces = pop + 2 * cycles
    if table.hyper.size() < n_spaces:
        raise ConfigError("n_spaces", n_spaces, f"<= {table.hyper.size()} (spaces in the hyperspace)")
    if latency is None:
        if latency_dir is None and latency_kind == "kernels":
            if table_path is None:
                raise ConfigError("latency_dir", None, "a directory for kernel timings (or latency_kind='mac')")
            latency_dir = Path(table_path).parent / "latency"
        latency = latency_model(target, latency_kind, cache_dir=latency_dir, hyper=table.hyper, progress=progress)
    scorer = QTScorer(table, constraints, latency, n_samples=n_samples, top_k=top_k)
    pop = population or max(2, n_spaces // 10)
    settings = EvolutionSettings(n_spaces=n_spaces, population=pop, sample=sample or max(1, pop // 4), seed=seed)
    result = aging_evolution(scorer, settings, state_path=state_path, resume=resume, progress=progress)
    best = result.best
    cand = scorer.hyper.from_encoding(best["encoding"])
    space = cand.build()
    space.candidate, space.qt_score, space.history = cand, best["score"], result
    space.scorer = scorer
    return space


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    import platform

    return platform.processor() or "unknown CPU"


def plot_best_scores(results: dict[str, Sequence[SpaceSearchResult]], path: str | Path, title: str = "") -> Path:
    """PNG of best Q-T score against evaluated spaces (mean and range over seeds) per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, runs in results.items():
        n = min(len(r.history) for r in runs)
        curves = np.stack([r.best_so_far[:n] for r in runs])
        x = np.arange(1, n + 1)
        ax.plot(x, curves.mean(0), label=f"{method} (mean of {len(runs)} seeds)")
        if len(runs) > 1:
            ax.fill_between(x, curves.min(0), curves.max(0), alpha=0.2)
    ax.set_xlabel("evaluated spaces")
    ax.set_ylabel("best Q-T score (Eq. 2)")
    ax.set_title(title or "SpaceEvo: aging evolution vs random search", fontsize=9)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, f"{cpu_name()}, 2 cores shared with other jobs", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    from qcompile.utils.io import atomic_write

    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return Path(path)


__all__ = [
    "LatencyModel",
    "MacLatencyModel",
    "latency_model",
    "QTScorer",
    "subnet_config",
    "EvolutionSettings",
    "SpaceSearchResult",
    "aging_evolution",
    "random_search_spaces",
    "evolve_space",
    "plot_best_scores",
    "cpu_name",
]
