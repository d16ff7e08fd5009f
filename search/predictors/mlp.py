"""MLP accuracy predictor on the one-hot encoding of a subnet (APQ Sec. 3.3; BatchQuant/QFA Sec. 4).

The input is `encode(space, cfg)`: one-hot genes of the architecture (skipped blocks all-zero, APQ
Sec. 3.2) followed by one-hot weight and activation bits of every layer slot. APQ's predictor is an
MLP with 3 hidden layers of 400 units; so is the default here (`PredictorOptions.hidden`).

The network has two parts, so that APQ's full-precision -> quantized transfer has somewhere to put
what is new:

    y = mean + std * (head(trunk(x_arch)) + bit_head([x_arch, x_bits]))

`trunk` + `head` see only the architecture; `bit_head` (a separate MLP) sees the bits as well. A
quantization-aware predictor can be initialised from one fitted on float subnets
(`fit(..., init_from=float_pred)`): the trunk, head and target scaling are copied, the bit head's
output layer starts at zero (so the new predictor starts out predicting the float accuracy), and
everything is fine-tuned on the (few) quantized samples (APQ Sec. 3.3: 64.6 -> 75.6 % with little data).

Every fit holds out `holdout` of the samples (seeded split) and reports Kendall tau, pairwise
accuracy and RMSE on them in `pred.report`: a predictor without a held-out score is not trusted
(a pitfall of the anchors' code). Fitting is deterministic for a seed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qcompile.config import SubnetConfig
from qcompile.errors import ConfigError
from qcompile.search.encoding import encode, encoding_size
from qcompile.search.predictors.metrics import fit_split, heldout_report, log_heldout
from qcompile.search.predictors.saved import (
    FORMAT,
    JSON_FILE,
    WEIGHTS_FILE,
    read_doc,
    register_kind,
    saved_space,
    space_dict,
)
from qcompile.utils.io import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class PredictorOptions:
    """Fitting options (APQ: 3 x 400 hidden units, Adam)."""

    hidden: tuple[int, ...] = (400, 400, 400)
    bit_hidden: tuple[int, ...] = (400,)
    epochs: int = 300
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    holdout: float = 0.2

    def __post_init__(self) -> None:
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise ConfigError("PredictorOptions.hidden", self.hidden, "a non-empty tuple of positive widths")
        if any(int(h) < 1 for h in self.bit_hidden):
            raise ConfigError("PredictorOptions.bit_hidden", self.bit_hidden, "a tuple of positive widths")
        if not 1 <= self.epochs <= 100_000:
            raise ConfigError("PredictorOptions.epochs", self.epochs, "1..100000")
        if not self.lr > 0:
            raise ConfigError("PredictorOptions.lr", self.lr, "> 0")
        if self.weight_decay < 0:
            raise ConfigError("PredictorOptions.weight_decay", self.weight_decay, ">= 0")
        if self.batch_size < 1:
            raise ConfigError("PredictorOptions.batch_size", self.batch_size, ">= 1")
        if not 0 <= self.holdout < 1:
            raise ConfigError("PredictorOptions.holdout", self.holdout, "a fraction in [0, 1)")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "bit_hidden", tuple(int(h) for h in self.bit_hidden))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _mlp(n_in: int, hidden: Sequence[int]) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(n_in, h), nn.ReLU()]
        n_in = h
    return nn.Sequential(*layers), n_in


class _Net(nn.Module):
    def __init__(self, n_arch: int, n_bits: int, opts: PredictorOptions) -> None:
        super().__init__()
        self.n_arch = n_arch
        self.trunk, w = _mlp(n_arch, opts.hidden)
        self.head = nn.Linear(w, 1)
        bit_mlp, wb = _mlp(n_arch + n_bits, opts.bit_hidden)
        self.bit_head = nn.Sequential(*bit_mlp, nn.Linear(wb, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.head(self.trunk(x[:, : self.n_arch])) + self.bit_head(x)).squeeze(1)


def _arch_size(space: Any) -> int:
    """Length of the architecture part of `encode(space, cfg)` (the rest is one-hot bits)."""
    genes = getattr(space, "genes", None)
    if callable(genes):
        return sum(len(g.choices) for g in genes())
    return encoding_size(space) - 2 * space.num_layer_slots * len(space.bit_choices)


@dataclass
class _Scale:
    mean: float = 0.0
    std: float = 1.0


class AccuracyPredictor:
    """MLP on `encode(space, cfg)` predicting top-1 accuracy; `.fit(configs, accuracies)` returns self.

    `report` (after `fit`): held-out `kendall_tau`, `pairwise_accuracy`, `rmse`, `n_train`,
    `n_holdout`, and `bitops_kendall_tau` where the space has a cost model (ranking by -BitOPs, the
    baseline a predictor must beat).
    """

    def __init__(self, space: Any, seed: int = 0, options: PredictorOptions | None = None, **kwargs: Any) -> None:
        if options is not None and kwargs:
            raise ConfigError("AccuracyPredictor options", sorted(kwargs), "either options=... or keyword options")
        try:
            self.options = options or PredictorOptions(**kwargs)
        except TypeError as e:
            allowed = list(PredictorOptions.__dataclass_fields__)
            raise ConfigError("AccuracyPredictor options", sorted(kwargs), allowed) from e
        for attr in ("genes", "num_layer_slots", "bit_choices"):  # what search.encoding reads
            if not hasattr(space, attr):
                raise ConfigError("space", type(space).__name__, f"a search space with `{attr}` (qc.spaces.*)")
        self.space = space
        self.seed = int(seed)
        self.n_in = int(encoding_size(space))
        self.n_arch = int(_arch_size(space))
        self.scale = _Scale()
        self.report: dict[str, Any] = {}
        self.transferred = False
        self.net = self._new_net()

    # ------------------------------------------------------------------------------------------
    def _new_net(self) -> _Net:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return _Net(self.n_arch, self.n_in - self.n_arch, self.options)

    def encode(self, configs: Sequence[SubnetConfig]) -> torch.Tensor:
        configs = list(configs)
        if not configs:
            return torch.zeros(0, self.n_in)
        return torch.from_numpy(np.stack([encode(self.space, c) for c in configs]).astype(np.float32))

    def _check_space(self, other: AccuracyPredictor | Any, what: str) -> None:
        if space_dict(other.space) != space_dict(self.space):
            raise ConfigError(what, space_dict(other.space), f"a predictor of this space {space_dict(self.space)}")

    # ------------------------------------------------------------------------------------------
    def fit(
        self,
        configs: Sequence[SubnetConfig],
        accuracies: Sequence[float] | np.ndarray,
        *,
        init_from: AccuracyPredictor | None = None,
    ) -> AccuracyPredictor:
        """Fit on `configs` -> `accuracies` (any units; predictions come back in the same units).

        `init_from`: a predictor of the same space and hidden sizes (APQ transfer, e.g. one fitted on
        float subnets): trunk, head and target scaling are copied, the bit head's last layer starts
        at zero. `holdout` of the samples (seeded) are kept out of training and scored in `report`.
        """
        opts = self.options
        configs, y, hold, train = fit_split(configs, accuracies, opts.holdout, self.seed, field="accuracies")
        n_hold = len(hold)
        x = self.encode(configs)

        self.net = self._new_net()
        self.transferred = init_from is not None
        if init_from is not None:
            if not isinstance(init_from, AccuracyPredictor):
                raise ConfigError("init_from", type(init_from).__name__, "an AccuracyPredictor")
            self._check_space(init_from, "init_from.space")
            if init_from.options.hidden != opts.hidden:
                raise ConfigError("init_from.options.hidden", init_from.options.hidden,
                                  f"{opts.hidden} (this predictor's)")
            self.net.trunk.load_state_dict(init_from.net.trunk.state_dict())
            self.net.head.load_state_dict(init_from.net.head.state_dict())
            last = self.net.bit_head[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.scale = _Scale(init_from.scale.mean, init_from.scale.std)
        else:
            std = float(np.std(y[train]))
            self.scale = _Scale(float(np.mean(y[train])), std if std > 1e-12 else 1.0)

        yt = torch.from_numpy(((y - self.scale.mean) / self.scale.std).astype(np.float32))
        self._train(x[train], yt[train])
        self.report = {"n_train": int(len(train)), "n_holdout": int(n_hold), "transferred": self.transferred}
        if n_hold >= 2:
            held = [configs[i] for i in hold]
            self.report.update(heldout_report(self.predict(held), y[hold], bitops=self._bitops(held)))
            log_heldout(log, "predictor", self.report)
        return self

    def _bitops(self, configs: list[SubnetConfig]) -> np.ndarray | None:
        if not hasattr(self.space, "stages"):  # the layer walk reads the stages
            return None
        from qcompile.search.cost import bitops

        return np.array([float(bitops(self.space, c)) for c in configs])

    def _train(self, x: torch.Tensor, y: torch.Tensor) -> None:
        opts = self.options
        gen = torch.Generator().manual_seed(self.seed)
        optim = torch.optim.Adam(self.net.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=opts.epochs)
        n = x.shape[0]
        self.net.train()
        try:
            from tqdm.auto import tqdm

            epochs = tqdm(range(opts.epochs), desc="fit predictor", leave=False, disable=None)
        except ImportError:  # pragma: no cover
            epochs = range(opts.epochs)
        for _ in epochs:
            order = torch.randperm(n, generator=gen)
            for i in range(0, n, opts.batch_size):
                idx = order[i : i + opts.batch_size]
                loss = nn.functional.mse_loss(self.net(x[idx]), y[idx])
                optim.zero_grad()
                loss.backward()
                optim.step()
            sched.step()
        self.net.eval()

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        """Predicted accuracy of each config (1-D float64 array, in the units of the fitted accuracies)."""
        x = self.encode(configs)
        if x.shape[0] == 0:
            return np.zeros(0)
        self.net.eval()
        out = self.net(x).double().numpy()
        return self.scale.mean + self.scale.std * out

    __call__ = predict

    # ------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write directory `path`: `predictor.safetensors` (weights) + `predictor.json` (space, options, report)."""
        from safetensors.torch import save as st_save

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.net.state_dict().items()}
        atomic_write_bytes(path / WEIGHTS_FILE, st_save(state))
        doc = {
            "format": FORMAT,
            "kind": "mlp-accuracy-predictor",
            "space": space_dict(self.space),
            "n_in": self.n_in,
            "n_arch": self.n_arch,
            "seed": self.seed,
            "options": self.options.to_dict(),
            "scale": {"mean": self.scale.mean, "std": self.scale.std},
            "report": self.report,
            "transferred": self.transferred,
        }
        atomic_write_text(path / JSON_FILE, json.dumps(doc, indent=2))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, space: Any = None) -> AccuracyPredictor:
        """Read a predictor written by `save`. With `space`, refuse (ConfigError) one built for another space."""
        from safetensors.torch import load_file

        path = Path(path)
        doc = read_doc(path, "mlp-accuracy-predictor")
        space = saved_space(doc, space, path)
        opts = doc["options"]
        pred = cls(space, seed=doc["seed"], options=PredictorOptions(**opts))
        if pred.n_in != doc["n_in"]:
            raise ConfigError("predictor encoding size", doc["n_in"], pred.n_in, f"{path} was fitted for another space")
        pred.net.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
        pred.net.eval()
        pred.scale = _Scale(**doc["scale"])
        pred.report = doc.get("report", {})
        pred.transferred = bool(doc.get("transferred", False))
        return pred

    def __repr__(self) -> str:
        return f"AccuracyPredictor(space={getattr(self.space, 'name', '?')}, seed={self.seed}, report={self.report})"




