"""Stop runs with signals at random moments, resume them, and compare with an uninterrupted run.

    python scripts/check_stops.py --root $DATA --out /tmp/stops_check [--stops 20] [--seed 0]

The run is a paper config (configs/trainers/SoftCPT/vit_b16_ep50.yaml) with only the
backbone (``tiny-b16``), the image size, the epochs and the loader workers (2)
overridden, on the toy benchmark at 8 shots: 88 images, three batches of the config's 32
an epoch, so that a signal can land between batches whatever the machine's speed (at 2
shots an epoch was one batch, and only a signal before it was loaded stopped mid-epoch).
Each attempt is a fork of this process (train.py imported once) in its own process
group, running train.py's command line (``train.cli``). At a random moment (uniform
between 50 ms after the fork and 4/5 of the attempt's expected length, from the
uninterrupted run's timings and the epochs already saved; about half of the stops
of each kind within half an epoch of its DataLoader workers' start, while there is
training left; a run stopped twice with only its final evaluation left is then let
finish, so that the next run's stops reach training again) it is
sent SIGTERM, SIGINT or SIGUSR1, alternately to its main PID alone (as
scripts/slurm/task.sh does) and to its whole process group, DataLoader workers
included (as scancel, preemption or a terminal's Ctrl-C do). Every signalled attempt
must be a clean stop: exit code 128 + signum, the ``stopped by signal ...: run the same
command again to ...`` line on stderr and last in log.txt, no traceback and no
"DataLoader worker" error. The one exception: a signal that lands after the run wrote
its ``done`` marker (exit 0, ``done`` no newer than the signal). Just before each
signal, every worker alive must ignore the stop signals (its ``SigIgn`` in /proc, once
its init function has run). The
same command then runs again in the same folder, signalled again, until an attempt
finishes; that run's last checkpoint and results.json are compared bit for bit with the
uninterrupted run's (check_resume.differences), and the next chain starts in a new
folder. Prints one line per attempt and a JSON summary last; exits 1 on any failure.
Linux only (/proc, fork, process groups). The figures in docs/reliability.md#how-it-is-checked
come from this script.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
import traceback
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "scripts"))

import check_resume  # noqa: E402
import train  # noqa: E402  (imported once; every attempt is a fork of this process)
from trainers.run import checkpoint as ckpt_io  # noqa: E402
from trainers.run.stops import STOP_SIGNALS  # noqa: E402

# torch's environment report runs `pip list` (seconds per attempt) and only prints.
train.environment_report = lambda: "(not collected by scripts/check_stops.py)"

CONFIG = "configs/trainers/SoftCPT/vit_b16_ep50.yaml"
EPOCHS = 2
SHOTS = 8  # three training batches an epoch (module docstring)
MIN_DELAY = 0.05  # train.py installs its handlers within milliseconds of main() starting
STOP_TIMEOUT = 60.0  # a signalled attempt still alive after this has hung
EVAL_STOPS = 2  # stops a chain takes in its final evaluation before it is let finish
FINISH_WAIT = 600.0  # an attempt let finish: the wait before it counts as hung


def command(root: str, workers: int = 2) -> list[str]:
    """The paper config with only the backbone, image size, epochs and workers overridden."""
    return ["--root", root, "--seed", "1", "--trainer", "SoftCPT",
            "--dataset-config-file", "configs/datasets/toy.yaml", "--config-file", CONFIG,
            "--backbone", "tiny-b16", "DATASET.NUM_SHOTS", str(SHOTS), "INPUT.SIZE", "(32, 32)",
            "OPTIM.MAX_EPOCH", str(EPOCHS), "DATALOADER.NUM_WORKERS", str(workers)]


def start(argv: list[str], stderr_path: str) -> int:
    """Fork a child running ``python train.py argv`` in its own process group; its PID."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 3
        try:
            os.setpgid(0, 0)
            os.chdir(REPO)
            null = os.open(os.devnull, os.O_WRONLY)
            err = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(null, 1)  # log.txt has what it prints
            os.dup2(err, 2)  # workers write here too
            train.cli(argv)
        except SystemExit as ended:
            if isinstance(ended.code, str):
                print(ended.code, file=sys.stderr)
            code = ended.code if isinstance(ended.code, int) else 1
        except BaseException:  # noqa: BLE001 - what the test looks for
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    try:
        os.setpgid(pid, pid)  # also here: the group exists before the parent signals it
    except OSError:  # the child did it first (or has exited)
        pass
    return pid


