"""Bidirectional greedy bit-width search on a fixed architecture (retraining-free paper, Sec. 3.5, Eq. 9).

From a policy at the highest bits, each step builds the provisional policies that move *one* layer's
weight bits, then one layer's activation bits, one choice up or down (`2 x 2L` candidates for `L`
active layers), scores each by

    J_i = Lbar_val(S_i) + lambda * Costbar(S_i)                                   (Eq. 9)

(`Lbar`, `Costbar`: min-max normalised over the step's candidates; a zero range gives 0, never a
division by zero) and keeps the argmin. It stops at the first policy whose cost meets the budget.

Loss is the cross-entropy of the supernet with the policy active, on the given `(images, labels)`
batches, with BN and BatchQuant statistics recalibrated for the step's current policy. All of it
runs on a private copy of the supernet: `qnet`'s parameters and buffers are untouched (the anchors'
greedy search recalibrated BN statistics in place).

Bounded: policies already visited are never revisited, at most `max_steps` steps are taken, and if
the budget is still not met then (or when no unvisited move is left) the search finishes with
down-moves only, choosing by Eq. 9 among them, which reaches the cheapest policy at worst -- a
budget below that raises `ConfigError` before any work is done.

`lazy=True` (default) is a cost-saving deviation from the paper, which re-evaluates all candidates
every step: the loss change of each candidate is remembered and only the best candidates are
re-measured until the best stays best (lazy greedy); with `refresh_every=N`, all are re-evaluated
every N steps. `lazy=False` re-evaluates every candidate at every step, exactly Eq. 9.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from qcompile.config import FLOAT_BITS, QuantPolicy, SubnetConfig
from qcompile.errors import ConfigError

log = logging.getLogger(__name__)

Policy = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class GreedyOptions:
    """Options of `greedy_bits` (lam is the lambda of Eq. 9)."""

    lam: float = 1.0
    max_steps: int = 500
    lazy: bool = True
    refresh_every: int = 0  # lazy: re-evaluate every candidate every N steps (0: only at the first step)
    max_reevals: int | None = None  # lazy: re-measurements per step before taking the best fresh one
    recalibrate_every: int = 1  # recalibrate BN / BatchQuant statistics every N accepted moves
    calib_batches: int | None = None  # batches used for calibration (None: all given)
    loss_batches: int | None = None  # batches used for the loss (None: all given)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise ConfigError("GreedyOptions.lam", self.lam, "a finite number >= 0")
        if not 1 <= self.max_steps <= 100_000:
            raise ConfigError("GreedyOptions.max_steps", self.max_steps, "1..100000")
        if self.max_reevals is not None and self.max_reevals < 1:
            raise ConfigError("GreedyOptions.max_reevals", self.max_reevals, "None or >= 1")
        if self.recalibrate_every < 1:
            raise ConfigError("GreedyOptions.recalibrate_every", self.recalibrate_every, ">= 1")
        if self.refresh_every < 0:
            raise ConfigError("GreedyOptions.refresh_every", self.refresh_every, ">= 0 (0: first step only)")
        for name in ("calib_batches", "loss_batches"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"GreedyOptions.{name}", v, "None or >= 1")


def _minmax(v: np.ndarray) -> np.ndarray:
    """Min-max normalisation to [0, 1]; a constant vector maps to zeros (no division by zero)."""
    lo, hi = float(np.min(v)), float(np.max(v))
    return (v - lo) / (hi - lo) if hi - lo > 0 else np.zeros_like(v)


def greedy_search(
    start: Policy,
    slots: Sequence[int],
    bits: Sequence[int],
    loss_fn: Callable[[Policy], float],
    cost_fn: Callable[[Policy], float],
    budget: float,
    options: GreedyOptions = GreedyOptions(),
    calibrate_fn: Callable[[Policy], None] | None = None,
    progress: Any = None,
) -> tuple[Policy, list[dict[str, Any]]]:
    """Eq. 9 over policies (tuples of (w, a) per layer slot), moving only `slots`, within `bits`.

    `loss_fn(policy)` is the loss to minimise, `cost_fn(policy)` the cost the budget bounds,
    `calibrate_fn(policy)` (optional) is called whenever the current policy changes. Returns the
    final policy and the trajectory (one dict per accepted move). Model-free, so it can be checked
    exhaustively on toy problems.
    """
    bits = tuple(sorted(set(int(b) for b in bits)))
    slots = list(slots)
    cur = tuple(tuple(p) for p in start)
    visited = {cur}
    history: list[dict[str, Any]] = []
    # lazy: loss(after move) - loss(current) when last measured, per move (slot, which, direction)
    deltas: dict[tuple[int, int, int], float] = {}

    def candidates(p: Policy, down_only: bool) -> list[tuple[tuple[int, int, int], Policy]]:
        out = []
        for which in (0, 1):  # weights, then activations
            for s in slots:
                i = bits.index(p[s][which])
                for d in ((-1,) if down_only else (1, -1)):
                    if 0 <= i + d < len(bits):
                        q = list(p)
                        pair = list(q[s])
                        pair[which] = bits[i + d]
                        q[s] = (pair[0], pair[1])
                        q = tuple(q)
                        if q not in visited:
                            out.append(((s, which, d), q))
        return out

    if calibrate_fn is not None:
        calibrate_fn(cur)
    cur_loss = loss_fn(cur)
    cur_cost = cost_fn(cur)
    max_total = options.max_steps + len(slots) * 2 * len(bits) + 1  # the down-only tail is bounded too
    step = 0
    while cur_cost > budget and step < max_total:
        down_only = step >= options.max_steps
        cands = candidates(cur, down_only)
        if not cands and not down_only:
            down_only = True
            cands = candidates(cur, True)
        if not cands:  # cannot happen while cost > budget >= cheapest cost; stay bounded anyway
            break
        moves = [m for m, _ in cands]
        pols = [q for _, q in cands]
        costs = np.array([cost_fn(q) for q in pols], dtype=np.float64)
        full = (not options.lazy) or step == 0 or (options.refresh_every > 0 and step % options.refresh_every == 0)
        fresh: set[tuple[int, int, int]] = set()
        for m, q in cands:
            if full or m not in deltas:
                deltas[m] = loss_fn(q) - cur_loss
                fresh.add(m)
        # lazy greedy: re-measure the argmin until it is fresh (at most len(cands) or max_reevals times;
        # past max_reevals the best *fresh* candidate is taken)
        limit = len(cands) if options.max_reevals is None else min(len(cands), options.max_reevals)
        for k in range(limit + 1):
            losses = np.array([cur_loss + deltas[m] for m in moves])
            J = _minmax(losses) + options.lam * _minmax(costs)
            best = int(np.argmin(J))  # ties: first, i.e. weights before activations, lower slots first
            if moves[best] in fresh:
                break
            if k == limit:
                if fresh:
                    best = min((i for i, m in enumerate(moves) if m in fresh), key=lambda i: J[i])
                break
            deltas[moves[best]] = loss_fn(pols[best]) - cur_loss
            fresh.add(moves[best])
        nxt, (s_moved, w_moved, _) = pols[best], moves[best]
        visited.add(nxt)
        cur, cur_cost = nxt, float(costs[best])
        if calibrate_fn is not None and (step + 1) % options.recalibrate_every == 0:
            calibrate_fn(cur)
            cur_loss = loss_fn(cur)
        else:
            cur_loss = cur_loss + deltas[moves[best]]
        # the moved entry's up / down moves now start from another bit-width: forget them
        for d in (1, -1):
            deltas.pop((s_moved, w_moved, d), None)
        history.append({"step": step, "loss": float(cur_loss), "cost": cur_cost, "J": float(J[best]),
                        "candidates": len(cands), "down_only": down_only})
        if step % 10 == 0:
            log.info("greedy step %d: loss %.4f, cost %.4g (budget %.4g), %d candidates", step, cur_loss, cur_cost,
                     budget, len(cands))
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{cur_loss:.4f}", cost=f"{cur_cost:.3e}")
        step += 1
    return cur, history


# ------------------------------------------------------------------------------------------------
# the supernet side
# ------------------------------------------------------------------------------------------------


class _FixedModelSpace:
    """The one-architecture 'space' of a `qc.quantize_model(..., bits_choices=...)` model: its policy slots."""

    def __init__(self, gm: nn.Module) -> None:
        opts = getattr(gm, "quantize_model_options", {}) or {}
        choices = opts.get("bits_choices")
        if not choices:
            raise ConfigError("qnet", "a static quantize_model result",
                              "qc.quantize_model(model, ..., bits_choices=(2, 3, 4, 8)) for a bit search")
        self.layers = tuple(gm.qc_layers)
        self.bit_choices = tuple(int(b) for b in choices)
        self.num_layer_slots = len(self.layers)
        self.config = getattr(gm, "subnet_config", None)

    def layer_slots(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def validate(self, cfg: SubnetConfig) -> SubnetConfig:
        if self.config is not None and cfg.resolution != self.config.resolution:
            raise ConfigError("arch_cfg.resolution", cfg.resolution, self.config.resolution)
        if cfg.policy is not None and len(cfg.policy) != self.num_layer_slots:
            raise ConfigError("policy", f"{len(cfg.policy)} entries", f"{self.num_layer_slots} (qc.layer_names)")
        return cfg

    def _check_bits(self, name: str, bits: Sequence[int]) -> tuple[int, ...]:
        bad = [b for b in bits if b not in self.bit_choices]
        if bad or not bits:
            raise ConfigError(name, bad or bits, f"{self.bit_choices} (the model's bits_choices)")
        return tuple(bits)

    def _active_layer_slots(self, cfg: SubnetConfig) -> list[bool]:
        return [True] * self.num_layer_slots

    def bitops(self, cfg: SubnetConfig) -> float:
        """sum over layers of MACs x weight bits x activation bits (APQ / OQA BitOPs; 32 = float)."""
        return float(sum(layer.macs * w * a for layer, (w, a) in zip(self.layers, cfg.policy.bits)))


def _trained_bits(qnet: nn.Module) -> dict[tuple[int, int], tuple[int, ...]]:
    """(slot, 0=weight/1=act) -> bit choices of the quantizers bound to that policy entry."""
    out: dict[tuple[int, int], tuple[int, ...]] = {}
    for m in qnet.modules():
        b = getattr(m, "qc_binding", None)
        if b is not None and getattr(b, "slot", None) is not None:
            key = (int(b.slot), int(b.which))
            choices = tuple(int(x) for x in getattr(m, "bits", ()))
            prev = out.get(key)
            out[key] = choices if prev is None else tuple(x for x in prev if x in choices)
    return out


def _split(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and all(isinstance(t, torch.Tensor) for t in batch[:2]):
        return batch[0], batch[1]
    raise ConfigError("batches", type(batch).__name__, "(images, labels) tensor pairs")


def _at_resolution(x: torch.Tensor, r: int) -> torch.Tensor:
    if x.shape[-1] == r and x.shape[-2] == r:
        return x
    from qcompile.data.base import resize

    return resize(x, r)


def greedy_bits(
    qnet: nn.Module,
    arch_cfg: SubnetConfig,
    batches: Iterable[Any],
    budget: float = 1e8,
    cost: Any = None,
    bits: Sequence[int] = (2, 3, 4),
    *,
    calib_batches: Iterable[Any] | None = None,
    options: GreedyOptions | None = None,
    space: Any = None,
    return_history: bool = False,
    **kwargs: Any,
) -> SubnetConfig | tuple[SubnetConfig, list[dict[str, Any]]]:
    """Per-layer bits for architecture `arch_cfg` meeting `cost <= budget` (retraining-free Eq. 9).

    `qnet`: a trained quantized supernet graph (`qc.quantize` records its space; or pass `space=`).
    `batches`: `(images, labels)` batches for the loss (a validation split; images are resized to
    the config's resolution); `calib_batches` (default: `batches`) recalibrate BN and BatchQuant
    statistics of the private copy. `cost`: an `Objective` with direction "min" (default: BitOPs).
    `options` or keyword options: `GreedyOptions` (lam, max_steps, lazy, ...). Returns the config
    (and the trajectory with `return_history=True`). `qnet` itself is left unchanged.
    """
    from qcompile.api import set_active
    from qcompile.search.objectives import Objective
    from qcompile.search.predictors.measured import space_of
    from qcompile.train.calibrate import calibrate

    if options is not None and kwargs:
        raise ConfigError("greedy_bits options", sorted(kwargs), "either options=GreedyOptions(...) or keywords")
    try:
        opts = options or GreedyOptions(**kwargs)
    except TypeError as e:
        raise ConfigError("greedy_bits options", sorted(kwargs), list(GreedyOptions.__dataclass_fields__)) from e
    if not isinstance(qnet, nn.Module):
        raise ConfigError("qnet", type(qnet).__name__, "a quantized supernet graph (qc.quantize(...))")
    fixed_model = space is None and getattr(qnet, "space_info", None) is None and hasattr(qnet, "qc_layers")
    if fixed_model:  # a plain CNN from qc.quantize_model(..., bits_choices=...): one architecture, its own slots
        space = _FixedModelSpace(qnet)
    space = space if space is not None else space_of(qnet)
    if not isinstance(arch_cfg, SubnetConfig):
        raise ConfigError("arch_cfg", type(arch_cfg).__name__, "a qcompile.SubnetConfig")
    space.validate(arch_cfg)
    if cost is None and fixed_model:
        cost = Objective("bitops", lambda cfgs: np.array([space.bitops(c) for c in cfgs]), direction="min")
    elif cost is None:
        from qcompile.search.cost import bitops

        cost = Objective("bitops", lambda cfgs: np.array([bitops(space, c) for c in cfgs]), direction="min")
    if not isinstance(cost, Objective) and not callable(cost):
        raise ConfigError("cost", type(cost).__name__, "a qcompile.search.Objective with direction 'min'")
    if getattr(cost, "direction", "min") != "min":
        raise ConfigError("cost.direction", getattr(cost, "direction", None), "'min' (a cost the budget bounds)",
                          f"objective {getattr(cost, 'name', cost)!r} is to be maximised")
    try:
        budget = float(budget)
    except (TypeError, ValueError) as e:
        raise ConfigError("budget", budget, "a positive number") from e
    if not (math.isfinite(budget) and budget > 0):
        raise ConfigError("budget", budget, "a positive finite number")
    bits_t = tuple(sorted({int(b) for b in bits})) if not isinstance(bits, int) else (int(bits),)
    bits_t = space._check_bits("bits", bits_t) if hasattr(space, "_check_bits") else bits_t
    if FLOAT_BITS in bits_t:
        raise ConfigError("bits", bits_t, "quantized bit-widths (32 = float is not a search choice here)")
    trained = _trained_bits(qnet)
    slot_active = space._active_layer_slots(arch_cfg)
    slots = [i for i, a in enumerate(slot_active) if a]
    for s in slots:
        for which, name in ((0, "weight"), (1, "act")):
            have = trained.get((s, which))
            if have is not None and any(b not in have for b in bits_t):
                raise ConfigError("bits", bits_t, f"{have} ({name} bits the supernet was trained with at "
                                  f"{space.layer_slots()[s]})")

    lo, hi = min(bits_t), max(bits_t)
    n = space.num_layer_slots
    start: Policy = tuple((hi, hi) if a else (lo, lo) for a in slot_active)
    cheapest: Policy = tuple((lo, lo) for _ in range(n))

    cost_cache: dict[Policy, float] = {}

    def cost_fn(p: Policy) -> float:
        if p not in cost_cache:
            cost_cache[p] = float(cost([arch_cfg.with_policy(QuantPolicy(p))])[0])
        return cost_cache[p]

    c_min = cost_fn(cheapest)
    if c_min > budget:
        raise ConfigError("budget", budget, f">= {c_min:.6g} ({cost.name if hasattr(cost, 'name') else 'cost'} "
                          f"of this architecture with every layer at {lo} bits)", "no policy can meet it")

    batches = list(batches)
    if not batches:
        raise ConfigError("batches", 0, ">= 1 (images, labels) batch")
    r = arch_cfg.resolution
    loss_set = [(_at_resolution(x, r), y) for x, y in (_split(b) for b in batches)]
    if opts.loss_batches is not None:
        loss_set = loss_set[: opts.loss_batches]
    calib_src = list(calib_batches) if calib_batches is not None else [x for x, _ in loss_set]
    calib_set = [_at_resolution(b if isinstance(b, torch.Tensor) else _split(b)[0], r) for b in calib_src]
    if opts.calib_batches is not None:
        calib_set = calib_set[: opts.calib_batches]
    if not calib_set:
        raise ConfigError("calib_batches", 0, ">= 1 batch")

    if cost_fn(start) <= budget:
        log.info("greedy_bits: %d bits everywhere already meets the budget", hi)
        out = arch_cfg.with_policy(QuantPolicy(start))
        return (out, []) if return_history else out

    work = copy.deepcopy(qnet)  # private copy: qnet's parameters and buffers stay as they were
    work.eval()
    n_loss = [0]

    @torch.no_grad()
    def loss_fn(p: Policy) -> float:
        set_active(work, arch_cfg.with_policy(QuantPolicy(p)))
        total, count = 0.0, 0
        for x, y in loss_set:
            total += float(nn.functional.cross_entropy(work(x), y, reduction="sum"))
            count += int(y.shape[0])
        n_loss[0] += 1
        return total / max(count, 1)

    def calibrate_fn(p: Policy) -> None:
        set_active(work, arch_cfg.with_policy(QuantPolicy(p)))
        if fixed_model:  # a trained plain CNN keeps its BN statistics; only the quantizers are calibrated
            calibrate(work, calib_set, bn=False)
        else:
            calibrate(work, calib_set)

    from tqdm.auto import tqdm

    with tqdm(desc="greedy bits", unit="step", disable=None, leave=False) as bar:
        policy, history = greedy_search(start, slots, bits_t, loss_fn, cost_fn, budget, opts, calibrate_fn, bar)
    result = arch_cfg.with_policy(QuantPolicy(policy))
    log.info("greedy_bits: %d steps, %d loss evaluations, cost %.4g <= budget %.4g", len(history), n_loss[0],
             cost_fn(policy), budget)
    return (result, history) if return_history else result


__all__ = ["greedy_bits", "greedy_search", "GreedyOptions"]
