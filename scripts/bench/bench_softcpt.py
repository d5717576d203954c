"""Benchmark SoftCPT's exact speed-ups, each off and on, side by side in one run.

    python scripts/bench/bench_softcpt.py                       # RN50 and ViT-B/16, CPU defaults
    python scripts/bench/bench_softcpt.py --scale 1 --batch-size 32 --device cuda --prec fp16
    python scripts/bench/bench_softcpt.py --eval-cache --backbones ViT-B/16 --batch-size 32

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

With ``--eval-cache`` it instead measures the image-feature cache (TEST.FEATURE_CACHE):
zero-shot CLIP evaluates a synthetic test set of ``--eval-images`` JPEGs (224 px,
random-weight ``--backbones``, the real data pipeline) twice, each time with a freshly
built trainer sharing one cache folder, as two runs of a sweep do: the first encodes
and stores the features, the second reads them and encodes no image (counted).

With ``--text-side`` it prints instead the text side of one training step
(forward, backward, SGD step; image features given; every class encoded) for
the heads of ``--text-heads``, on class names of 1 to 12 tokens: the reference's
77-token path, then TRUNCATE_TEXT, + LENGTH_BUCKETS, + SHARED_PREFIX added in
turn. General-10's full size (docs/speed.md#text-encoder):

    python scripts/bench/bench_softcpt.py --text-side --backbones ViT-B/16 --scale 1 \
        --ref-scale 0.1 --batch-size 32 --repeats 0

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

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, REPO)

from config.softcpt import VARIANT_KEYS, VARIANTS  # noqa: E402
from datasets.task_info import TaskInfo  # noqa: E402
from trainers.coop import CoOpHead  # noqa: E402
from trainers.parts.backbone import load_clip  # noqa: E402
from trainers.parts.base import MultiTaskCLIP  # noqa: E402
from trainers.parts.losses import multitask_loss, training_columns  # noqa: E402
from trainers.parts.prompt import num_tokens  # noqa: E402
from trainers.softcpt import SoftCPTHead  # noqa: E402

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


# Words per class name in the text-side benchmark, cycled over classes: 1 to 12 tokens
# (each word is one BPE token), mostly short as in General-10, a few long ones.
NAME_WORDS = (1, 1, 2, 2, 2, 3, 3, 4, 5, 6, 8, 12)


def general10_varied(scale: float) -> TaskInfo:
    """General-10's tasks with ceil(scale * K_t) classes each; names of 1 to 12 tokens."""
    classnames = []
    for t, (_, k, name) in enumerate(GENERAL10):
        noun = name.split()[0]
        n = max(1, math.ceil(scale * k))
        words = [NAME_WORDS[(5 * j + t) % len(NAME_WORDS)] for j in range(n)]
        classnames.append(tuple(" ".join([WORDS[(j + i) % 10] for i in range(w - 1)] + [noun])
                                for j, w in enumerate(words)))
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


def write_eval_benchmark(root: str, images: int) -> str:
    """Four image-folder tasks of four classes (noise JPEGs, 256 px), ~``images`` of them for
    test; returns the dataset config file."""
    from PIL import Image
    per_class = max(2, math.ceil(images / 16 / 0.7))  # SPLIT_RATIOS below: 70% test
    rng = torch.Generator().manual_seed(0)
    tasks = []
    for t in range(4):
        for c in range(4):
            folder = os.path.join(root, f"task{t}", f"class{c}")
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (256, 256, 3), generator=rng, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(os.path.join(folder, f"{i:03d}.jpg"))
        tasks.append(f"      - KEY: task{t}\n        NAME: task {t}\n"
                     f"        IMAGE_FOLDER: {{DIR: task{t}, SPLIT_RATIOS: [0.2, 0.1, 0.7]}}\n")
    path = os.path.join(root, "bench.yaml")
    with open(path, "w") as f:
        f.write('DATASET:\n  NAME: "MultiTask"\n  MULTITASK:\n    TASKS:\n' + "".join(tasks))
    return path


