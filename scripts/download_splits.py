"""Fetch CoOp's split files (and class-name files) from Google Drive into an existing $DATA.

    python scripts/download_splits.py --root $DATA                     # datasets whose folder exists
    python scripts/download_splits.py --root $DATA --datasets OxfordPets EuroSAT
    python scripts/download_splits.py --root $DATA --all --dry-run

Files already present are skipped. Each file is downloaded to a temporary name
and renamed only once complete (and, for JSON, once it parses), so an
interrupted download never leaves a file the datasets would read. ImageNet's
classnames.txt is also copied into the ImageNet variants' folders that exist.
See DATASETS.md#split-files.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

logger = logging.getLogger("download_splits")


@dataclass(frozen=True)
class SplitSource:
    dataset: str  # DATASET.NAME
    folder: str  # folder under $DATA
    filename: str
    drive_id: str  # Google Drive file id (CoOp's DATASETS.md)


SOURCES = (
    SplitSource("Caltech101", "caltech-101", "split_zhou_Caltech101.json",
                "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN"),
    SplitSource("OxfordPets", "oxford_pets", "split_zhou_OxfordPets.json",
                "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs"),
    SplitSource("StanfordCars", "stanford_cars", "split_zhou_StanfordCars.json",
                "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT"),
    SplitSource("OxfordFlowers", "oxford_flowers", "split_zhou_OxfordFlowers.json",
                "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT"),
    SplitSource("OxfordFlowers", "oxford_flowers", "cat_to_name.json", "1AkcxCXeK_RCGCEC_GvmWxjcjaNhu-at0"),
    SplitSource("Food101", "food-101", "split_zhou_Food101.json", "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl"),
    SplitSource("SUN397", "sun397", "split_zhou_SUN397.json", "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq"),
    SplitSource("DescribableTextures", "dtd", "split_zhou_DescribableTextures.json",
                "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x"),
    SplitSource("EuroSAT", "eurosat", "split_zhou_EuroSAT.json", "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o"),
    SplitSource("UCF101", "ucf101", "split_zhou_UCF101.json", "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y"),
    SplitSource("ImageNet", "imagenet", "classnames.txt", "1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF"),
)
# Test-only ImageNet variants keep a copy of ImageNet's classnames.txt (CoOp's layout).
IMAGENET_VARIANTS = {"ImageNetV2": "imagenetv2", "ImageNetSketch": "imagenet-sketch",
                     "ImageNetA": "imagenet-adversarial", "ImageNetR": "imagenet-rendition"}


def plan(root: str, datasets: Optional[Sequence[str]] = None, everything: bool = False) -> list[SplitSource]:
    """The files to fetch: for the named datasets, all, or those whose folder exists; minus present ones."""
    names = {s.dataset for s in SOURCES}
    unknown = sorted(set(datasets or ()) - names - set(IMAGENET_VARIANTS))
    if unknown:
        raise SystemExit(f"unknown dataset(s) {unknown}; valid: {sorted(names | set(IMAGENET_VARIANTS))}")
    wanted = set(datasets or ()) | ({"ImageNet"} if set(datasets or ()) & set(IMAGENET_VARIANTS) else set())
    out = []
    for s in SOURCES:
        present = os.path.isdir(os.path.join(root, s.folder))
        chosen = everything or s.dataset in wanted or (not datasets and present)
        if chosen and not os.path.exists(os.path.join(root, s.folder, s.filename)):
            out.append(s)
    return out


class FetchError(RuntimeError):
    """One file could not be fetched: the message names it and how to fetch it by hand."""


def drive_url(source: SplitSource) -> str:
    return f"https://drive.google.com/file/d/{source.drive_id}"


def fetch(source: SplitSource, root: str, download: Callable[..., object]) -> str:
    """Download one file to a temporary name, check it, then rename it into place. A failure
    leaves nothing behind (a folder made for it is removed again) and raises FetchError."""
    dest = os.path.join(root, source.folder, source.filename)
    folder = os.path.dirname(dest)
    made = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    tmp = dest + ".part"
    try:
        download(id=source.drive_id, output=tmp, quiet=False)
        if dest.endswith(".json"):
            with open(tmp) as f:
                json.load(f)  # a Drive error page is not JSON: never install it
        os.replace(tmp, dest)
    except Exception as err:  # noqa: BLE001 - offline, quota page, Drive's own errors: one line
        lines = str(err).strip().splitlines()
        reason = f"{type(err).__name__}: {lines[0][:160]}" if lines else type(err).__name__
        if isinstance(err, json.JSONDecodeError):
            reason = "Drive sent a web page, not the file (its quota or a sign-in page)"
        raise FetchError(f"cannot fetch {source.filename} for {source.dataset} ({reason}). Fetch it by "
                         f"hand from {drive_url(source)} (on a machine with network access if this one "
                         f"has none) and put it at {dest} (DATASETS.md#split-files).") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        if made and os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)
    return dest


def copy_imagenet_classnames(root: str, variants: Optional[Sequence[str]] = None) -> list[str]:
    """Copy imagenet/classnames.txt into existing variant folders that lack it."""
    src = os.path.join(root, "imagenet", "classnames.txt")
    copied = []
    for name, folder in IMAGENET_VARIANTS.items():
        target_dir = os.path.join(root, folder)
        wanted = variants is None or name in variants
        dest = os.path.join(target_dir, "classnames.txt")
        if wanted and os.path.isfile(src) and os.path.isdir(target_dir) and not os.path.exists(dest):
            shutil.copyfile(src, dest)
            copied.append(dest)
    return copied


def main(argv: Optional[Sequence[str]] = None, download: Optional[Callable[..., object]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="$DATA, the folder holding the datasets (must exist)")
    p.add_argument("--datasets", nargs="+", help="DATASET.NAME values to fetch for (folders are created)")
    p.add_argument("--all", action="store_true", help="fetch for every dataset (folders are created)")
    p.add_argument("--dry-run", action="store_true", help="list what would be fetched")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = os.path.abspath(os.path.expanduser(args.root))
    if not os.path.isdir(root):
        raise SystemExit(f"--root {root} does not exist: create $DATA first (see DATASETS.md#split-files)")
    todo = plan(root, args.datasets, args.all)
    failed = 0
    if not todo:
        logger.info("Nothing to fetch under %s (files present, or no dataset folder; see --datasets).", root)
    for source in todo:
        dest = os.path.join(root, source.folder, source.filename)
        if args.dry_run:
            logger.info("would fetch %s (Drive id %s)", dest, source.drive_id)
            continue
        if download is None:
            import gdown
            download = gdown.download
        try:
            logger.info("fetching %s", fetch(source, root, download))
        except FetchError as err:
            print(f"error: {err}", file=sys.stderr)
            failed += 1
    if failed:
        print(f"{failed} of {len(todo)} file(s) not fetched; the others are in place.", file=sys.stderr)
        return 1
    if not args.dry_run:
        for dest in copy_imagenet_classnames(root, args.datasets):
            logger.info("copied ImageNet's classnames.txt to %s", dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
