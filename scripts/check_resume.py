"""Kill a toy run at every write it makes, rerun it, and compare with an uninterrupted run.

    python scripts/check_resume.py --root $DATA --out /tmp/resume_check [--epochs 4] [--shots 2]

For every file a run writes (each epoch's checkpoint and pointer, results.json,
done) and two moments of the write (``partial``: half the bytes are in the
temporary file; ``unrenamed``: the temporary file is complete, the rename has not
happened), a run is SIGKILLed there (trainers/run/atomic.py's fault injection), then
run again in the same folder with the same command until it finishes. Its last
checkpoint (every entry: parameters, optimizer state and param_groups, scheduler state,
random states) and results.json are compared bit for bit with an uninterrupted run
(``differences``, also tests/test_resume.py's comparison). Prints one line per kill point and a
summary; exits 1 on any difference. The figures in docs/reliability.md#how-it-is-checked come
from this script. POSIX only (it forks one process per attempt after importing
train.py's modules once).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import train  # noqa: E402  (imported once; every attempt is a fork of this process)
from trainers.run.atomic import KILL_ENV  # noqa: E402

STAGES = ("partial", "unrenamed")


def attempt(argv: list, kill: str = "") -> str:
    """Run train.main(argv) in a child process; 'killed', 'ok' or 'exit <code>'."""
    pid = os.fork()
    if pid == 0:
        os.chdir(REPO)
        if kill:
            os.environ[KILL_ENV] = kill
        code = 0
        try:
            sys.stdout = open(os.devnull, "w")
            train.main(argv)
        except BaseException:  # noqa: BLE001 - reported as the exit code
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return "killed" if os.WTERMSIG(status) == 9 else f"signal {os.WTERMSIG(status)}"
    return "ok" if os.WEXITSTATUS(status) == 0 else f"exit {os.WEXITSTATUS(status)}"


def kill_points(epochs: int) -> list[str]:
    files = [(f"model.pth.tar-{e}", 1) for e in range(1, epochs + 1)]
    files += [("checkpoint", e) for e in range(1, epochs + 1)]  # the pointer, once per epoch
    files += [("results.json", 1), ("done", 1)]
    return [f"{name}:{n}:{stage}" for name, n in files for stage in STAGES]


def outcome(folder: str, epochs: int) -> dict:
    import torch
    ckpt = torch.load(os.path.join(folder, "prompt_learner", f"model.pth.tar-{epochs}"), weights_only=True)
    with open(os.path.join(folder, "results.json")) as f:
        report = json.load(f)
    return {"ckpt": ckpt, "report": report}


def tree_differences(a, b, where: str = "") -> list[str]:
    """Every place where two nested states differ, e.g. ``optimizer.param_groups[0].lr``.

    Walks dicts (the keys of both sides: one missing on either side is reported, not
    raised), lists and tuples (lengths, then each entry), and compares tensors and arrays
    by dtype, shape and every value, anything else with ``==``.
    """
    import numpy as np
    import torch
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(a.keys() | b.keys(), key=str):
            name = f"{where}.{key}" if where else str(key)
            if key not in b:
                out.append(f"{name} (only in the first)")
            elif key not in a:
                out.append(f"{name} (only in the second)")
            else:
                out += tree_differences(a[key], b[key], name)
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} ({len(a)} entries against {len(b)})"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in tree_differences(x, y, f"{where}[{i}]")]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        same = a.dtype == b.dtype and np.array_equal(a, b)
    else:
        same = type(a) is type(b) and (a == b or (a != a and b != b))  # NaN == NaN here
    return [] if same else [where]


# What says how a run got there, not what it computed: the epoch it resumed from, and the
# measured training time (wall-clock seconds and device) in the checkpoint and results.json.
HOW_NOT_WHAT = {"resumed_from_epoch", "train_time", "train_seconds", "train_device"}


def differences(a: dict, b: dict) -> list[str]:
    """Where two outcomes differ: anywhere in the last checkpoint (parameters, optimizer
    state and param_groups, scheduler state, random states, ...) and in results.json
    (except ``HOW_NOT_WHAT``: how the run got there and how long it took)."""
    strip = lambda r: {k: v for k, v in r.items() if k not in HOW_NOT_WHAT}  # noqa: E731
    return (tree_differences(strip(a["ckpt"]), strip(b["ckpt"]), "checkpoint")
            + tree_differences(strip(a["report"]), strip(b["report"]), "results.json"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="$DATA (the toy benchmark is written there on first use)")
    p.add_argument("--out", required=True, help="a new folder for the runs")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--shots", type=int, default=2)
    args = p.parse_args()
    common = ["--root", args.root, "--seed", "1", "--trainer", "SoftCPT",
              "--dataset-config-file", "configs/datasets/toy.yaml",
              "--config-file", "configs/trainers/SoftCPT/tiny.yaml", "DATASET.NUM_SHOTS", str(args.shots),
              "OPTIM.MAX_EPOCH", str(args.epochs), "TRAINER.SOFTCPT.CLS_SAMPLE_RATE", "0.5"]
    out = os.path.abspath(args.out)
    base = os.path.join(out, "uninterrupted")
    if attempt(["--output-dir", base, *common]) != "ok":
        print(f"error: the uninterrupted run failed (see {base}/log.txt)", file=sys.stderr)
        return 2
    rows = []
    for point in kill_points(args.epochs):
        folder = os.path.join(out, point.replace(":", "_"))
        first = attempt(["--output-dir", folder, *common], kill=point)
        reruns = 0
        status = "not run"
        while reruns < 3 and status != "ok":
            status = attempt(["--output-dir", folder, *common])
            reruns += 1
        rows.append((point, first, status, folder))
    expected = outcome(base, args.epochs)
    n_diff = n_ok = 0
    for point, first, status, folder in rows:
        diff = differences(outcome(folder, args.epochs), expected) if status == "ok" else ["no result"]
        resumed = outcome(folder, args.epochs)["report"].get("resumed_from_epoch") if status == "ok" else None
        n_ok += status == "ok"
        n_diff += bool(diff)
        print(f"{point:28s} first attempt: {first:7s} rerun: {status:4s} resumed from epoch: "
              f"{resumed!s:4s} differences: {', '.join(diff) or 'none'}")
    killed = sum(first == "killed" for _, first, _, _ in rows)
    print(f"\n{len(rows)} kill points, {killed} runs killed there, {n_ok} recovered by a rerun, "
          f"{n_diff} with any difference from the uninterrupted run.")
    return 1 if n_diff or killed < len(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