def bench_eval_cache(name: str, args: argparse.Namespace, device: torch.device) -> None:
    """Zero-shot CLIP evaluates one test set twice through one feature-cache folder."""
    import contextlib
    import tempfile

    from dassl.engine import build_trainer
    from dassl.utils import set_random_seed

    import datasets  # noqa: F401  (registers the datasets)
    import train
    from trainers.parts import feature_cache

    with tempfile.TemporaryDirectory() as tmp:
        dataset_cfg = write_eval_benchmark(tmp, args.eval_images)
        os.makedirs(os.path.join(tmp, "output"))
        cfg = train.setup_cfg(train.build_parser().parse_args([
            "--root", tmp, "--seed", "1", "--trainer", "ZeroshotCLIP", "--backbone", name,
            "--dataset-config-file", dataset_cfg,
            "--config-file", os.path.join(REPO, "configs/trainers/ZeroshotCLIP/vit_b16_ep50.yaml"),
            "--output-dir", os.path.join(tmp, "output"),
            "MODEL.BACKBONE.PRETRAINED", "False", "TRAINER.ZSCLIP.PREC", args.prec,
            "USE_CUDA", str(device.type == "cuda"), "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TEST.BATCH_SIZE", str(args.batch_size),
            "TEST.FEATURE_CACHE_DIR", os.path.join(tmp, "features")]))
        rows = []
        for run in ("first run (encodes, stores)", "second run (reads)"):
            quiet = open(os.devnull, "w")
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                set_random_seed(1)  # the same random weights in both runs, as a sweep has
                trainer = build_trainer(cfg)  # a fresh model: nothing memoised in between
                encoded: list[int] = []
                trainer.model.image_encoder.register_forward_hook(
                    lambda _m, inputs, _o: encoded.append(len(inputs[0])))
                start_wall, start = time.perf_counter(), clock(device)
                score = trainer.test()
                seconds, wall = clock(device) - start, time.perf_counter() - start_wall
            quiet.close()
            rows.append((run, seconds, wall, sum(encoded), score))
        n = len(trainer.dm.dataset.test)
        visual = trainer.model.image_encoder
        start = time.perf_counter()
        object.__setattr__(visual, feature_cache._FINGERPRINT_ATTR, None)
        feature_cache.weights_fingerprint(visual)
        hash_s = time.perf_counter() - start
        size = sum(os.path.getsize(os.path.join(tmp, "features", f))
                   for f in os.listdir(os.path.join(tmp, "features")))
    print(f"\n## image-feature cache: {name} (random weights), {n} test images at 224 px, "
          f"batch {args.batch_size}, {args.prec}, {device}")
    print(f"{'evaluation of the test set':<32}{'time (s)':>10}{'wall (s)':>10}{'images encoded':>16}"
          f"{'score':>8}")
    for run, seconds, wall, count, score in rows:
        print(f"{run:<32}{seconds:>10.2f}{wall:>10.2f}{count:>16}{score:>8.2f}")
    print(f"speed-up of the second run: {rows[0][1] / rows[1][1]:.1f}x; cache file {size / 2 ** 20:.2f} MiB; "
          f"hashing the image encoder's weights (part of both runs): {hash_s:.2f} s wall")
# Text-side rows: (label, TRUNCATE_TEXT, LENGTH_BUCKETS, SHARED_PREFIX), each adding one speed-up.
TEXT_ROWS = [("77 tokens (reference path)", False, False, False), ("+ TRUNCATE_TEXT", True, False, False),
             ("+ LENGTH_BUCKETS", True, True, False), ("+ SHARED_PREFIX", True, True, True)]
TEXT_HEADS = ("NATA", "NATS", "CATA", "CATS", "CSTA", "CoOp-CA", "CoOp-MT")


def text_head(kind: str, clip_model: torch.nn.Module, info: TaskInfo) -> torch.nn.Module:
    """A SoftCPT variant's head (spec defaults: N_CTX 16, TASK_N_CTX 4, CLASS_N_CTX 4) or
    CoOp's with 16 context vectors per task (CA) or for all tasks (MT)."""
    if kind.startswith("CoOp"):
        return CoOpHead(info, clip_model.token_embedding, n_ctx=16,
                        sharing="task" if kind == "CoOp-CA" else "all")
    kwargs = dict(zip((k.lower() for k in VARIANT_KEYS), VARIANTS[kind]))
    return SoftCPTHead(info.names, info.classnames, clip_model.token_embedding,
                       clip_model.text_projection.shape[1], **kwargs)


