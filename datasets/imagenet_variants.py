"""ImageNet's test-only variants (CoOp's domain-generalisation targets).

Each has a copy of ImageNet's classnames.txt; few-shot and base/new do not
apply, as in CoOp.
"""
from __future__ import annotations

import os

from dassl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum

from .base import FewShotDataset
from .data_root import data_root  # noqa: F401  (placeholder, replaced below)
