"""Data: long-tail profiles, data sets (digits, CIFAR, image folders), batched augmentation, sources."""

from ltsam.data.catalog import DATASETS
from ltsam.data.images import ImageSet
from ltsam.data.loading import build_lt_data
from ltsam.data.lt_data import InMemoryLTData, LTData, StreamingLTData
from ltsam.data.profiles import lt_counts, lt_indices
from ltsam.data.sources import BatchSource, InMemoryBatchSource, eval_batches

__all__ = ["DATASETS", "BatchSource", "ImageSet", "InMemoryBatchSource", "InMemoryLTData", "LTData",
           "StreamingLTData", "build_lt_data", "eval_batches", "lt_counts", "lt_indices"]
