"""Data: sources, the indexed dataset and imbalance subsampling."""

from icone.data.arrays import Dataset, Split
from icone.data.dataset import IndexedDataset
from icone.data.read_options import ReadOptions
from icone.data.sources import load_dataset, resolve

__all__ = ["Dataset", "IndexedDataset", "ReadOptions", "Split", "load_dataset", "resolve"]
