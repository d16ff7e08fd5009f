"""What every search algorithm shares: the integer genome over a space, argument checks, the evaluator.

The search sees only the space's encoding (`choice_counts(space)`, `encode(one_hot=False)`,
`decode`) and the objectives, never hard-coded offsets (ARCHITECTURE.md, lessons from the anchors).
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import sys
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np

from qcompile.config import SubnetConfig
from qcompile.errors import ConfigError
from qcompile.search.encoding import choice_counts, decode, encode
from qcompile.search.objectives import Objective, check_objectives
from qcompile.search.result import ConstraintInfo, ObjectiveInfo, SearchResult

log = logging.getLogger("qcompile.search")

ARCH_FIELDS = ("resolution", "widths", "depths", "kernels", "expands", "channels")
SKELETON_FIELDS = ("resolution", "widths", "depths")  # OQA's "skeleton" (coarse stage)


class Genome:
    """Integer genome of `space` with bits restricted to `bits`.

    Gene i of the architecture part indexes `space.genes()[i].choices`; each of the 2 x layer-slot
    bit genes indexes `bits` (not `space.bit_choices`), so any operator that stays within the
    bounds `[0, upper]` respects `bits`. `bits=None` searches float subnets (no bit genes).
    Decoding goes through `qcompile.search.encoding.decode`, so configs are canonical and so are re-encoded genomes.
    """

    def __init__(self, space, bits: Sequence[int] | None) -> None:
        if not hasattr(space, "genes") or not hasattr(space, "bit_choices"):
            raise ConfigError("space", type(space).__name__, "a search space (qc.spaces.*)")
        self.space = space
        self.bits = None if bits is None else space._check_bits("bits", bits)
        genes = space.genes()
        self.fields = [g.field for g in genes]
        self.n_arch = len(genes)
        counts = choice_counts(space)[: self.n_arch]
        self.n_bit_genes = 0 if self.bits is None else 2 * space.num_layer_slots
        nb = 0 if self.bits is None else len(self.bits)
        self.upper = np.array(counts + [nb] * self.n_bit_genes, dtype=np.int64) - 1
        self._bit_index = None if self.bits is None else np.array([space.bit_choices.index(b) for b in self.bits])

    @property
    def n_var(self) -> int:
        return int(self.upper.shape[0])

    def decode(self, x: Sequence[int]) -> SubnetConfig:
        x = np.asarray(x, dtype=np.int64)
        if x.shape != (self.n_var,) or np.any(x < 0) or np.any(x > self.upper):
            raise ConfigError("genome", x.tolist(), f"{self.n_var} integers within 0..{self.upper.tolist()}")
        if self.bits is None:
            full = np.concatenate([x, np.zeros(2 * self.space.num_layer_slots, dtype=np.int64)])
            return self.space.canonical(decode(self.space, full).with_policy(None))
        full = np.concatenate([x[: self.n_arch], self._bit_index[x[self.n_arch :]]])
        return decode(self.space, full)

    def encode(self, cfg: SubnetConfig) -> np.ndarray:
        idx = encode(self.space, cfg, one_hot=False).astype(np.int64)
        arch = idx[: self.n_arch]
        if self.bits is None:
            return arch
        if cfg.policy is None:
            raise ConfigError("config.policy", None, f"a bit policy within bits {self.bits}")
        pos = {int(b): k for k, b in enumerate(self._bit_index)}
        try:
            bits = np.array([pos[int(i)] for i in idx[self.n_arch :]], dtype=np.int64)
        except KeyError as e:
            raise ConfigError("config.policy", self.space.bit_choices[int(e.args[0])], self.bits) from e
        return np.concatenate([arch, bits])

    def canonical_x(self, x: Sequence[int]) -> np.ndarray:
        return self.encode(self.decode(x))

    def random(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(0, self.upper + 1, size=(n, self.n_var))

    def mutate(
        self, x: np.ndarray, rng: np.random.Generator, prob: float, genes: np.ndarray | None = None
    ) -> np.ndarray:
        """Resample each gene (of `genes`, default all) with probability `prob` to another of its choices."""
        y = np.array(x, dtype=np.int64)
        mask = rng.random(self.n_var) < prob
        if genes is not None:
            mask &= genes
        mask &= self.upper > 0
        for i in np.flatnonzero(mask):
            v = int(rng.integers(0, self.upper[i]))  # one of the other choices
            y[i] = v if v < y[i] else v + 1
        return y

    def crossover(self, a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Uniform crossover: each gene from either parent (APQ Sec. 3.3)."""
        return np.where(rng.random(self.n_var) < 0.5, a, b)

    def gene_mask(self, fields: Sequence[str], bits: bool) -> np.ndarray:
        m = np.array([f in fields for f in self.fields] + [bits] * self.n_bit_genes, dtype=bool)
        return m


