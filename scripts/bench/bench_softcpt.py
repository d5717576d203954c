"""Benchmark SoftCPT's exact speed-ups, each off and on, side by side in one run.

    python scripts/bench/bench_softcpt.py                       # RN50 and ViT-B/16, CPU defaults
    python scripts/bench/bench_softcpt.py --scale 1 --batch-size 32 --device cuda --prec fp16

Full-size CLIP architectures with random weights (no download), a multi-task
set-up with General-10's class counts times ``--scale``, and a synthetic batch
whose labels are drawn uniformly over all classes (as few-shot sampling gives).
For every backbone it prints:

* train step time (forward, backward, SGD step), in full and on the text side
  alone (image features given: the image encoder's share is the same in every
  row), and the step's peak memory, with the speed-ups off, each alone and all
  on (TRUNCATE_TEXT cuts prompts after the longest EOS; SKIP_ABSENT_TASKS
  encodes only the classes of tasks present in the batch), plus class sampling
  (CLS_SAMPLE_RATE, not exact) for reference;
* evaluation time over ``--eval-batches`` test batches: class features
  recomputed for every batch (naive) against once per evaluation (CACHE_EVAL_TEXT).

Peak memory is what the step allocates on top of the model: torch's counter on
CUDA, and on CPU the largest total size of tensor storages alive at once while
the step runs (tracked op by op in the untimed warm-up run). Each row runs
once to warm up (and measure memory), then ``--repeats`` timed times, rows
round-robin (median). On CPU, times are this process's CPU seconds (see ``clock``).
The defaults take about 15 minutes on 2 busy CPU cores; on a GPU use
``--scale 1 --batch-size 32 --repeats 5``. A measurement script, not a test.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import weakref
from typing import Callable

# Idle OpenMP threads sleep instead of spinning, so that CPU time counts work only
# (spinning threads burn CPU time while waiting for other processes' cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from datasets.task_info import TaskInfo  # noqa: E402
from trainers.backbone import load_clip  # noqa: E402
from trainers.base import MultiTaskCLIP  # noqa: E402
from trainers.losses import multitask_loss, training_columns  # noqa: E402
from trainers.softcpt import VARIANT_KEYS, VARIANTS, SoftCPTHead  # noqa: E402

# General-10 in task order (docs/benchmarks.md#general-10): (key, class count, task name).
GENERAL10 = [
    ("Caltech101", 100, "generic object recognition"), ("DescribableTextures", 47, "texture recognition"),
    ("EuroSAT", 10, "satellite land use classification"), ("FGVCAircraft", 100, "aircraft model recognition"),
    ("Food101", 101, "food recognition"), ("OxfordFlowers", 102, "flower species recognition"),
    ("OxfordPets", 37, "pet breed recognition"), ("StanfordCars", 196, "car model recognition"),
    ("SUN397", 397, "scene recognition"), ("UCF101", 101, "human action recognition"),
]
WORDS = ("red", "small", "striped", "mountain", "golden", "wild", "old", "river", "common", "spotted")


def general10(scale: float) -> TaskInfo:
    """General-10's tasks with ceil(scale * K_t) classes each; class names of 2-3 words."""
    classnames = []
    for t, (_, k, name) in enumerate(GENERAL10):
        n = max(1, math.ceil(scale * k))
        noun = name.split()[0]
        classnames.append(tuple(f"{WORDS[(j + t) % 10]} {noun} {j}" for j in range(n)))
    return TaskInfo(tuple(k for k, _, _ in GENERAL10), tuple(n for _, _, n in GENERAL10),
                    tuple(classnames), ("overall_acc",) * len(GENERAL10))


