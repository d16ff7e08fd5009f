"""scikit-learn's bundled digits (1797 8x8 grey images, 10 classes): the embedded default dataset.

It ships inside scikit-learn, so tests and the demo need no download. The split is deterministic
(a stratified permutation seeded by `seed`), images are upsampled bilinearly to `resolution` and
replicated to `in_channels`, then normalised with the training split's mean and std.
"""

from __future__ import annotations

import numpy as np
import torch

from qcompile.data.base import ArrayDataset, DatasetSplits, resize
from qcompile.errors import ConfigError


def stratified_split(
    labels: np.ndarray, fractions: tuple[float, float, float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of a per-class train/val/test split; each class is cut in the same proportions."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ConfigError("split", fractions, "three non-negative fractions (train, val, test) summing to 1")
    rng = np.random.RandomState(seed)
    parts: list[list[int]] = [[], [], []]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(fractions[1] * len(idx)))
        n_test = int(round(fractions[2] * len(idx)))
        parts[2].extend(idx[:n_test])
        parts[1].extend(idx[n_test : n_test + n_val])
        parts[0].extend(idx[n_test + n_val :])
    return tuple(np.sort(np.asarray(p, dtype=np.int64)) for p in parts)  # type: ignore[return-value]


def normalise(train: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Standardise every split with the training split's per-channel mean and std."""
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return tuple((t - mean) / std for t in (train, *others))


def normalisation(
    resolution: int = 32, in_channels: int = 3, seed: int = 0, split: tuple[float, float, float] = (0.7, 0.1, 0.2)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel `(mean, std)` (1 x C x 1 x 1) that `digits` standardises with: images from elsewhere (e.g.
    `qcompile run a.png`), scaled to [0, 1] and resized, become inputs the trained model expects."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = resize(x, resolution).clamp(0.0, 1.0).expand(-1, in_channels, -1, -1)
    tr = stratified_split(d.target, split, seed)[0]
    t = x[tr]
    return t.mean(dim=(0, 2, 3), keepdim=True), t.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)


def digits(
    resolution: int = 32,
    in_channels: int = 3,
    seed: int = 0,
    split: tuple[float, float, float] = (0.7, 0.1, 0.2),
) -> DatasetSplits:
    """Digits at `resolution` x `resolution` with `in_channels` channels; deterministic for a `seed`."""
    from sklearn.datasets import load_digits

    if in_channels < 1:
        raise ConfigError("in_channels", in_channels, ">= 1")
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = resize(x, resolution).clamp(0.0, 1.0).expand(-1, in_channels, -1, -1).contiguous()
    y = torch.from_numpy(d.target.astype(np.int64))
    tr, va, te = stratified_split(d.target, split, seed)
    xs = normalise(x[tr], x[va], x[te])
    return DatasetSplits(
        train=ArrayDataset(xs[0].contiguous(), y[tr], 10, "digits/train"),
        val=ArrayDataset(xs[1].contiguous(), y[va], 10, "digits/val"),
        test=ArrayDataset(xs[2].contiguous(), y[te], 10, "digits/test"),
    )