def check_common(space, objectives, n_evals: int, seed: int, bits) -> tuple[list[Objective], Genome]:
    objectives = check_objectives(objectives)
    if isinstance(n_evals, bool) or not isinstance(n_evals, (int, np.integer)) or n_evals < 1:
        raise ConfigError("n_evals", n_evals, "an integer >= 1 (a hard cap on objective evaluations)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError("seed", seed, "an integer")
    if bits is not None and not isinstance(bits, (int, Sequence)) or isinstance(bits, (str, bytes)):
        raise ConfigError("bits", bits, "a tuple of bit-widths such as (2, 3, 4), or None for float subnets")
    return objectives, Genome(space, bits)


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    """Base of every algorithm's frozen options: field checks by kind and unknown names rejected.

    Subclasses list their fields in `INTS` (integers >= 1, None allowed where the default is None),
    `PROBS` (probabilities in [0, 1]) and `FRACTIONS` (in (0, 1]); `check()` adds cross-field rules.
    """

    ALGORITHM: ClassVar[str] = "search"
    INTS: ClassVar[tuple[str, ...]] = ()
    PROBS: ClassVar[tuple[str, ...]] = ()
    FRACTIONS: ClassVar[tuple[str, ...]] = ()

    def check(self) -> None:
        for name in self.INTS:
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
                raise ConfigError(name, v, "an integer >= 1")
        for name in self.PROBS:
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0):
                raise ConfigError(name, v, "a probability in [0, 1]")
        for name in self.FRACTIONS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v <= 1.0:
                raise ConfigError(name, v, "a fraction in (0, 1]")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> SearchOptions:
        """The options of `**options`, checked; an unknown name raises `ConfigError` listing the known ones."""
        fields = sorted(f.name for f in dataclasses.fields(cls))
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise ConfigError(f"{cls.ALGORITHM} option {unknown[0]!r}", options[unknown[0]], fields)
        opts = cls(**options)
        opts.check()
        return opts


class SearchSetup(NamedTuple):
    """What `setup_search` checked and built: objectives, genome, constraints, evaluator, feasible extremes."""

    objectives: list[Objective]
    genome: Genome
    constraints: list[tuple[Objective, float]]
    ev: Evaluator
    feasible_extremes: list[SubnetConfig]


def setup_search(space, objectives, n_evals: int, seed: int, bits, constraints, progress: bool,
                 desc: str) -> SearchSetup:
    """The argument checks and set-up every algorithm shares, in one order (so errors are the same):
    objectives / n_evals / seed / bits, constraints, then the reachability of the constraints."""
    objectives, genome = check_common(space, objectives, n_evals, seed, bits)
    cons = check_constraints(constraints)
    ev = Evaluator(objectives, cons, n_evals, progress, desc=desc)
    return SearchSetup(objectives, genome, cons, ev, check_reachable(space, genome, ev))


