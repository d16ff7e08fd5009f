"""Measured accuracy of subnets of a trained supernet, cached by canonical config in a JSONL file.

QFA Sec. 3.4 / OQA Sec. 3.4: a subnet is sliced out (`qc.extract`), its BN and BatchQuant statistics
are recalibrated on a few training batches (`qc.calibrate`) and it is evaluated, with no retraining
(`qcompile.train.evaluate_subnets`). Search must not look at the test split, so the default split
here is `val`.

Every result is appended to a JSONL cache as soon as it is measured, one line per config, under an
exclusive `fcntl` lock: processes (ranks of `qcompile predictor collect`, or separate runs) share one
file, a killed process loses only the config it was measuring, and a rerun skips what is cached. A
line's `key` hashes the canonical config together with everything that changes the measurement
(split, calibration seed / batches, batch size, and a fingerprint of the supernet's weights), so a
cache is never silently reused for another supernet or another protocol.

Less noisy measurements (`EvalProtocol`): on a small val split one top-1 measurement moves by about
a point between calibration seeds, which caps how well any predictor can rank subnets. Three knobs
lower that noise without touching the test split: `calib_seeds` averages the measurement over that
many calibration seeds (`calib_seed`, `calib_seed + 1`, ...); `extra_train` adds a fixed subset of
that many training images (a permutation seeded by `EXTRA_TRAIN_SEED`) to the evaluation set; and
each record also carries the mean cross-entropy (`loss`), a smoother metric than top-1 for ranking.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qcompile.config import FLOAT_BITS, QuantPolicy, SubnetConfig
from qcompile.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
EXTRA_TRAIN_SEED = 12345  # fixed: every measurement with `extra_train=n` sees the same n training images
EVAL_BATCH = 256  # images per evaluation forward (fixed: the loss is summed per batch, in this order)


def canonical(space: Any, cfg: SubnetConfig) -> SubnetConfig:
    """The one config of the networks `cfg` compiles to: genes of skipped blocks normalised.

    Uses `space.canonical(cfg)` where the space provides it; otherwise kernels / expands / channels
    of inactive block slots take the gene's first choice and the bits of inactive layer slots the
    smallest bit choice (they change neither the network nor its cost).
    """
    fn = getattr(space, "canonical", None)
    if callable(fn):
        return fn(cfg)
    if not hasattr(space, "_active_block_slots"):
        return cfg
    space.validate(cfg)
    active = space._active_block_slots(cfg)
    fields: dict[str, Any] = {}
    for gene in space.genes():
        if gene.field in ("kernels", "expands", "channels") and not active[gene.index]:
            seq = list(fields.get(gene.field, getattr(cfg, gene.field)))
            seq[gene.index] = gene.choices[0]
            fields[gene.field] = tuple(seq)
    out = replace(cfg, **fields) if fields else cfg
    if cfg.policy is not None:
        slot_active = space._active_layer_slots(cfg)
        low = min(b for b in space.bit_choices)
        bits = tuple(p if a else (low, low) for p, a in zip(cfg.policy.bits, slot_active))
        if cfg.policy.is_float:
            bits = tuple(p if a else (FLOAT_BITS, FLOAT_BITS) for p, a in zip(cfg.policy.bits, slot_active))
        out = out.with_policy(QuantPolicy(bits))
    return out


def config_hash(space: Any, cfg: SubnetConfig) -> str:
    """sha256 (16 hex digits) of the canonical config's JSON."""
    text = json.dumps(canonical(space, cfg).to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 (16 hex digits) over the names and bytes of a model's parameters and buffers."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path, mode: str) -> Iterator[Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield f
        finally:
            if "a" in mode:
                f.flush()
                os.fsync(f.fileno())
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a JSONL cache (a torn last line of a killed writer is skipped with a warning)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    with _locked(path, "r") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s:%d: unreadable line skipped (a writer killed mid-line?)", path, i + 1)
    return out


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one record as one line, under an exclusive lock, fsynced (safe across processes)."""
    line = json.dumps(record, sort_keys=True) + "\n"
    with _locked(Path(path), "a") as f:
        f.write(line)


@dataclass(frozen=True)
class EvalProtocol:
    """What a measurement depends on besides the config (part of every cache key)."""

    split: str = "val"
    calib_batches: int = 8
    calib_seed: int = 1
    batch_size: int = 64
    calib_seeds: int = 1  # measurements averaged over calibration seeds calib_seed .. calib_seed + calib_seeds - 1
    extra_train: int = 0  # training images (fixed subset) added to the evaluation set

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ConfigError("split", self.split, SPLITS)
        for name, lo, hi in (("calib_batches", 1, 10_000), ("calib_seeds", 1, 100), ("batch_size", 1, 1 << 20),
                             ("extra_train", 0, 1 << 30)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ConfigError(name, v, f"an integer in {lo}..{hi}")
        if self.extra_train and self.split == "train":
            raise ConfigError("extra_train", self.extra_train, "0 with split='train' (the split already is train)")

    def key_fields(self) -> dict[str, Any]:
        """The fields of the cache key; the later ones only when not at their default, so caches written
        before they existed keep their keys."""
        doc = asdict(self)
        for name in ("calib_seeds", "extra_train"):
            if doc[name] == EvalProtocol.__dataclass_fields__[name].default:
                del doc[name]
        return doc

    def eval_set(self, data: Any) -> Any:
        """The images measurements are taken on: the split, plus the fixed training subset if any."""
        ds = getattr(data, self.split)
        if not self.extra_train:
            return ds
        n = len(data.train)
        if self.extra_train > n:
            raise ConfigError("extra_train", self.extra_train, f"at most the {n} training images")
        from qcompile.data.base import ArrayDataset

        idx = torch.randperm(n, generator=torch.Generator().manual_seed(EXTRA_TRAIN_SEED))[: self.extra_train]
        extra = data.train.subset(idx)
        return ArrayDataset(torch.cat([ds.images, extra.images]), torch.cat([ds.labels, extra.labels]),
                            ds.num_classes, f"{ds.name}+train[{self.extra_train}]")


class SupernetEvaluator:
    """Top-1 accuracy (0..1) of configs measured on a trained supernet; `.predict(configs) -> np.ndarray`.

    `source` is a run directory of `qcompile train` (space, weights and dataset come from it) or a
    quantized supernet graph with `data` (`DatasetSplits`); the space is `space` or the one
    `qc.quantize` recorded on the graph. `cache` is a JSONL file shared across runs and processes.
    """

    def __init__(
        self,
        source: str | os.PathLike | torch.nn.Module,
        data: Any = None,
        *,
        space: Any = None,
        split: str = "val",
        calib_batches: int = 8,
        calib_seed: int = 1,
        batch_size: int = 64,
        calib_seeds: int = 1,
        extra_train: int = 0,
        cache: str | os.PathLike | None = None,
        progress: bool = True,
    ) -> None:
        self.protocol = EvalProtocol(split, calib_batches, calib_seed, batch_size, calib_seeds, extra_train)
        self.run_dir: str | None = None
        if isinstance(source, (str, os.PathLike)):
            from qcompile.artifacts import load_run
            from qcompile.data import load_dataset

            run_space, qnet, doc = load_run(source)
            self.run_dir = str(source)
            if space is not None and space.to_dict() != run_space.to_dict():
                raise ConfigError("space", space.to_dict(), f"the run's space {run_space.to_dict()}")
            space = run_space
            if data is None:
                name, _, root = str(doc.get("data", "digits")).partition(":")  # as `qcompile train --data`
                kw = {"root": root} if root else {}
                name = "image_folder" if name == "folder" else name
                data = load_dataset(name, resolution=max(space.resolutions), in_channels=space.in_channels, **kw)
        elif isinstance(source, torch.nn.Module):
            qnet = source
            if space is None:
                space = space_of(qnet)
            if data is None:
                raise ConfigError("data", None, "DatasetSplits (e.g. qcompile.data.digits()) with a model source")
        else:
            raise ConfigError("source", type(source).__name__, "a run directory or a quantized supernet graph")
        for s in ("train", self.protocol.split):
            if getattr(data, s, None) is None:
                raise ConfigError("data", type(data).__name__, f"DatasetSplits with a {s!r} split")
        qnet.eval()
        self.qnet, self.space, self.data = qnet, space, data
        self.eval_set = self.protocol.eval_set(data)
        self.fingerprint = model_fingerprint(qnet)
        self.cache = Path(cache) if cache is not None else None
        self.progress = progress
        self._known: dict[str, float] = {}
        self._loss: dict[str, float] = {}
        self._calib_cache: dict[tuple[int, int], list] = {}  # (seed, resolution) -> calibration batches
        self._eval_cache: dict[int, list] = {}  # resolution -> evaluation batches
        self.n_measured = 0  # measured by this object (not read from the cache)
        self.refresh()

    # ------------------------------------------------------------------------------------------
    def key(self, cfg: SubnetConfig) -> str:
        doc = {"config": config_hash(self.space, cfg), "model": self.fingerprint, **self.protocol.key_fields()}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]

    def refresh(self) -> int:
        """Re-read the cache file (other processes may have appended); returns the records that match."""
        if self.cache is None:
            return len(self._known)
        for rec in read_jsonl(self.cache):
            if "key" in rec and "accuracy" in rec:
                self._known[rec["key"]] = float(rec["accuracy"])
                if rec.get("loss") is not None:
                    self._loss[rec["key"]] = float(rec["loss"])
        return len(self._known)

    def cached(self, cfg: SubnetConfig) -> float | None:
        return self._known.get(self.key(cfg))

    def _calib_batches(self, seed: int, resolution: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The calibration batches of one seed at one resolution, materialised once per evaluator: the very
        tensors `self.data.train.loader(batch_size, shuffle=True, seed=seed, resolution=r)` yields, so every
        config of that seed and resolution is calibrated on the same values as before, minus the repeated
        permutation, indexing and resize."""
        key = (seed, resolution)
        if key not in self._calib_cache:
            p = self.protocol
            loader = self.data.train.loader(p.batch_size, shuffle=True, seed=seed, resolution=resolution)
            with torch.no_grad():
                self._calib_cache[key] = list(itertools.islice(loader, p.calib_batches))
        return self._calib_cache[key]

    def _eval_batches(self, resolution: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The evaluation batches (256 images, in order) at one resolution, materialised once per evaluator."""
        if resolution not in self._eval_cache:
            with torch.no_grad():
                self._eval_cache[resolution] = list(self.eval_set.loader(EVAL_BATCH, resolution=resolution))
        return self._eval_cache[resolution]

    def _top1_loss(self, cfg: SubnetConfig, seed: int) -> tuple[float, float]:
        """(top-1, mean cross-entropy) on the evaluation set after extract + calibrate with one seed.

        Computes exactly what `_top1_loss_reference` computes (same tensors, same operations, same batches and
        reduction order; `tests/search/test_supernet_evaluator.py` asserts equality to the last bit), with
        what does not depend on the config done once: the data batches are cached per seed and resolution
        (`_calib_batches`, `_eval_batches`), each weight is fake-quantized once per subnet instead of once per
        forward (it is constant during calibration and evaluation), each activation quantizer's calibrated
        scale and zero point are computed once before evaluation instead of once per batch, the activation
        quantizers round without the straight-through autograd Function (`_fake_quant_affine_nograd`), and
        autograd is off (`torch.inference_mode`).
        """
        from qcompile import api as qc

        p = self.protocol
        sub = qc.extract(self.qnet, cfg)
        with torch.inference_mode():
            _constant_weight_quant(sub)
            _calibration_act_quant(sub)
            qc.calibrate(sub, self._calib_batches(seed, cfg.resolution), max_batches=p.calib_batches)
            sub.eval()
            _constant_act_quant(sub)
            correct, loss, seen = 0, 0.0, 0
            for xb, yb in self._eval_batches(cfg.resolution):
                out = sub(xb)
                correct += int((out.argmax(1) == yb).sum())
                loss += float(torch.nn.functional.cross_entropy(out, yb, reduction="sum"))
                seen += len(yb)
        return correct / max(seen, 1), loss / max(seen, 1)

    @torch.no_grad()
    def _top1_loss_reference(self, cfg: SubnetConfig, seed: int) -> tuple[float, float]:
        """The measurement as first written (fresh loaders, per-forward quantization): the reference the
        tests hold `_top1_loss` to, bit for bit."""
        from qcompile import api as qc

        p = self.protocol
        sub = qc.extract(self.qnet, cfg)
        qc.calibrate(sub, self.data.train.loader(p.batch_size, shuffle=True, seed=seed, resolution=cfg.resolution),
                     max_batches=p.calib_batches)
        sub.eval()
        correct, loss, seen = 0, 0.0, 0
        for xb, yb in self.eval_set.loader(EVAL_BATCH, resolution=cfg.resolution):
            out = sub(xb)
            correct += int((out.argmax(1) == yb).sum())
            loss += float(torch.nn.functional.cross_entropy(out, yb, reduction="sum"))
            seen += len(yb)
        return correct / max(seen, 1), loss / max(seen, 1)

    def measure(self, cfg: SubnetConfig) -> float:
        """Measure one config now (extract + calibrate + evaluate, averaged over the protocol's calibration
        seeds), record top-1 and loss in the cache, return top-1."""
        p = self.protocol
        cfg = canonical(self.space, cfg)
        self.space.validate(cfg)
        runs = [self._top1_loss(cfg, p.calib_seed + i) for i in range(p.calib_seeds)]
        acc, loss = float(np.mean([r[0] for r in runs])), float(np.mean([r[1] for r in runs]))
        k = self.key(cfg)
        self._known[k], self._loss[k] = acc, loss
        self.n_measured += 1
        if self.cache is not None:
            append_jsonl(self.cache, {
                "key": k, "config_hash": config_hash(self.space, cfg), "config": cfg.to_dict(), "accuracy": acc,
                "loss": loss, "model": self.fingerprint, "space": self.space.to_dict(), "run": self.run_dir,
                **asdict(p),
            })
        return acc

    def loss(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        """Mean cross-entropy of each config on the evaluation set (measured and cached like `predict`)."""
        configs = list(configs)
        self.predict(configs)
        missing = [c for c in configs if self.key(c) not in self._loss]
        for c in missing:  # cached by a version that did not record the loss: measure again
            self.measure(c)
        return np.array([self._loss[self.key(c)] for c in configs], dtype=np.float64)

    def predict(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        """Accuracy (0..1) of each config: from the cache when there, else measured (progress bar) and cached."""
        configs = list(configs)
        for c in configs:
            self.space.validate(c)
        self.refresh()
        todo = []
        seen = set()
        for c in configs:
            k = self.key(c)
            if k not in self._known and k not in seen:
                seen.add(k)
                todo.append(c)
        if todo:
            from tqdm.auto import tqdm

            for c in tqdm(todo, desc=f"measure ({self.protocol.split})", disable=not self.progress or None):
                if self.cache is not None and self.key(c) in self._known:
                    continue
                self.measure(c)
        return np.array([self._known[self.key(c)] for c in configs], dtype=np.float64)

    __call__ = predict



def _constant_weight_quant(sub: torch.nn.Module) -> int:
    """Fake-quantize each weight of an extracted subnet once: its quantizer then returns that tensor.

    A static subnet's weights and LSQ steps never change during calibration and evaluation (`qc.calibrate`
    changes statistics only), so `weight_quant(weight)` is the same tensor at every forward; computing it
    once gives the same values. The quantizer stays in place (integer lowering and the qdq bias grid read
    its `codes`); only its `forward` on this layer's own weight is replaced. Returns the layers changed.
    For the evaluator's private subnets only: the subnet must not be trained afterwards.
    """
    from qcompile.nn.static import QConv2d, QLinear

    n = 0
    for m in sub.modules():
        wq = getattr(m, "weight_quant", None)
        if not isinstance(m, (QConv2d, QLinear)) or wq is None or wq.active_bits == FLOAT_BITS:
            continue
        weight, value, forward = m.weight, wq(m.weight).detach(), wq.forward
        wq.forward = lambda w, _src=weight, _value=value, _fwd=forward: _value if w is _src else _fwd(w)
        n += 1
    return n


def _constant_act_quant(sub: torch.nn.Module) -> int:
    """Compute each calibrated BatchQuant's scale and zero point once, for evaluation.

    In eval mode a calibrated `BatchQuant.forward` derives `delta gamma` and `z + beta` from its running
    estimates (QFA Eq. 5) at every batch; they are constants once calibration is over. This replaces the
    forward of each such quantizer of `sub` by the same fake quantization with those constants, computed by
    the same functions in the same order (so the same values), and sets `pad_value` / `last_scale` as the
    forward would. Call after `qc.calibrate` and `sub.eval()`; returns the quantizers changed.
    """
    from qcompile.quant.batchquant import BatchQuant
    from qcompile.quant.flavour import fake_quant_qdq
    from qcompile.quant.functional import range_qparams, zero_code_value

    n = 0
    for q in sub.modules():
        if type(q) is not BatchQuant or q.training or q.calibrating or not q.is_calibrated:
            continue
        b = q.active_bits
        if b == FLOAT_BITS:
            continue
        lo, hi = q.qrange(b)
        delta, z = range_qparams(q.running_min, q.running_max, lo, hi, q.eps, q.zero_rounding)
        gamma, beta = q.gamma[str(b)], q.beta[str(b)]
        zp = q._zero_point(z, beta, lo, hi)
        scale = delta * gamma
        q.pad_value = zero_code_value(scale, zp, lo, hi)
        q.last_scale = scale.detach()
        fq = fake_quant_qdq if bool(q.qdq) else _fake_quant_affine_nograd
        q.forward = lambda x, _fq=fq, _s=scale, _zp=zp, _lo=lo, _hi=hi: _fq(x, _s, _zp, _lo, _hi)
        n += 1
    return n


def _fake_quant_affine_nograd(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, lo: int,
                              hi: int) -> torch.Tensor:
    """`qcompile.quant.functional.fake_quant_affine` without autograd: the same operations in the same order
    (`round_ste`'s forward is `floor(t + 0.5)`), minus the custom autograd Function's call overhead."""
    q = torch.floor(torch.clamp(x / scale + zero_point, lo, hi) + 0.5)
    return (q - zero_point) * scale


def _calibration_act_quant(sub: torch.nn.Module) -> int:
    """Give each fixed-point BatchQuant of `sub` a calibration forward without autograd overhead.

    The same operations as `BatchQuant.forward` in calibration mode (QFA Sec. 3.4: batch estimates, added to
    the running mean, Eq. 5 with this batch's range), in the same order, with the bit-width's constants
    looked up once and `floor(t + 0.5)` called directly instead of through `round_ste`. Outside calibration
    the quantizer's own forward runs. Returns the quantizers changed.
    """
    from qcompile.quant.batchquant import BatchQuant
    from qcompile.quant.functional import range_qparams, zero_code_value

    n = 0
    for q in sub.modules():
        if type(q) is not BatchQuant or bool(q.qdq) or q.active_bits == FLOAT_BITS:
            continue
        b = q.active_bits
        lo, hi = q.qrange(b)
        gamma, beta, rounding = q.gamma[str(b)], q.beta[str(b)], q.zero_rounding

        def forward(x, _q=q, _lo=lo, _hi=hi, _gamma=gamma, _beta=beta, _rounding=rounding):
            if not _q.calibrating or _q.active_bits == FLOAT_BITS:
                return BatchQuant.forward(_q, x)
            x_min, x_max = _q.batch_estimates(x)
            _q._accumulate(x_min, x_max)
            delta, z = range_qparams(x_min, x_max, _lo, _hi, _q.eps, _rounding)
            zp = _q._zero_point(z, _beta, _lo, _hi)
            scale = delta * _gamma
            _q.pad_value = zero_code_value(scale, zp, _lo, _hi)
            _q.last_scale = scale.detach()
            return _fake_quant_affine_nograd(x, scale, zp, _lo, _hi)

        q.forward = forward
        n += 1
    return n

def space_of(qnet: torch.nn.Module) -> Any:
    """The search space a quantized supernet graph was built from (`space_info`, kept by `qc.trace`/`qc.quantize`)."""
    info = getattr(qnet, "space_info", None)
    if info is None:
        raise ConfigError(
            "qnet.space_info", None, "a supernet graph from qc.quantize(qc.trace(space.build_supernet()))",
            "pass space=... explicitly for a model that does not record its space",
        )
    from qcompile.spaces import from_dict

    return from_dict(info)


#: the record fields that make two measurements of one config comparable
PROTOCOL_FIELDS = ("model", "split", "calib_batches", "calib_seed", "calib_seeds", "extra_train", "batch_size")


def _one_protocol(recs: list[dict], path: object) -> list[dict]:
    """The records of the protocol most records share, one per config: a cache can hold the same configs
    measured again (another calibration seed, another model), and fitting on both would count a config
    twice (possibly once in the fit and once in the held-out part) and mix measurements that differ."""
    from collections import Counter

    proto = [tuple(json.dumps(r.get(f), sort_keys=True) for f in PROTOCOL_FIELDS) for r in recs]
    counts = Counter(proto)
    best = max(counts, key=lambda p: (counts[p], -proto.index(p)))  # most records; ties: the first written
    out, configs = [], set()
    for r, p in zip(recs, proto):
        h = r.get("config_hash", r["key"])
        if p == best and h not in configs:
            configs.add(h)
            out.append(r)
    if len(out) < len(recs):
        log.warning("%s: %d of %d records kept (one protocol, one record per config: %s)", path, len(out), len(recs),
                    dict(zip(PROTOCOL_FIELDS, (json.loads(v) for v in best))))
    return out


def load_records(path: str | os.PathLike, space: Any = None) -> tuple[Any, list[SubnetConfig], np.ndarray, list[dict]]:
    """(space, configs, accuracies, records) of a JSONL cache: the records of its most common measurement
    protocol (`PROTOCOL_FIELDS`), one per config (first wins)."""
    recs = read_jsonl(path)
    if not recs:
        raise CheckpointError(f"{path}: no measurements (run `qcompile predictor collect RUN --out {path}`)")
    spaces = {json.dumps(r.get("space"), sort_keys=True) for r in recs}
    if len(spaces) != 1:
        raise ConfigError(f"{path}: space", sorted(spaces), "records of one space only")
    if space is None:
        from qcompile.spaces import from_dict

        space = from_dict(recs[0]["space"])
    elif space.to_dict() != recs[0]["space"]:
        raise ConfigError(f"{path}: space", recs[0]["space"], f"this space {space.to_dict()}")
    seen, keep = set(), []
    for r in recs:
        if r["key"] not in seen:
            seen.add(r["key"])
            keep.append(r)
    keep = _one_protocol(keep, path)
    cfgs = [SubnetConfig.from_dict(r["config"]) for r in keep]
    return space, cfgs, np.array([float(r["accuracy"]) for r in keep]), keep


__all__ = ["SupernetEvaluator", "EvalProtocol", "canonical", "config_hash", "model_fingerprint",
           "read_jsonl", "append_jsonl", "load_records", "space_of"]
