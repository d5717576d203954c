"""What TEST.FEATURE_CACHE_HASH costs: the image list of a General-10-sized test split keyed
by size and time (the default) against keyed by a hash of every file's bytes.

Writes a synthetic General-10 test split: per member, CoOp's test-split size of JPEG
files of about that dataset's mean file size (below; estimated from the distributed
archives' size over their image count), each a real JPEG with its index after the end
marker so that no two files are equal. Then times ``trainers.parts.feature_cache.image_list``
(the cache key's image part, what every evaluation computes before it reads the cache)
in each mode: warm (files in the page cache, as just written) and cold (each file
dropped from the page cache first with posix_fadvise, as after a reboot or on a node
that never read them), with ``HASH_THREADS`` threads and with one.

    python scripts/bench/bench_feature_hash.py                  # 83,696 files, about 11 GB
    python scripts/bench/bench_feature_hash.py --scale 0.1      # a tenth of each member's files
    python scripts/bench/bench_feature_hash.py --folder /shared/tmp --keep

Needs the disk space it prints first; removes the files unless ``--keep``.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from trainers.parts import feature_cache as fc  # noqa: E402

# member: (CoOp's test-split size, mean JPEG size in KB). The sizes are estimates: the
# archive's size over its number of images.
GENERAL10_TEST = {
    "Caltech101": (2465, 14), "DescribableTextures": (1692, 106), "EuroSAT": (8100, 3),
    "FGVCAircraft": (3333, 270), "Food101": (30300, 50), "OxfordFlowers": (2463, 40),
    "OxfordPets": (3669, 107), "StanfordCars": (8041, 117), "SUN397": (19850, 340),
    "UCF101": (3783, 20),
}


def jpeg_of_about(kb: int, seed: int) -> bytes:
    """A real JPEG (smooth gradient plus noise) of roughly ``kb`` kilobytes."""
    rng = np.random.default_rng(seed)
    side = 64
    while True:
        y, x = np.mgrid[0:side, 0:side]
        base = np.stack([x * 255 // side, y * 255 // side, (x + y) * 127 // side], -1)
        noise = rng.integers(-40, 40, (side, side, 3))
        img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        if buf.tell() >= kb * 1024 or side >= 4096:
            return buf.getvalue()
        side = int(side * 1.05) + 1


def write_split(folder: str, scale: float) -> tuple[list, int]:
    items, total = [], 0
    for member, (count, kb) in GENERAL10_TEST.items():
        blob = jpeg_of_about(kb, seed=len(items))
        sub = os.path.join(folder, member)
        os.makedirs(sub, exist_ok=True)
        for i in range(max(1, round(count * scale))):
            path = os.path.join(sub, f"{i:06d}.jpg")
            with open(path, "wb") as f:
                f.write(blob)
                f.write(f"{member}/{i}".encode())  # after the end marker: every file differs
            total += len(blob) + len(f"{member}/{i}")
            items.append(SimpleNamespace(impath=path, label=i % 100))
    return items, total


def drop_from_page_cache(items: list) -> None:
    os.sync()  # dirty pages cannot be dropped
    for item in items:
        fd = os.open(item.impath, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(items: list, root: str, content_hash: bool, cold: bool, threads: int) -> float:
    if cold:
        drop_from_page_cache(items)
    fc.HASH_THREADS = threads
    start = time.perf_counter()
    out = fc.image_list(items, root, content_hash=content_hash)
    seconds = time.perf_counter() - start
    assert len(out) == len(items) and all(row[3] is not None for row in out)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=None,
                        help="where to write the files (default: the temporary folder)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each member's test images")
    parser.add_argument("--keep", action="store_true", help="leave the files")
    args = parser.parse_args()
    count = sum(max(1, round(n * args.scale)) for n, _ in GENERAL10_TEST.values())
    size = sum(max(1, round(n * args.scale)) * kb for n, kb in GENERAL10_TEST.values()) * 1024 / 1e9
    folder = os.path.join(args.folder or tempfile.gettempdir(), f"bench_feature_hash_{os.getpid()}")
    os.makedirs(folder)
    print(f"writing {count:,} JPEG files, about {size:.1f} GB, under {folder}", flush=True)
    try:
        start = time.perf_counter()
        items, total = write_split(folder, args.scale)
        print(f"written: {len(items):,} files, {total / 1e9:.2f} GB ({total / len(items) / 1024:.0f} KB "
              f"mean) in {time.perf_counter() - start:.0f} s", flush=True)
        threads = fc.HASH_THREADS
        rows = [("size and time (default)", False, False, threads),
                ("size and time, file pages dropped", False, True, threads),
                (f"content hash, warm, {threads} threads", True, False, threads),
                ("content hash, warm, 1 thread", True, False, 1),
                (f"content hash, file pages dropped, {threads} threads", True, True, threads),
                ("content hash, file pages dropped, 1 thread", True, True, 1)]
        print("| image list keyed by | seconds | per 1,000 images (s) | MB/s |")
        print("| --- | --- | --- | --- |")
        timed(items, folder, False, False, threads)  # warm the inodes once
        for name, content_hash, cold, n in rows:
            s = timed(items, folder, content_hash, cold, n)
            rate = f"{total / 1e6 / s:.0f}" if content_hash else "-"
            print(f"| {name} | {s:.2f} | {1000 * s / len(items):.3f} | {rate} |", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