def genome_options(genome: Genome, opts: Any = None, **extra: Any) -> dict[str, Any]:
    """`options` of a `SearchResult`: the allowed bits, the algorithm's options and `extra` counters."""
    fields = dataclasses.asdict(opts) if opts is not None else {}
    return {"bits": None if genome.bits is None else list(genome.bits), **fields, **extra}


def check_constraints(constraints) -> list[tuple[Objective, float]]:
    """`[(Objective, limit), ...]`: "min" objectives must be <= limit, "max" ones >= limit."""
    if constraints is None:
        return []
    if isinstance(constraints, (str, bytes)) or not isinstance(constraints, Sequence):
        raise ConfigError("constraints", type(constraints).__name__, "a list of (Objective, limit) pairs")
    out = []
    for c in constraints:
        if not isinstance(c, (tuple, list)) or len(c) != 2 or not isinstance(c[0], Objective):
            raise ConfigError("constraints", c, "(Objective, limit) pairs")
        limit = c[1]
        if isinstance(limit, bool) or not isinstance(limit, (int, float, np.number)) or not np.isfinite(limit):
            raise ConfigError(f"constraints[{c[0].name}].limit", limit, "a finite number in the objective's unit")
        out.append((c[0], float(limit)))
    names = [o.name for o, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError("constraints", names, "at most one limit per objective")
    return out


def _command() -> str:
    return " ".join(shlex.quote(a) for a in sys.argv)


class Evaluator:
    """Evaluates configs once each (cached by canonical config) under a hard cap of `n_evals`.

    Constraint values are computed (and cached) separately, so candidates can be screened before
    they cost an evaluation of the objectives.
    """

    def __init__(
        self,
        objectives: list[Objective],
        constraints: list[tuple[Objective, float]],
        n_evals: int,
        progress: bool = False,
        desc: str = "search",
    ) -> None:
        self.objectives, self.constraints, self.n_evals = objectives, constraints, int(n_evals)
        self.index: dict[SubnetConfig, int] = {}
        self.configs: list[SubnetConfig] = []
        self.F: list[np.ndarray] = []
        self.G: list[np.ndarray] = []
        self.gen: list[int] = []
        self.generation = 0
        self._gcache: dict[SubnetConfig, np.ndarray] = {}
        self.constraint_checks = 0
        self._bar = None
        self._progress, self._desc = progress, desc

    @property
    def remaining(self) -> int:
        return self.n_evals - len(self.configs)

    def constraint_values(self, cfgs: Sequence[SubnetConfig]) -> np.ndarray:
        """len(cfgs) x n_constraints values (cached)."""
        new = [c for c in dict.fromkeys(cfgs) if c not in self._gcache]
        if new and self.constraints:
            cols = [obj(new) for obj, _ in self.constraints]
            self.constraint_checks += len(new)
            for k, c in enumerate(new):
                self._gcache[c] = np.array([col[k] for col in cols])
        elif new:
            for c in new:
                self._gcache[c] = np.zeros(0)
        return np.array([self._gcache[c] for c in cfgs]).reshape(len(cfgs), len(self.constraints))

    def feasible(self, cfgs: Sequence[SubnetConfig]) -> np.ndarray:
        G = self.constraint_values(cfgs)
        ok = np.ones(len(cfgs), dtype=bool)
        for j, (obj, limit) in enumerate(self.constraints):
            ok &= G[:, j] <= limit if obj.direction == "min" else G[:, j] >= limit
        return ok

    def evaluate(self, cfgs: Sequence[SubnetConfig]) -> tuple[int, np.ndarray, np.ndarray]:
        """(how many of `cfgs`, in order, have values; their F; their G). New configs past the cap are cut."""
        cfgs = list(cfgs)
        take, new = 0, []
        seen_new: set[SubnetConfig] = set()
        for c in cfgs:
            if c not in self.index and c not in seen_new:
                if len(new) >= self.remaining:
                    break
                new.append(c)
                seen_new.add(c)
            take += 1
        if new:
            cols = [obj(new) for obj in self.objectives]
            G = self.constraint_values(new)
            for k, c in enumerate(new):
                self.index[c] = len(self.configs)
                self.configs.append(c)
                self.F.append(np.array([col[k] for col in cols]))
                self.G.append(G[k])
                self.gen.append(self.generation)
            if self._progress and self._bar is None:  # created lazily: argument errors print no bar
                from tqdm import tqdm

                self._bar = tqdm(total=self.n_evals, desc=self._desc, unit="eval", leave=False)
            if self._bar is not None:
                self._bar.update(len(new))
        rows = [self.index[c] for c in cfgs[:take]]
        F = np.array([self.F[i] for i in rows]).reshape(take, len(self.objectives))
        G = np.array([self.G[i] for i in rows]).reshape(take, len(self.constraints))
        return take, F, G

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def result(self, algorithm: str, seed: int, options: dict[str, Any], space, ref_point=None) -> SearchResult:
        self.close()
        return SearchResult(
            configs=list(self.configs),
            F=np.array(self.F).reshape(len(self.configs), len(self.objectives)),
            objectives=tuple(ObjectiveInfo(o.name, o.direction, o.unit) for o in self.objectives),
            constraints=tuple(ConstraintInfo(o.name, o.direction, lim, o.unit) for o, lim in self.constraints),
            G=np.array(self.G).reshape(len(self.configs), len(self.constraints)),
            generation=np.array(self.gen, dtype=np.int64),
            algorithm=algorithm,
            seed=int(seed),
            options={**options, "constraint_checks": self.constraint_checks},
            command=_command(),
            space=space.to_dict() if hasattr(space, "to_dict") else None,
            ref_point=ref_point,
        )


def _satisfied(values: np.ndarray, obj: Objective, limit: float) -> np.ndarray:
    return values <= limit if obj.direction == "min" else values >= limit


def check_reachable(space, genome: Genome, ev: Evaluator, draws: int = 200) -> list[SubnetConfig]:
    """Feasible seed configs; `ConfigError` when a constraint is unreachable (bounded tries).

    Candidates: the smallest and the largest subnet at each allowed bit-width. A constraint none of
    them meets gets `draws` random configs more; if none meets it either, the constraint is taken as
    unreachable (e.g. a latency limit below the smallest subnet's) and `ConfigError` names the best
    value seen. Returns the candidates that meet every constraint (possibly none).
    """
    if not ev.constraints:
        return []
    levels = [None] if genome.bits is None else sorted(genome.bits)
    cands = [space.canonical(space.smallest(bits=b)) for b in levels]
    cands += [space.canonical(space.largest(bits=b)) for b in reversed(levels)]
    for j, (obj, limit) in enumerate(ev.constraints):
        if _satisfied(ev.constraint_values(cands)[:, j], obj, limit).any():
            continue
        rng = np.random.default_rng(12345 + j)
        extra = [genome.decode(x) for x in genome.random(rng, draws)]
        v = ev.constraint_values(extra)[:, j]
        ok = _satisfied(v, obj, limit)
        if ok.any():
            cands += [c for c, k in zip(extra, ok) if k]
            continue
        seen = np.concatenate([ev.constraint_values(cands)[:, j], v])
        best = float(seen.min() if obj.direction == "min" else seen.max())
        op = "<=" if obj.direction == "min" else ">="
        bound = "at least" if obj.direction == "min" else "at most"
        raise ConfigError(
            "constraints", f"{obj.name}{op}{limit:g}", f"a limit {bound} {best:g} {obj.unit}".rstrip(),
            f"unreachable: the smallest and largest subnets at bits {genome.bits} and {draws} random ones "
            f"give {obj.name} {'>=' if obj.direction == 'min' else '<='} {best:g}",
        )
    return [c for c, k in zip(cands, ev.feasible(cands)) if k]