ENSEMBLE_KIND = "mlp-ensemble"


class MLPEnsemble:
    """The mean of `members` `AccuracyPredictor`s that differ only in their seed (initialisation and batch order).

    Averaging independently initialised networks lowers the variance of a predictor fitted on a few
    hundred samples (Lakshminarayanan et al. 2017, deep ensembles). One seeded split holds out `holdout`
    of the samples for all members, so `report` scores the ensemble on configs no member saw.
    """

    kind = ENSEMBLE_KIND

    def __init__(self, space: Any, seed: int = 0, members: int = 5, options: PredictorOptions | None = None,
                 **kwargs: Any) -> None:
        if isinstance(members, bool) or not isinstance(members, int) or not 1 <= members <= 100:
            raise ConfigError("MLPEnsemble.members", members, "an integer in 1..100")
        first = AccuracyPredictor(space, seed=seed, options=options, **kwargs)
        self.space, self.seed, self.options = space, int(seed), first.options
        member_opts = PredictorOptions(**{**self.options.to_dict(), "holdout": 0.0})
        self.members = [AccuracyPredictor(space, seed=seed + i, options=member_opts) for i in range(members)]
        self.report: dict[str, Any] = {}

    def fit(self, configs: Sequence[SubnetConfig], accuracies: Sequence[float] | np.ndarray) -> MLPEnsemble:
        """Fit every member on the same training part; score the mean on the held-out part (`report`)."""
        configs, y, hold, train = fit_split(configs, accuracies, self.options.holdout, self.seed, field="accuracies")
        n_hold = len(hold)
        for m in self.members:
            m.fit([configs[i] for i in train], y[train])
        self.report = {"n_train": int(len(train)), "n_holdout": int(n_hold), "members": len(self.members)}
        if n_hold >= 2:
            held = [configs[i] for i in hold]
            self.report.update(heldout_report(self.predict(held), y[hold], bitops=self.members[0]._bitops(held)))
            log_heldout(log, "predictor ensemble", self.report)
        return self

    def predict(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        """Mean of the members' predictions (1-D float64, in the fitted units)."""
        return np.mean([m.predict(configs) for m in self.members], axis=0)

    __call__ = predict

    def save(self, path: str | os.PathLike) -> Path:
        """Directory `path`: `predictor.json` (kind, space, report) and one member predictor per `member-NN/`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for i, m in enumerate(self.members):
            m.save(path / f"member-{i:02d}")
        doc = {"format": FORMAT, "kind": ENSEMBLE_KIND, "space": space_dict(self.space), "seed": self.seed,
               "members": len(self.members), "options": self.options.to_dict(), "report": self.report}
        atomic_write_text(path / JSON_FILE, json.dumps(doc, indent=2))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, space: Any = None) -> MLPEnsemble:
        """Read an ensemble written by `save`; with `space`, refuse (ConfigError) one fitted for another space."""
        path = Path(path)
        doc = read_doc(path, ENSEMBLE_KIND, weights=False)
        members = [AccuracyPredictor.load(path / f"member-{i:02d}", space=space) for i in range(int(doc["members"]))]
        ens = cls.__new__(cls)
        ens.space, ens.seed, ens.members = members[0].space, int(doc["seed"]), members
        ens.options = PredictorOptions(**doc["options"])
        ens.report = doc.get("report", {})
        return ens


register_kind("mlp-accuracy-predictor", AccuracyPredictor)
register_kind(ENSEMBLE_KIND, MLPEnsemble)

__all__ = ["AccuracyPredictor", "MLPEnsemble", "PredictorOptions"]
