"""The toy benchmark: procedurally drawn images, written on first use.

Three tasks whose classes differ in one visual property (shape, colour, stripe
orientation), 34 images of 32x32 px per class, so a tiny random CLIP can learn
them in seconds on CPU. Each task is written as ``<dest>/<class>/<nn>.png``
and then read by the image-folder adapter, like any user folder. Output is
deterministic (an RNG seeded by the task name) and takes well under a second.
"""
from __future__ import annotations

import logging
import os
import random
from typing import Callable

import numpy as np
from atomic_files import atomic_folder
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

SIZE = 32  # pixels
PER_CLASS = 34  # per class: 17 train (so 16 shots fit) / 7 val / 10 test at 0.5/0.2/0.3

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 70, 230), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle", "cross")
STRIPES = ("horizontal", "vertical", "diagonal")


def _bright(rng: random.Random) -> tuple:
    return tuple(rng.randint(150, 255) for _ in range(3))


def _shape(draw: ImageDraw.ImageDraw, shape: str, rng: random.Random, fill: tuple) -> None:
    """One filled shape of radius 8-12 px near the centre."""
    c = SIZE // 2
    x, y, r = c + rng.randint(-4, 4), c + rng.randint(-4, 4), rng.randint(8, 12)
    if shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif shape == "square":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=fill)
    elif shape == "triangle":
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    else:  # cross
        w = max(2, r // 3)
        draw.rectangle([x - r, y - w, x + r, y + w], fill=fill)
        draw.rectangle([x - w, y - r, x + w, y + r], fill=fill)


def draw_shape(label: str, rng: random.Random) -> Image.Image:
    """Class = shape; colours random (bright shape on a dark background)."""
    im = Image.new("RGB", (SIZE, SIZE), tuple(rng.randint(0, 80) for _ in range(3)))
    _shape(ImageDraw.Draw(im), label, rng, _bright(rng))
    return im


def draw_colour(label: str, rng: random.Random) -> Image.Image:
    """Class = colour of a random shape on a grey background."""
    im = Image.new("RGB", (SIZE, SIZE), (rng.randint(90, 160),) * 3)
    fill = tuple(min(255, max(0, v + rng.randint(-25, 25))) for v in COLOURS[label])
    _shape(ImageDraw.Draw(im), rng.choice(SHAPES[:3]), rng, fill)
    return im


def draw_stripes(label: str, rng: random.Random) -> Image.Image:
    """Class = stripe orientation; period, phase and colours random."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    coord = {"horizontal": yy, "vertical": xx, "diagonal": xx + yy}[label]
    half = rng.randint(3, 5)
    on = ((coord + rng.randint(0, 2 * half)) // half) % 2 == 1  # (SIZE, SIZE)
    dark = np.array([rng.randint(0, 70) for _ in range(3)], dtype=np.uint8)
    light = np.array(_bright(rng), dtype=np.uint8)
    return Image.fromarray(np.where(on[..., None], light, dark))  # (SIZE, SIZE, 3)


TASKS: dict[str, tuple[tuple[str, ...], Callable]] = {
    "shapes": (SHAPES, draw_shape),
    "colours": (tuple(COLOURS), draw_colour),
    "stripes": (STRIPES, draw_stripes),
}


def generate(task: str, dest: str, per_class: int = PER_CLASS) -> None:
    """Write one toy task as ``dest/<class>/<nn>.png``, atomically (atomic_files.atomic_folder)."""
    classes, draw = TASKS[task]

    def fill(folder: str) -> None:
        rng = random.Random(f"toy/{task}")
        for cname in classes:
            os.makedirs(os.path.join(folder, cname))
            for i in range(per_class):
                draw(cname, rng).save(os.path.join(folder, cname, f"{i:02d}.png"))
    if atomic_folder(dest, fill):  # else another run wrote the same (deterministic) task first
        logger.info("Wrote toy task %r to %s", task, dest)


# Names accepted by DATASET.IMAGE_FOLDER.GENERATE.
GENERATORS: dict[str, Callable[[str], None]] = {
    f"toy_{task}": (lambda dest, task=task: generate(task, dest)) for task in TASKS
}