def wait(pid: int, timeout: float) -> Optional[int]:
    """The child's exit code (-N if a signal N ended it), or None if it runs past ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def workers_not_ignoring(pid: int) -> list[int]:
    """The child's own children (its DataLoader workers) that do not ignore every stop signal."""
    children = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children.update(int(c) for c in f.read().split())
    except OSError:  # it has just exited
        return []
    wanted = sum(1 << (s - 1) for s in STOP_SIGNALS)
    bad = []
    for child in sorted(children):
        for _ in range(10):  # a worker forked this instant may not have run its init function yet
            try:
                with open(f"/proc/{child}/status") as f:
                    ignored = int(next(line for line in f if line.startswith("SigIgn:")).split()[1], 16)
            except (OSError, StopIteration):  # it has just exited
                ignored = wanted
            if ignored & wanted == wanted:
                break
            time.sleep(0.1)
        else:
            bad.append(child)
    return bad


def timed_run(argv: list[str], folder: str, stderr_path: str) -> tuple[Optional[int], list[float]]:
    """An unsignalled attempt: its exit code and when (seconds after the fork) each epoch's
    checkpoint appeared, then when it ended."""
    pid = start(argv, stderr_path)
    started, times = time.monotonic(), []
    code = None
    while code is None:
        code = wait(pid, 0.02)
        saved = ckpt_io.saved_epochs(os.path.join(folder, ckpt_io.HEAD_NAME))
        while saved and len(times) < saved[-1]:
            times.append(time.monotonic() - started)
    return code, times + [time.monotonic() - started]


def signalled_attempt(argv: list[str], folder: str, moment: tuple[str, float], signum: int,
                      group: bool, stderr_path: str) -> dict:
    """One attempt, signalled at ``moment`` unless it ends first: what happened. ``("after", s)``:
    s seconds after the fork; ``("workers", s)``: s seconds after its DataLoader workers appear."""
    pid = start(argv, stderr_path)
    started = time.monotonic()
    kind, seconds = moment
    code = None
    if kind == "workers":
        while code is None and not _children(pid):
            code = wait(pid, 0.005)
    if code is None:
        code = wait(pid, seconds)
    row = {"moment": f"{seconds:.2f} s {'after the workers appeared' if kind == 'workers' else 'in'}",
           "signal": signal.Signals(signum).name, "to": "group" if group else "pid", "sent": False,
           "workers": 0, "bad_workers": []}
    if code is None:
        row["workers"] = len(_children(pid))
        row["bad_workers"] = workers_not_ignoring(pid)
        sent_at = time.time()
        try:
            (os.killpg if group else os.kill)(pid, signum)
            row["sent"] = True
        except ProcessLookupError:
            pass
        code = wait(pid, STOP_TIMEOUT)
        if code is None:  # hung: end it so that the check can go on
            os.killpg(pid, signal.SIGKILL)
            code = wait(pid, STOP_TIMEOUT)
            row["hung"] = True
        row["sent_at"] = sent_at
    row["code"] = code
    row["seconds"] = round(time.monotonic() - started, 2)
    with open(stderr_path, errors="replace") as f:
        row["stderr"] = f.read()
    row["problem"] = problem(row, folder, signum)
    return row


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def problem(row: dict, folder: str, signum: int) -> str:
    """'' when the attempt ended as it should, else what was wrong."""
    err = row["stderr"]
    if row.get("hung"):
        return f"still running {STOP_TIMEOUT:.0f} s after the signal"
    if "Traceback" in err or "DataLoader worker" in err:
        return "a traceback or a DataLoader worker error"
    if row["bad_workers"]:
        return f"workers {row['bad_workers']} do not ignore the stop signals"
    done = os.path.join(folder, train.DONE_MARKER)
    if row["code"] == 0:
        if not row["sent"]:
            return ""  # finished before its moment came
        # The signal landed once the work was over (after the last check point): allowed
        # only if done was already written when it was sent.
        if os.path.exists(done) and os.stat(done).st_mtime <= row["sent_at"] + 0.5:
            return ""
        return "exit 0: the run went on after the signal"
    if not row["sent"]:
        return f"exit {row['code']} without a signal"
    name = signal.Signals(signum).name
    if row["code"] != 128 + signum:
        return f"exit {row['code']}, not {128 + signum}"
    lines = [line for line in err.splitlines() if line.strip()]
    with open(os.path.join(folder, "log.txt"), errors="replace") as f:
        last = f.read().rstrip("\n").splitlines()[-1]
    if (not lines or not lines[-1].startswith(f"stopped by signal {name} ")
            or ": run the same command again to " not in lines[-1]):
        return "no 'stopped by signal ...: run the same command again to ...' line last on stderr"
    if last != lines[-1]:
        return "log.txt does not end with the stop line"
    if os.path.exists(done):
        return "a stopped run left the done marker"
    return ""


