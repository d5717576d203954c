"""FGVC-Aircraft (variant level): read from the official lists, which CoOp uses as split."""
from __future__ import annotations

import os

from dassl.data.datasets import DATASET_REGISTRY, Datum

from .base import FewShotDataset, Splits
from .errors import DatasetError
from .splits import make_datum


@DATASET_REGISTRY.register()
class FGVCAircraft(FewShotDataset):
    dataset_dir = "fgvc_aircraft"
    section = "fgvcaircraft"
    metric = "mean_acc"
    template = "a photo of a {}, a type of aircraft."
    task_name = "aircraft model recognition"

    def read_splits(self) -> Splits:
        classnames = self._lines("variants.txt")
        cname2lab = {c: i for i, c in enumerate(classnames)}
        return tuple(self._read_list(f"images_variant_{s}.txt", cname2lab) for s in ("train", "val", "test"))

    def _lines(self, name: str) -> list[str]:
        path = os.path.join(self.dataset_dir, name)
        self.require(path, "official list")
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]

    def _read_list(self, name: str, cname2lab: dict[str, int]) -> list[Datum]:
        """Lines ``<image id> <variant, may contain spaces>``."""
        source = os.path.join(self.dataset_dir, name)
        items = []
        for line in self._lines(name):
            imid, _, cname = line.partition(" ")
            if cname not in cname2lab:
                raise DatasetError(f"{source}: variant {cname!r} is not in variants.txt", self.section)
            impath = os.path.join(self.dataset_dir, "images", imid + ".jpg")
            items.append(make_datum(impath, cname2lab[cname], cname, source, self.section))
        return items