class StoragePeak(TorchDispatchMode):
    """Largest total size of tensor storages created inside the block and alive at once (CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                self._track(t.untyped_storage())
        return out

    def _track(self, storage) -> None:
        key = id(storage)
        if key in self._refs and self._refs[key]() is storage:
            return
        size = storage.nbytes()
        self.live += size
        self.peak = max(self.peak, self.live)
        self._refs[key] = weakref.ref(storage, lambda _, k=key, s=size: self._free(k, s))

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self._refs.pop(key, None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def clock(device: torch.device) -> float:
    """Seconds: wall time on CUDA (synchronised); on CPU this process's CPU time, which other
    processes on a shared machine do not inflate (with N threads it is up to N x wall time)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def timed_rows(fns: list[Callable[[], None]], device: torch.device, repeats: int) -> list[float]:
    """Median time of each ``fn`` (warmed up before), run round-robin so that a change of
    machine load during the run affects every row alike."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = clock(device)
            fn()
            times[i].append(clock(device) - start)
    return [statistics.median(t) for t in times]


def peak_bytes(fn: Callable[[], None], device: torch.device) -> int:
    """Bytes ``fn`` allocates at its peak on top of what exists (also its warm-up run)."""
    if device.type == "cuda":
        fn()  # warm-up: cuDNN/cuBLAS workspaces and the optimizer state exist afterwards
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with StoragePeak() as tracker:
        fn()
    return tracker.peak


def bench_backbone(name: str, args: argparse.Namespace, device: torch.device) -> None:
    torch.manual_seed(0)
    info = general10(args.scale)
    clip_model = load_clip(name, precision=args.prec, device=device, pretrained=False)
    kwargs = dict(zip((k.lower() for k in VARIANT_KEYS), VARIANTS[args.variant]))
    head = SoftCPTHead(info.names, info.classnames, clip_model.token_embedding,
                       clip_model.text_projection.shape[1], **kwargs).to(device)
    model = MultiTaskCLIP(clip_model, head).to(device)
    optim = torch.optim.SGD(head.parameters(), lr=0.002, momentum=0.9, weight_decay=5e-4)
    size = clip_model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    toc = head.task_of_class
    g = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch_size, 3, size, size, generator=g).to(device)
    labels = torch.randint(0, len(toc), (args.batch_size,), generator=g).to(device)
    present = len(torch.unique(toc[labels]))
    print(f"\n## {name}: {len(toc)} classes in {info.num_tasks} tasks (scale {args.scale}), "
          f"batch {args.batch_size} at {size} px with {present} tasks present, variant {args.variant}, "
          f"{args.prec}, {device}")

    with torch.no_grad():
        u = model.encode_image(images)  # for the text-side timings: the same in every row
    scale = model.logit_scale.exp().float()

    def step(truncate: bool, skip: bool, rate: float = 0.0, text_only: bool = False):
        def run() -> None:
            model.text_encoder.truncate = truncate
            columns = training_columns(labels, toc, skip, rate)
            targets = torch.searchsorted(columns, labels)
            if text_only:  # image features given: what the speed-ups act on
                logits = scale * u @ model.text_features(columns).t()
            else:
                logits = model(images, columns)
            loss = multitask_loss(logits, targets, toc[labels], toc[columns])
            optim.zero_grad()
            loss.backward()
            optim.step()
        return run

    model.encode_image(images)  # warm-up
    image_time = timed_rows([lambda: model.encode_image(images)], device, args.repeats)[0]
    rows = [("all off", (False, False)), ("TRUNCATE_TEXT", (True, False)),
            ("SKIP_ABSENT_TASKS", (False, True)), ("all on", (True, True)),
            ("all on + CLS_SAMPLE_RATE 0.1 (not exact)", (True, True, 0.1))]
    full = [step(*options) for _, options in rows]
    text = [step(*options, text_only=True) for _, options in rows]
    peaks = [peak_bytes(fn, device) / 2 ** 20 for fn in full]  # also the warm-up runs
    for fn in text:
        fn()  # warm-up
    full_t = timed_rows(full, device, args.repeats)
    text_t = timed_rows(text, device, args.repeats)
    print(f"image encoder alone (part of every full step): {image_time:.3f} s")
    print(f"{'train step':<42}{'full (s)':>10}{'speed-up':>10}{'text side':>11}{'speed-up':>10}"
          f"{'peak MiB':>10}{'memory':>9}")
    for (label, _), t, tt, m in zip(rows, full_t, text_t, peaks):
        print(f"{label:<42}{t:>10.3f}{full_t[0] / t:>9.2f}x{tt:>11.3f}{text_t[0] / tt:>9.2f}x"
              f"{m:>10.1f}{m / peaks[0]:>8.2f}x")

    test_images = [torch.randn(args.batch_size, 3, size, size, generator=g).to(device)
                   for _ in range(args.eval_batches)]

    def evaluate(cached: bool, truncate: bool) -> Callable[[], None]:
        @torch.no_grad()
        def run() -> None:
            model.text_encoder.truncate = truncate
            h = model.text_features() if cached else None  # once per evaluation
            for x in test_images:
                model(x, text_features=h)  # h None: every class prompt again, per batch
        return run

    rows = [("naive: text per batch, 77 tokens", evaluate(False, False)),
            ("naive: text per batch, truncated", evaluate(False, True)),
            ("CACHE_EVAL_TEXT, truncated", evaluate(True, True))]
    for _, fn in rows:
        fn()  # warm-up
    times = timed_rows([fn for _, fn in rows], device, args.repeats)
    print(f"{'evaluation (' + str(args.eval_batches) + ' batches)':<42}{'time (s)':>10}{'speed-up':>10}")
    for (label, _), t in zip(rows, times):
        print(f"{label:<42}{t:>10.3f}{times[0] / t:>9.2f}x")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbones", nargs="+", default=["RN50", "ViT-B/16"])
    p.add_argument("--scale", type=float, default=0.05, help="fraction of General-10's class counts")
    p.add_argument("--batch-size", type=int, default=8, help="train and test batch size")
    p.add_argument("--eval-batches", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row (median), after a warm-up")
    p.add_argument("--variant", default="NATA", choices=sorted(VARIANTS))
    p.add_argument("--prec", default="fp32", choices=["fp32", "fp16"], help="fp16 needs CUDA")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, times in "
          + ("wall seconds" if device.type == "cuda" else "CPU seconds of this process")
          + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""))
    for name in args.backbones:
        bench_backbone(name, args, device)


if __name__ == "__main__":
    main()
