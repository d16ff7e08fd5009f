"""Datasets: `digits` (embedded default), image folders, CIFAR-10/100 python batches.

All loaders return `DatasetSplits` of `ArrayDataset`s; `ArrayDataset.loader(...)` yields
`(images float32 NCHW, labels int64)` batches at a per-batch resolution.
"""

from qcompile.data.base import ArrayDataset, BatchLoader, DatasetSplits, resize
from qcompile.data.cifar import cifar
from qcompile.data.digits import digits, stratified_split
from qcompile.data.folder import image_folder
from qcompile.data.registry import DATASETS, load_dataset

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "BatchLoader",
    "DatasetSplits",
    "cifar",
    "digits",
    "image_folder",
    "load_dataset",
    "resize",
    "stratified_split",
]
