"""`load_dataset(name, ...)`: one entry point for every dataset qcompile knows."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from qcompile.data.base import DatasetSplits
from qcompile.data.cifar import cifar
from qcompile.data.digits import digits
from qcompile.data.folder import image_folder
from qcompile.errors import ConfigError

DATASETS: dict[str, Callable[..., DatasetSplits]] = {
    "digits": digits,
    "image_folder": image_folder,
    "cifar10": partial(cifar, num_classes=10),
    "cifar100": partial(cifar, num_classes=100),
}


def load_dataset(name: str, **kwargs: object) -> DatasetSplits:
    """Load dataset `name` (see `DATASETS`); keyword arguments go to its loader (root, resolution, ...)."""
    key = name.lower().replace("-", "_")
    if key not in DATASETS:
        raise ConfigError("dataset", name, sorted(DATASETS))
    try:
        return DATASETS[key](**kwargs)
    except TypeError as e:  # unknown keyword: name it instead of a bare TypeError
        raise ConfigError(
            f"dataset {name!r} options", sorted(kwargs), "the loader's parameters", str(e)
        ) from e
