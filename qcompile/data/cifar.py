"""CIFAR-10 / CIFAR-100 in the original "python version" layout (pickled batch dicts).

CIFAR-10: `data_batch_1..5` (train) and `test_batch`, labels under `labels`.
CIFAR-100: `train` and `test`, labels under `fine_labels`. `data` is uint8 N x 3072 in CHW order.
The validation split is the last `val_fraction` of the training batches per class (deterministic).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from qcompile.data.base import ArrayDataset, DatasetSplits, resize
from qcompile.data.digits import normalise, stratified_split
from qcompile.errors import ConfigError


def _load_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        raise ConfigError("cifar batch", str(path), "a CIFAR python-version batch file", str(e)) from e
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
    if "data" not in d or label_key not in d:
        raise ConfigError("cifar batch", str(path), f"a dict with keys 'data' and '{label_key}'")
    x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return x, np.asarray(d[label_key], dtype=np.int64)


def cifar(
    root: str | os.PathLike,
    num_classes: int = 10,
    resolution: int = 32,
    in_channels: int = 3,
    seed: int = 0,
    val_fraction: float = 0.1,
) -> DatasetSplits:
    """Load CIFAR-`num_classes` (10 or 100) python batches from `root`."""
    root = Path(root)
    if num_classes == 10:
        train_files, test_files, key = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"
    elif num_classes == 100:
        train_files, test_files, key = ["train"], ["test"], "fine_labels"
    else:
        raise ConfigError("num_classes", num_classes, (10, 100))
    if in_channels not in (1, 3):
        raise ConfigError("in_channels", in_channels, (1, 3))
    missing = [f for f in train_files + test_files if not (root / f).is_file()]
    if missing:
        raise ConfigError(
            "root", str(root), f"a directory holding {train_files + test_files}", f"missing {missing}"
        )

    def load(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(_load_batch(root / f, key) for f in files))
        x = torch.from_numpy(np.concatenate(xs)).float() / 255.0
        if in_channels == 1:  # ITU-R 601 luma, as PIL's "L" conversion
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        return resize(x, resolution), torch.from_numpy(np.concatenate(ys))

    xtr, ytr = load(train_files)
    xte, yte = load(test_files)
    tr, va, _ = stratified_split(ytr.numpy(), (1.0 - val_fraction, val_fraction, 0.0), seed)
    a, b, c = normalise(xtr[tr], xtr[va], xte)
    tag = f"cifar{num_classes}"
    return DatasetSplits(
        ArrayDataset(a.contiguous(), ytr[tr], num_classes, f"{tag}/train"),
        ArrayDataset(b.contiguous(), ytr[va], num_classes, f"{tag}/val"),
        ArrayDataset(c.contiguous(), yte, num_classes, f"{tag}/test"),
    )
