"""Kill a toy run at every write it makes, rerun it, and compare with an uninterrupted run.

    python scripts/check_resume.py --root $DATA --out /tmp/resume_check [--epochs 4] [--shots 2]

For every file a run writes (each epoch's checkpoint and pointer, results.json,
done) and two moments of the write (``partial``: half the bytes are in the
temporary file; ``unrenamed``: the temporary file is complete, the rename has not
happened), a run is SIGKILLed there (trainers/atomic.py's fault injection), then
run again in the same folder with the same command until it finishes. Its last
checkpoint (parameters and optimizer state) and results.json scores are compared
bit for bit with an uninterrupted run. Prints one line per kill point and a
summary; exits 1 on any difference. The figures in README.md#reliability come
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
from trainers.atomic import KILL_ENV  # noqa: E402

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


def differences(a: dict, b: dict) -> list[str]:
    """Names of the parameters, optimizer buffers and report fields that differ."""
    import torch
    out = [k for k in a["ckpt"]["state_dict"] if not torch.equal(a["ckpt"]["state_dict"][k],
                                                                b["ckpt"]["state_dict"][k])]
    for i, state in a["ckpt"]["optimizer"]["state"].items():
        out += [f"optimizer {i} {n}" for n, v in state.items()
                if not torch.equal(v, b["ckpt"]["optimizer"]["state"][i][n])]
    skip = {"resumed_from_epoch"}
    out += [k for k in a["report"] if k not in skip and a["report"][k] != b["report"].get(k)]
    return out


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