def where_stopped(rows: list[dict]) -> dict:
    """How many stops came before the first epoch was saved, after epoch k < EPOCHS (in
    training) and after the last epoch (in the final evaluation)."""
    counts = {"before epoch 1": 0, "in training": 0, "in the final evaluation": 0}
    for row in rows:
        line = row["stderr"].strip().splitlines()[-1] if row["stderr"].strip() else ""
        if not row["sent"] or not line.startswith("stopped by signal"):
            continue
        if "before the first epoch" in line:
            counts["before epoch 1"] += 1
        elif f"after epoch {EPOCHS} of" in line:
            counts["in the final evaluation"] += 1
        else:
            counts["in training"] += 1
    return counts


def chain_differences(folder: str, base: str) -> list[str]:
    """check_resume.differences of a finished chain and the uninterrupted run, computed in a
    fork: once torch's OpenMP threads have started in this process, the next attempt's fork
    can hang in its first parallel kernel (GNU OpenMP is not fork-safe), so this process
    never computes with torch itself."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            diffs = check_resume.differences(check_resume.outcome(folder, EPOCHS), check_resume.outcome(base, EPOCHS))
        except BaseException as err:  # noqa: BLE001 - reported as a difference
            diffs = [f"the comparison failed: {type(err).__name__}: {err}"]
        with os.fdopen(write, "w") as f:
            json.dump(diffs, f)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        answer = f.read()
    os.waitpid(pid, 0)
    return json.loads(answer) if answer else ["the comparison's process ended without an answer"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="$DATA (the toy benchmark is written there on first use)")
    p.add_argument("--out", required=True, help="a new folder for the runs")
    p.add_argument("--stops", type=int, default=20, help="clean stops wanted per way of signalling")
    p.add_argument("--seed", type=int, default=0, help="seed of the moments and signals")
    args = p.parse_args()
    rng = random.Random(args.seed)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    common = command(os.path.abspath(args.root))
    began = time.monotonic()
    base = os.path.join(out, "uninterrupted")
    code, times = timed_run(["--output-dir", base, *common], base, os.path.join(out, "uninterrupted.err"))
    if code != 0 or len(times) != EPOCHS + 1:
        with open(os.path.join(out, "uninterrupted.err"), errors="replace") as f:
            print(f"error: the uninterrupted run failed:\n{f.read()[-3000:]}", file=sys.stderr)
        return 2
    epoch = times[1] - times[0]  # the second epoch alone (the first includes the set-up)
    setup, tail = max(times[0] - epoch, 0.0), times[-1] - times[EPOCHS - 1]
    stops = {"pid": 0, "group": 0}
    with_workers = {"pid": 0, "group": 0}  # of those stops, sent while workers were alive
    rows, failures, chains, chain_diffs = [], [], 0, []
    eval_stops = 0  # this chain's stops with every epoch saved (only the final evaluation left)
    folder = os.path.join(out, "chain0")
    limit = 3 * 2 * args.stops + 10  # a run that never stops cleanly ends the check
    while min(stops.values()) < args.stops and len(rows) < limit:
        to = "pid" if stops["pid"] <= stops["group"] else "group"
        signum = rng.choice(STOP_SIGNALS)
        saved = ckpt_io.saved_epochs(os.path.join(folder, ckpt_io.HEAD_NAME))
        trained = saved[-1] if saved else 0
        left = setup + (EPOCHS - trained) * epoch + tail  # this attempt's length
        if trained == EPOCHS and eval_stops >= EVAL_STOPS:
            # stopped twice with only its final evaluation left: let it finish, so that the next
            # chain's stops reach training again (on a fast machine most moments fall in the
            # set-up, and a chain could otherwise take every remaining stop in its evaluation)
            moment = ("after", FINISH_WAIT)
        elif trained < EPOCHS and 2 * with_workers[to] <= stops[to]:
            # about half of each kind of stop while its training's workers load batches
            moment = ("workers", rng.uniform(0.0, 0.5 * epoch))
        else:  # anywhere in the attempt: set-up, training, checkpoints, final evaluation (the
            # estimate's last fifth left out: fewer attempts end before their moment)
            moment = ("after", rng.uniform(MIN_DELAY, 0.8 * left))
        row = signalled_attempt(["--output-dir", folder, *common], folder, moment, signum, to == "group",
                                os.path.join(out, f"attempt{len(rows)}.err"))
        row["folder"] = os.path.basename(folder)
        after = ckpt_io.saved_epochs(os.path.join(folder, ckpt_io.HEAD_NAME))
        # Stopped while workers were loading an epoch's batch, before that epoch was saved: the
        # check between batches did it (the one after each checkpoint would have come later).
        row["mid_epoch"] = bool(row["workers"] and row["code"] == 128 + signum and saved[-1:] == after[-1:])
        rows.append(row)
        print(f"{len(rows):3d} {row['folder']:8s} {row['to']:5s} {row['signal']:7s} {row['moment']:30s} "
              f"{'exit ' + str(row['code']):8s} workers {row['workers']} "
              f"{'sent' if row['sent'] else 'ended first'} {row['problem'] or 'ok'}", flush=True)
        if row["problem"]:
            failures.append({k: v for k, v in row.items() if k != "stderr"} | {"stderr": row["stderr"][-3000:]})
            break
        if row["code"] == 128 + signum:
            stops[to] += 1
            with_workers[to] += bool(row["sent"] and row["workers"])
            eval_stops += trained == EPOCHS
        if row["code"] == 0:  # the chain is finished: compare it, start the next
            chains, eval_stops = chains + 1, 0
            chain_diffs += [f"{row['folder']}: {d}" for d in chain_differences(folder, base)]
            folder = os.path.join(out, f"chain{chains}")
    if not failures and os.path.isdir(folder):  # finish the last chain and compare it too
        code, _ = timed_run(["--output-dir", folder, *common], folder, os.path.join(out, "last.err"))
        if code != 0:
            with open(os.path.join(out, "last.err"), errors="replace") as f:
                failures.append({"folder": folder, "code": code, "stderr": f.read()[-3000:]})
        else:
            chains += 1
            chain_diffs += [f"{os.path.basename(folder)}: {d}" for d in chain_differences(folder, base)]
    summary = {"seed": args.seed, "uninterrupted_seconds": round(times[-1], 2), "stops": stops,
               "attempts": len(rows), "signals_sent": sum(r["sent"] for r in rows),
               "sent_with_workers": {to: sum(r["sent"] and r["workers"] > 0 and r["to"] == to for r in rows)
                                     for to in stops},
               "stopped_mid_epoch": sum(r["mid_epoch"] for r in rows),
               "stopped_where": where_stopped(rows),
               "ended_first": sum(not r["sent"] for r in rows),
               "after_done": sum(r["sent"] and r["code"] == 0 for r in rows),
               "chains_compared": chains, "differences": chain_diffs, "failures": failures,
               "seconds": round(time.monotonic() - began, 1),
               "cpu_seconds": round(sum(os.times()[:4]), 1)}  # this process and its attempts
    print(json.dumps(summary))
    ok = not failures and not chain_diffs and min(stops.values()) >= args.stops
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