def bench_text_side(name: str, args: argparse.Namespace, device: torch.device) -> None:
    """The text side of one training step (image features given) at General-10's size:
    the reference's 77-token path, then each text speed-up added in turn.

    Rows marked ``*`` (the plain path: 77 tokens, truncated, length buckets) run at
    ``--ref-scale`` and are scaled up linearly by the class count: on the plain path
    every class adds the same rows (the longest name, hence the truncation, is the same),
    and at full size the 77-token step does not fit in a small machine's memory (~30 GB).
    Their per-call overhead is scaled up too, so their times are if anything too high
    for the length buckets. The shared-prefix row runs at ``--scale``.
    """
    clip_model = load_clip(name, precision=args.prec, device=device, pretrained=False)
    info, ref_info = general10_varied(args.scale), general10_varied(args.ref_scale or args.scale)
    factor = len(info.all_classnames) / len(ref_info.all_classnames)
    lengths = torch.tensor([num_tokens(c) for c in info.all_classnames]).float()
    ref_max = max(num_tokens(c) for c in ref_info.all_classnames)
    g = torch.Generator().manual_seed(1)
    u = torch.nn.functional.normalize(torch.randn(args.batch_size, clip_model.text_projection.shape[1],
                                                  generator=g), dim=-1).to(device)
    print(f"\n## text side of a training step, {name} text tower, random weights: "
          f"{len(info.all_classnames)} classes in {info.num_tasks} tasks (scale {args.scale}), names of "
          f"{int(lengths.min())} to {int(lengths.max())} tokens (mean {lengths.mean():.2f}), batch "
          f"{args.batch_size}, image features given, every class encoded (SKIP_ABSENT_TASKS off), "
          f"{args.prec}, {device}")
    if factor != 1:
        print(f"* measured on {len(ref_info.all_classnames)} classes (scale {args.ref_scale}, longest "
              f"name {ref_max} tokens as at full size) and multiplied by {factor:.2f}")
    print(f"{'head / text speed-ups':<36}{'time (s)':>10}{'speed-up':>10}{'peak MiB':>11}{'memory':>9}")

    def step(kind: str, task_info: TaskInfo, switches: tuple) -> Callable[[], None]:
        torch.manual_seed(0)
        head = text_head(kind, clip_model, task_info).to(device)
        model = MultiTaskCLIP(clip_model, head, *switches).to(device)
        optim = torch.optim.SGD(head.parameters(), lr=0.002, momentum=0.9, weight_decay=5e-4)
        toc = head.task_of_class
        labels = torch.randint(0, len(toc), (args.batch_size,), generator=torch.Generator().manual_seed(2))
        labels = labels.to(device)
        scale = model.logit_scale.exp().float()

        def run() -> None:
            logits = scale * u @ model.text_features().t()
            loss = multitask_loss(logits, labels, toc[labels], toc)
            optim.zero_grad()
            loss.backward()
            optim.step()
        return run

    for kind in args.text_heads:
        scaled = [factor if not shared else 1.0 for *_, shared in TEXT_ROWS]
        fns = [step(kind, ref_info if f != 1 else info, switches)
               for (_, *switches), f in zip(TEXT_ROWS, scaled)]
        peaks, times = [], []
        for fn in fns:  # the memory run is the warm-up; with --repeats 0 (CPU) it is also timed
            start = clock(device)
            peaks.append(peak_bytes(fn, device) / 2 ** 20)
            times.append(clock(device) - start)
        if args.repeats or device.type == "cuda":
            times = timed_rows(fns, device, max(args.repeats, 1))
        peaks = [f * m for f, m in zip(scaled, peaks)]
        times = [f * t for f, t in zip(scaled, times)]
        for (label, *_), t, m, f in zip(TEXT_ROWS, times, peaks, scaled):
            label = f"{kind}: {label}" + ("*" if f != 1 else "")
            print(f"{label:<36}{t:>10.2f}{times[0] / t:>9.1f}x{m:>11.0f}{peaks[0] / m:>8.1f}x", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbones", nargs="+", default=["RN50", "ViT-B/16"])
    p.add_argument("--scale", type=float, default=0.05, help="fraction of General-10's class counts")
    p.add_argument("--batch-size", type=int, default=8, help="train and test batch size")
    p.add_argument("--eval-batches", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3,
                   help="timed runs per row (median), after a warm-up; --text-side on CPU: 0 times "
                        "the warm-up run (which also measures memory, at ~1%% overhead)")
    p.add_argument("--variant", default="NATA", choices=sorted(VARIANTS))
    p.add_argument("--prec", default="fp32", choices=["fp32", "fp16"], help="fp16 needs CUDA")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--eval-cache", action="store_true",
                   help="measure the image-feature cache instead: one test set evaluated twice")
    p.add_argument("--eval-images", type=int, default=200, help="about this many test images (--eval-cache)")
    p.add_argument("--text-side", action="store_true",
                   help="instead: the text side of a training step with each text speed-up added in "
                        "turn (use --scale 1 --batch-size 32 --repeats 1 for General-10's full size)")
    p.add_argument("--ref-scale", type=float, default=0.0,
                   help="--text-side: run the plain-path rows (77 tokens, truncated, buckets) at this "
                        "scale and scale them up linearly (0: at --scale)")
    p.add_argument("--text-heads", nargs="+", default=["NATA", "NATS", "CATA", "CoOp-CA"],
                   choices=TEXT_HEADS, help="heads measured by --text-side")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, times in "
          + ("wall seconds" if device.type == "cuda" else "CPU seconds of this process")
          + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""))
    for name in args.backbones:
        if args.eval_cache:
            bench_eval_cache(name, args, device)
        elif args.text_side:
            bench_text_side(name, args, device)
        else:
            bench_backbone(name, args, device)


if __name__ == "__main__":
    main()
