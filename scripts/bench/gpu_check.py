"""The checks that need a GPU, in one run that writes one Markdown table (scripts/bench/gpu_check.sh).

    python scripts/bench/gpu_check.py [--out DIR]     # on a CUDA machine, under 10 minutes
    python scripts/bench/gpu_check.py --dry-run       # the same logic on CPU at tiny size

(a) the text speed-ups against the plain 77-token path in fp16 on ViT-B/16's text tower
    (open_clip's architecture, random weights: no download) at General-10's size:
    largest difference of the class features, and whether the predictions are equal;
(b) one training epoch of SoftCPT NATA on the toy benchmark with each PREC (fp32, fp16,
    amp, amp with STEPS_PER_BATCH 3) and with the reproduce setting (PARAM_DTYPE fp16,
    STEPS_PER_BATCH 3), each through train.py: score, the dtype the contexts were saved in;
(c) the image-feature cache on CUDA: the fp16 run of (b) again, into a new output folder,
    must read its test features from the cache and give the same score;
(d) scripts/bench/bench_softcpt.py --text-side and --eval-cache on the GPU (their own
    tables are kept below the summary).

``--dry-run`` runs every step on CPU: (a) on the ``tiny-b16`` backbone in fp32 at 2% of
General-10, (b) and (c) on the ``tiny`` backbone (fp16 and amp fall back to fp32 on CPU,
which the table shows; PARAM_DTYPE fp16 still stores the contexts in fp16), (d) at
tiny sizes, each command in a fork of this process, which has imported train.py's modules
once, instead of a new interpreter (whose imports were most of each run's CPU time); the
forks run before this process computes anything. Writes ``gpu_check.md`` under ``--out``
(default output/gpu_check) and prints it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import runpy
import signal
import subprocess
import sys
import tempfile
import time
import traceback

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(BENCH, "..", ".."))
sys.path[:0] = [REPO, BENCH]

import torch  # noqa: E402

import bench_softcpt as bench  # noqa: E402
from trainers.parts.backbone import load_clip  # noqa: E402
from trainers.parts.base import MultiTaskCLIP  # noqa: E402
from trainers.parts.losses import own_task_prediction  # noqa: E402

# (b): name, extra options. PREC is applied to every row; PARAM_DTYPE fp16 with PREC fp16.
TRAIN_ROWS = [
    ("PREC fp32", ["TRAINER.SOFTCPT.PREC", "fp32"]),
    ("PREC fp16", ["TRAINER.SOFTCPT.PREC", "fp16"]),
    ("PREC amp", ["TRAINER.SOFTCPT.PREC", "amp"]),
    ("PREC amp, STEPS_PER_BATCH 3", ["TRAINER.SOFTCPT.PREC", "amp", "TRAINER.SOFTCPT.STEPS_PER_BATCH", "3"]),
    ("reproduce: PREC fp16, PARAM_DTYPE fp16, STEPS_PER_BATCH 3",
     ["TRAINER.SOFTCPT.PREC", "fp16", "TRAINER.SOFTCPT.PARAM_DTYPE", "fp16",
      "TRAINER.SOFTCPT.STEPS_PER_BATCH", "3"]),
]
# (a): largest feature difference accepted against the plain path (normalised features).
TOLERANCE = {torch.float16: 5e-3, torch.float32: 1e-5}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def text_speedups(device: torch.device, dry: bool) -> list[list[str]]:
    """(a): class features and predictions of each speed-up against the 77-token path."""
    name, prec, scale = ("tiny-b16", "fp32", 0.02) if dry else ("ViT-B/16", "fp16", 1.0)
    clip_model = load_clip(name, precision=prec, device=device, pretrained=False)
    info = bench.general10_varied(scale)
    dim = clip_model.text_projection.shape[1]
    g = torch.Generator().manual_seed(1)
    u = torch.nn.functional.normalize(torch.randn(512, dim, generator=g), dim=-1).to(device)
    labels = torch.randint(0, len(info.all_classnames), (512,), generator=g).to(device)
    rows = []
    for kind in ("NATA", "CATA", "CoOp-CA"):
        torch.manual_seed(0)
        head = bench.text_head(kind, clip_model, info).to(device)
        toc = head.task_of_class
        outputs = []
        for label, *switches in bench.TEXT_ROWS:
            model = MultiTaskCLIP(clip_model, head, *switches).to(device)
            sync(device)
            start = time.perf_counter()
            with torch.no_grad():
                h = model.text_features()  # (C, D) normalised, fp32
            sync(device)
            seconds = time.perf_counter() - start
            pred = own_task_prediction(u @ h.t(), toc[labels], toc)
            outputs.append((label, h, pred, seconds))
        _, h0, pred0, t0 = outputs[0]
        dtype = clip_model.text_projection.dtype
        for label, h, pred, seconds in outputs[1:]:
            diff = float((h - h0).abs().max())
            same = int((pred == pred0).sum())
            ok = diff <= TOLERANCE.get(dtype, 5e-3) and same == len(pred)
            rows.append([f"(a) text speed-ups, {kind}", f"{name} text tower, {prec}, "
                         f"{len(toc)} classes / {info.num_tasks} tasks: {label} vs 77 tokens",
                         f"max feature diff {diff:.2e}; predictions equal {same}/{len(pred)}; "
                         f"forward {seconds:.3f} s vs {t0:.3f} s", "yes" if ok else "NO",
                         f"{seconds:.2f}"])
    return rows


def train_cmd(data: str, out: str, cache: str, device: torch.device, opts: list[str]) -> list[str]:
    return [sys.executable, os.path.join(REPO, "train.py"), "--root", data, "--seed", "1",
            "--trainer", "SoftCPT", "--dataset-config-file", "configs/datasets/toy.yaml",
            "--config-file", "configs/trainers/SoftCPT/tiny.yaml", "--output-dir", out,
            "DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "1", "TRAIN.CHECKPOINT_FREQ", "1",
            "TEST.FEATURE_CACHE_DIR", cache, "USE_CUDA", str(device.type == "cuda"), *opts]


# --dry-run runs each command's script in a fork of this process (run_forked) instead of a new
# interpreter: the imports of torch, Dassl and train.py were most of each CPU run's seconds.
# On a GPU every command gets a fresh interpreter (a fork cannot use CUDA set up in its parent).
FORK = False


def run(cmd: list[str], timeout: float) -> tuple[int, str, float]:
    """Exit status, stdout + stderr and wall seconds of ``cmd`` (run from the repository)."""
    start = time.perf_counter()
    if FORK and cmd[0] == sys.executable:
        code, text = run_forked(cmd[1:], timeout)
        return code, text, time.perf_counter() - start
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        code, text = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        code, text = 124, f"timed out after {timeout:.0f} s\n{err.stdout or ''}{err.stderr or ''}"
    return code, text, time.perf_counter() - start


def run_forked(argv: list[str], timeout: float) -> tuple[int, str]:
    """``python SCRIPT ARGS...`` as a fork of this process that runs SCRIPT as ``__main__``
    (its imports are already loaded); exit status and stdout + stderr, as ``run`` gives them."""
    with tempfile.TemporaryFile() as out:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns, never runs the parent's exit handlers
            code = 1
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(out.fileno(), 2)
                os.chdir(REPO)
                sys.argv = list(argv)
                sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
                runpy.run_path(argv[0], run_name="__main__")
                code = 0
            except SystemExit as err:
                code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
                if not isinstance(err.code, (int, type(None))):
                    print(err.code, file=sys.stderr)
            except BaseException:  # noqa: BLE001 - printed as the interpreter would
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                code = 124
                break
            time.sleep(0.05)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if code == 124:
        text = f"timed out after {timeout:.0f} s\n{text}"
    return code, text


def saved_dtypes(out: str) -> str:
    """Dtypes of the saved learned parameters, e.g. ``task_ctx fp16, meta_net.weight fp32``."""
    from trainers.run import checkpoint as ckpt_io
    path = ckpt_io.path_to_load(os.path.join(out, "prompt_learner"), None)
    state = ckpt_io.read_checkpoint(path, torch.device("cpu"))["state_dict"]
    return ", ".join(f"{k} {str(v.dtype).replace('torch.float', 'fp')}" for k, v in state.items())


def training(work: str, device: torch.device, timeout: float) -> list[list[str]]:
    """(b) one toy epoch per precision setting, and (c) the fp16 run again through the cache."""
    data, cache = os.path.join(work, "data"), os.path.join(work, "features")
    rows, scores = [], {}
    for i, (label, opts) in enumerate(TRAIN_ROWS + [("(c) PREC fp16 again", TRAIN_ROWS[1][1])]):
        out = os.path.join(work, "train", f"run{i}")
        code, text, wall = run(train_cmd(data, out, cache, device, opts), timeout)
        result = os.path.join(out, "results.json")
        if code != 0 or not os.path.isfile(result):
            tail = " / ".join(text.strip().splitlines()[-3:])
            rows.append([f"(b) toy epoch" if i < len(TRAIN_ROWS) else "(c) feature cache", label,
                         f"failed (exit {code}): {tail}", "NO", f"{wall:.1f}"])
            continue
        report = json.load(open(result))
        nan = bool(re.search(r"loss (nan|inf)", text))
        scores[label] = report["score"]
        fallback = "" if report.get("prec") == opts[1] else f" (ran as {report.get('prec')} on {device})"
        if i < len(TRAIN_ROWS):
            fp16_ctx = "PARAM_DTYPE" in " ".join(opts)
            dtypes = saved_dtypes(out)
            ok = not nan and (("task_ctx fp16" in dtypes) == fp16_ctx) and "meta_net.weight fp32" in dtypes
            rows.append(["(b) toy epoch, SoftCPT NATA", label + fallback,
                         f"score {report['score']:.2f}; saved {dtypes}" + ("; loss not finite" if nan else ""),
                         "yes" if ok else "NO", f"{wall:.1f}"])
        else:
            read = re.search(r"Image features of \S+/test \(\d+ images\): read from", text) is not None
            same = report["score"] == scores.get(TRAIN_ROWS[1][0])
            rows.append(["(c) feature cache on " + device.type, "PREC fp16 run again, new output folder"
                         + fallback, f"test features read from the cache: {read}; same score: {same} "
                         f"({report['score']:.2f})", "yes" if read and same else "NO", f"{wall:.1f}"])
    return rows


def benchmarks(device: torch.device, dry: bool, timeout: float) -> tuple[list[list[str]], list[str]]:
    """(d) bench_softcpt.py --text-side and --eval-cache: a summary row each, and their output."""
    script = os.path.join(BENCH, "bench_softcpt.py")
    if dry:
        cases = [("--text-side", ["--text-side", "--backbones", "tiny-b16", "--scale", "0.02",
                                  "--batch-size", "4", "--repeats", "0", "--text-heads", "NATA"]),
                 ("--eval-cache", ["--eval-cache", "--backbones", "RN50", "--eval-images", "16",
                                   "--batch-size", "8", "--repeats", "0"])]
    else:
        cases = [("--text-side", ["--text-side", "--backbones", "ViT-B/16", "--scale", "1",
                                  "--ref-scale", "0.1", "--batch-size", "32", "--repeats", "3",
                                  "--prec", "fp16", "--text-heads", "NATA", "CATA", "CoOp-CA"]),
                 ("--eval-cache", ["--eval-cache", "--backbones", "ViT-B/16", "--batch-size", "32",
                                   "--prec", "fp16"])]
    rows, outputs = [], []
    for label, args in cases:
        cmd = [sys.executable, script, "--device", device.type, *args]
        code, text, wall = run(cmd, timeout)
        lines = [x for x in text.splitlines() if x.strip()]
        key = [x for x in lines if "speed-up" in x.lower() or "SHARED_PREFIX" in x]
        rows.append(["(d) bench_softcpt.py " + label, " ".join(args),
                     (key[-1].strip() if key else lines[-1] if lines else "no output")
                     + ("" if code == 0 else f" (exit {code})"), "yes" if code == 0 else "NO",
                     f"{wall:.1f}"])
        outputs.append(f"### bench_softcpt.py {' '.join(args)}\n\n```\n{text.strip()}\n```\n")
    return rows, outputs


def markdown(rows: list[list[str]], device: torch.device, dry: bool, outputs: list[str]) -> str:
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    head = ["check", "setting", "result", "ok", "wall s"]
    lines = [f"## GPU check ({'dry run, ' if dry else ''}{where}, torch {torch.__version__})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines + [""] + outputs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="on CPU at tiny size (tests, no GPU)")
    p.add_argument("--out", default=os.path.join(REPO, "output", "gpu_check"))
    p.add_argument("--timeout", type=float, default=240, help="seconds per subprocess")
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device; use --dry-run to check the script on CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    global FORK
    FORK = args.dry_run
    if FORK:
        import train  # noqa: F401  (loaded once here, for every forked run)
    outputs: list[str] = []
    with tempfile.TemporaryDirectory() as work:
        steps = [lambda: text_speedups(device, args.dry_run),
                 lambda: training(work, device, args.timeout),
                 lambda: _rows(outputs, benchmarks(device, args.dry_run, args.timeout))]
        # Forked runs come before this process computes anything with torch: a fork of a
        # process whose OpenMP threads have run may hang in its first parallel region.
        order = [1, 2, 0] if FORK else [0, 1, 2]
        found: dict[int, list[list[str]]] = {}
        for i in order:
            start = time.perf_counter()
            try:
                found[i] = steps[i]()
            except Exception as err:  # noqa: BLE001 - one failing check must not hide the others
                found[i] = [[f"step {i + 1}", "", f"{type(err).__name__}: {err}", "NO",
                             f"{time.perf_counter() - start:.1f}"]]
    rows = [row for i in range(len(steps)) for row in found[i]]  # in the table's order: (a) to (d)
    text = markdown(rows, device, args.dry_run, outputs)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gpu_check.md")
    with open(path, "w") as f:
        f.write(text)
    print(text)
    print(f"Wrote {path}")
    return 0 if all(r[3] == "yes" for r in rows) else 1


def _rows(outputs: list, found: tuple) -> list[list[str]]:
    outputs.extend(found[1])
    return found[0]


if __name__ == "__main__":
    sys.exit(main())
